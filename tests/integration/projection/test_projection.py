"""Credentials reach pods, renew, and are revoked on every trigger -- on the real control
plane, with the real Job controller and garbage collector, and the kubelet stand-in."""

import json
import subprocess
import sys
import time

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agents import (
    audit_lines,
    claims_of,
    condition,
    create_credential,
    create_job,
    create_pod,
    get_credential,
    job_condition,
    job_pod,
    nudge,
    operator_caught_up,
    read_secret,
    running_pod,
    same_value,
    secret_gone,
    secret_name_of,
    service_account,
    shared_secret,
    state_of,
    value_gone,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from samples import EXCEPTION, STATIC_SOURCE, credential, spec


def test_job_receives_a_minted_token_and_loses_it_when_the_job_completes(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(
        cluster, namespace, projection={"mountPath": "/var/run/agentcred/llm", "envVar": "LLM_TOKEN_FILE"}
    )
    create_job(cluster, namespace, "task", "research-llm", init_container=True)
    pod = job_pod(cluster, namespace, "task")

    # The webhook's work: a read-only projected volume in every container, the env var, the binding.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    volume = volumes[labels.volume_name("research-llm")]
    source = volume["projected"]["sources"][0]["secret"]
    assert source["name"] == secret_name_of(pod) and source["optional"] is True
    for container in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount == {"name": volume["name"], "mountPath": "/var/run/agentcred/llm", "readOnly": True}
        assert {"name": "LLM_TOKEN_FILE", "value": "/var/run/agentcred/llm/token"} in container["env"]
    assert not pod["spec"].get("schedulingGates")

    # The operator's work: one Secret per pod, owned by the pod, labelled for the inventory.
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    assert secret is not None
    meta = secret["metadata"]
    assert meta["ownerReferences"][0]["kind"] == "Pod" and meta["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert meta["labels"][labels.MANAGED_LABEL] == "true"
    assert meta["labels"][labels.JOB_LABEL] == "task"
    assert meta["labels"][labels.POD_UID_LABEL] == pod["metadata"]["uid"]
    assert meta["labels"][labels.credential_label("research-llm")] == "model"
    token = value_of(secret, "research-llm")
    claims = claims_of(token)
    assert claims["sub"] == f"system:serviceaccount:{namespace}:research-agent"
    assert claims["aud"] == "https://llm-gateway.internal"
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["agentcred"]["pod"] == pod["metadata"]["name"]
    assert claims["agentcred"]["podUID"] == pod["metadata"]["uid"]
    assert claims["agentcred"]["job"] == "task" and claims["agentcred"]["category"] == "model"
    assert claims["agentcred"]["scope"]["tools"] == ["web-search"]

    kubelet.succeed(namespace, pod["metadata"]["name"])
    wait_for(lambda: job_condition(cluster, namespace, "task", "Complete"), what="Job Complete")
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="Secret deleted")
    revoked = wait_for(lambda: audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"]), what="audit revoke")
    assert revoked[0]["reason"] == "task-succeeded" and revoked[0]["tokenId"] == claims["jti"]
    issued = audit_lines(operator, "issue", podUID=pod["metadata"]["uid"])
    assert issued[0]["job"] == "task" and issued[0]["serviceAccount"] == "research-agent"
    assert issued[0]["fingerprint"].startswith("hmac-sha256:") and "value" not in issued[0]


def test_failed_job_revokes(cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_job(cluster, namespace, "task", "research-llm")
    pod = job_pod(cluster, namespace, "task")
    kubelet.fail(namespace, pod["metadata"]["name"])
    wait_for(lambda: job_condition(cluster, namespace, "task", "Failed"), what="Job Failed")
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="Secret deleted")
    revoked = wait_for(lambda: audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"]), what="audit revoke")
    assert revoked[0]["reason"] == "task-failed"


def test_bare_pod_succeeded_and_deleted_revoke(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_pod(cluster, namespace, "one", "research-llm")
    create_pod(cluster, namespace, "two", "research-llm")
    one = wait_for(lambda: running_pod(cluster, namespace, name="one"), what="pod one Running")
    two = wait_for(lambda: running_pod(cluster, namespace, name="two"), what="pod two Running")
    assert secret_name_of(one) != secret_name_of(two)  # one Secret per pod

    kubelet.succeed(namespace, "one")
    cluster.core.delete_namespaced_pod("two", namespace)
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(one)), what="Secret of the succeeded pod deleted")
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(two)), what="Secret of the deleted pod deleted")

    def reasons() -> dict:
        return {line["podName"]: line["reason"] for line in audit_lines(operator, "revoke", namespace=namespace)}

    wait_for(lambda: reasons() == {"one": "task-succeeded", "two": "pod-deleted"}, what="both revocations audited")


def test_renewal_replaces_the_value_before_expiry_and_stops_at_max_lifetime(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, ttl="4s", renewBefore="2s", maxLifetime="9s")
    create_pod(cluster, namespace, "agent", "research-llm")
    pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
    name = secret_name_of(pod)
    first = value_of(read_secret(cluster, namespace, name), "research-llm")
    first_exp = claims_of(first)["exp"]

    def renewed() -> bytes | None:
        current = value_of(read_secret(cluster, namespace, name) or {}, "research-llm")
        return current if current and not same_value(current, first) else None

    second = wait_for(renewed, timeout=10, what="a renewed value")
    assert time.time() < first_exp, "the value was renewed only after it expired"
    assert claims_of(second)["jti"] != claims_of(first)["jti"]
    assert claims_of(second)["exp"] > first_exp

    wait_for(lambda: value_gone(cluster, namespace, name, "research-llm"), timeout=15, what="revoked at maxLifetime")
    secret = read_secret(cluster, namespace, name)
    assert secret is not None and state_of(secret)["revoked"] == {"research-llm": "max-lifetime"}
    renewals = audit_lines(operator, "renew", podUID=pod["metadata"]["uid"])
    assert renewals, "no renew audit line"
    revoked = wait_for(lambda: audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"]), what="audit revoke")
    assert [line["reason"] for line in revoked] == ["max-lifetime"]
    # Revoked values stay revoked: the pod is still running, but nothing is issued again.
    nudge(cluster, namespace, pod["metadata"]["name"])
    operator_caught_up(cluster, namespace)
    assert value_gone(cluster, namespace, name, "research-llm")
    assert get_credential(cluster, namespace, "research-llm")["status"]["renewedTotal"] >= 1


def test_deleting_the_credential_revokes_it_everywhere_first(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_credential(cluster, namespace, name="search-tool", category="tool")
    create_pod(cluster, namespace, "agent", "research-llm,search-tool")
    pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
    name = secret_name_of(pod)
    cluster.custom.delete_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, "research-llm")

    def credential_gone() -> bool:
        try:
            get_credential(cluster, namespace, "research-llm")
            return False
        except ApiException as error:
            return error.status == 404

    wait_for(credential_gone, what="AgentCredential deleted after its finalizer")
    secret = read_secret(cluster, namespace, name)
    assert value_of(secret, "research-llm") is None, "the deleted credential's value is still there"
    assert value_of(secret, "search-tool") is not None, "the other credential was revoked too"
    assert labels.credential_label("research-llm") not in secret["metadata"]["labels"]
    revoked = audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"])
    assert [(line["credential"], line["reason"]) for line in revoked] == [("research-llm", "credential-deleted")]


def test_emergency_revoke_from_the_command_line(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    for pod_name in ("a", "b", "c"):
        create_pod(cluster, namespace, pod_name, "research-llm")
    pods = {n: wait_for(lambda n=n: running_pod(cluster, namespace, name=n), what=f"pod {n}") for n in "abc"}

    def revoke(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", namespace, *args],
            capture_output=True,
            text=True,
            env=cluster.env(),
            timeout=60,
        )

    started = time.monotonic()
    one = revoke("--pod", "a", "--reason", "suspected prompt injection")
    assert one.returncode == 0, one.stderr
    assert "revoked 1 live value(s)" in one.stdout
    assert time.monotonic() - started < 30
    assert value_gone(cluster, namespace, secret_name_of(pods["a"]), "research-llm")
    assert not value_gone(cluster, namespace, secret_name_of(pods["b"]), "research-llm")

    rest = revoke()
    assert rest.returncode == 0, rest.stderr
    assert "revoked 2 live value(s)" in rest.stdout
    for pod in pods.values():
        assert value_gone(cluster, namespace, secret_name_of(pod), "research-llm")
    status = get_credential(cluster, namespace, "research-llm")["status"]["lastRevocation"]
    assert status["revoked"] == 2 and status.get("pod") is None
    assert (
        len([line for line in audit_lines(operator, "revoke", namespace=namespace) if line["reason"] == "emergency"])
        == 3
    )

    unknown = subprocess.run(
        [sys.executable, "-m", "agentcred", "revoke", "no-such-credential", "-n", namespace],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
    )
    assert unknown.returncode == 6 and "not found" in unknown.stderr  # not found: its own exit code


def test_expired_exception_revokes_static_values(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "static-value-1")
    create_credential(
        cluster, namespace, name="legacy", category="retrieval", source=STATIC_SOURCE, exception=EXCEPTION
    )
    create_pod(cluster, namespace, "agent", "legacy")
    pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
    name = secret_name_of(pod)
    assert same_value(value_of(read_secret(cluster, namespace, name), "legacy"), b"static-value-1")

    cluster.custom.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        "legacy",
        {"spec": {"exception": {"expires": "2020-01-01"}}},
    )
    wait_for(lambda: value_gone(cluster, namespace, name, "legacy"), what="static value revoked")
    revoked = wait_for(lambda: audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"]), what="audit revoke")
    assert revoked[0]["reason"] == "exception-expired"


def _refusal(cluster: Cluster, namespace: str, credentials: str, sa: str = "research-agent") -> str:
    with pytest.raises(ApiException) as refused:
        create_pod(cluster, namespace, "refused", credentials, sa=sa)
    assert refused.value.status == 403, refused.value.body
    return json.loads(refused.value.body)["message"]


def test_refusals_name_the_reason(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    service_account(cluster, namespace)
    service_account(cluster, namespace, "intruder")
    create_credential(cluster, namespace)
    cluster.custom.create_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        {
            "apiVersion": model.API_VERSION,
            "kind": model.KIND,
            "metadata": {"name": "expired"},
            "spec": spec(
                source=STATIC_SOURCE,
                exception={**EXCEPTION, "expires": "2020-01-01"},
                projection={"mountPath": "/var/run/agentcred/expired"},
            ),
        },
    )
    wait_for(lambda: condition(get_credential(cluster, namespace, "expired"), "Ready"), what="verdict on expired")

    message = _refusal(cluster, namespace, "research-llm", sa="intruder")
    assert "ServiceAccount intruder" in message and "research-llm" in message and namespace in message
    message = _refusal(cluster, namespace, "no-such-credential")
    assert "AgentCredential no-such-credential does not exist" in message and namespace in message
    message = _refusal(cluster, namespace, "research-llm,Bad_Name!")
    assert "invalid credential name" in message and labels.CREDENTIALS_ANNOTATION in message
    message = _refusal(cluster, namespace, "expired")
    assert "expired" in message and "not Ready" in message and "ExceptionExpired" in message
    # Pods without the opt-in label never meet the webhook.
    cluster.core.create_namespaced_pod(
        namespace, {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    denied = [line for line in operator.audit() if line["action"] == "deny" and line.get("namespace") == namespace]
    assert len(denied) == 4


def test_a_static_credential_is_ready_only_while_its_upstream_is_shared(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    cluster.custom.create_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        credential(
            name="vendor",
            category="tool",
            source=STATIC_SOURCE,
            exception=EXCEPTION,
            projection={"mountPath": "/var/run/agentcred/vendor"},
        ),
    )

    def ready() -> dict | None:
        return condition(get_credential(cluster, namespace, "vendor"), "Ready")

    missing = wait_for(lambda: (found := ready()) and found["status"] == "False" and found, what="Ready=False")
    assert missing["reason"] == "UpstreamNotShared" and "upstream-key" in missing["message"]
    assert "not Ready (UpstreamNotShared)" in _refusal(cluster, namespace, "vendor")

    # Its owner creates and shares it: Ready follows, without any pod's help.
    shared_secret(cluster, namespace, "late-value")
    wait_for(lambda: ready()["status"] == "True", what="Ready once the upstream is shared")
    create_pod(cluster, namespace, "agent", "vendor")
    running = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod released")
    assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(running)), "vendor"), b"late-value")

    # Shared with someone else only: not Ready, and the live value is revoked.
    cluster.core.patch_namespaced_secret(
        "upstream-key", namespace, {"metadata": {"annotations": {labels.SHARED_WITH_ANNOTATION: "another-credential"}}}
    )
    wait_for(lambda: ready()["reason"] == "UpstreamNotShared", what="Ready=False once no longer shared")
    wait_for(lambda: value_gone(cluster, namespace, secret_name_of(running), "vendor"), what="the static value revoked")
    revoked = audit_lines(operator, "revoke", podUID=running["metadata"]["uid"])
    assert [line["reason"] for line in revoked] == ["credential-not-ready"]


def test_operator_killed_during_a_burst_leaves_no_orphan_and_misses_no_revocation(
    cluster: Cluster, own_operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    for i in range(50):
        create_job(cluster, namespace, f"task-{i}", "research-llm")
    time.sleep(1.0)
    own_operator.kill()  # mid-burst: some pods issued, some gated, none finished
    before_kill = len(own_operator.audit())

    # While the operator is down, finish half the tasks: nobody is there to revoke.
    def running_pods() -> list:
        return [p for p in cluster.core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]

    before = running_pods()
    finished = {p.metadata.name for p in before[: len(before) // 2]}
    for name in finished:
        kubelet.succeed(namespace, name)
    own_operator.start()

    def converged() -> bool:
        pods = cluster.core.list_namespaced_pod(namespace).items
        if len(pods) != 50 or any(p.status.phase == "Pending" for p in pods):
            return False
        secrets = {
            s.metadata.name
            for s in cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items
        }
        for pod in pods:
            has = labels.secret_name(pod.metadata.annotations[labels.BINDING_ANNOTATION]) in secrets
            if has != (pod.status.phase == "Running"):
                return False
        return True

    wait_for(converged, timeout=90, interval=0.5, what="every live pod with its value, every ended task without")
    for pod in cluster.core.list_namespaced_pod(namespace).items:
        if pod.status.phase == "Running":
            secret = read_secret(
                cluster, namespace, labels.secret_name(pod.metadata.annotations[labels.BINDING_ANNOTATION])
            )
            assert value_of(secret, "research-llm") is not None

    def revoked() -> set:
        return {line["podName"] for line in audit_lines(own_operator, "revoke", namespace=namespace)}

    wait_for(lambda: finished <= revoked(), timeout=15, what="every finished task's revocation in the audit log")
    # Every pod issued once -- or twice where the killed process wrote its line ahead of a write
    # it never made (the trail may repeat a line across a crash, never lose one).
    lines = own_operator.audit()
    issued: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        if line["action"] == "issue" and line.get("namespace") == namespace:
            issued.setdefault(line["podName"], []).append(index)
    assert len(issued) == 50, "a pod was never issued"
    for pod, indices in issued.items():
        assert len(indices) == 1 or (len(indices) == 2 and indices[0] < before_kill), f"{pod} issued twice"


def test_no_secret_value_in_logs_events_or_status(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "sk-live-LEAKCHECK-0123456789")
    create_credential(cluster, namespace)
    create_credential(cluster, namespace, name="vendor", category="tool", source=STATIC_SOURCE, exception=EXCEPTION)
    create_job(cluster, namespace, "task", "research-llm,vendor")
    pod = job_pod(cluster, namespace, "task")
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    values = [value_of(secret, "research-llm"), value_of(secret, "vendor")]
    signature = values[0].split(b".")[2]
    kubelet.succeed(namespace, pod["metadata"]["name"])
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="revoked")

    haystacks = {
        "operator log": operator.logs(),
        "audit log": operator.audit_path.read_text(),
        "events": json.dumps(
            cluster.api_client.sanitize_for_serialization(cluster.core.list_namespaced_event(namespace))
        ),
        "status": json.dumps([get_credential(cluster, namespace, n)["status"] for n in ("research-llm", "vendor")]),
    }
    for where, text in haystacks.items():
        for needle in (values[0].decode(), signature.decode(), values[1].decode()):
            assert needle not in text, f"a secret value appears in the {where}"


def test_renew_now_pushes_a_rotated_upstream_value_to_running_pods(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "vendor-key-v1")
    create_credential(
        cluster,
        namespace,
        name="vendor",
        category="tool",
        source=STATIC_SOURCE,
        exception=EXCEPTION,
        ttl="1h",
        maxLifetime="8h",
    )
    for name in ("a", "b"):
        create_pod(cluster, namespace, name, "vendor")
    pods = [wait_for(lambda n=n: running_pod(cluster, namespace, name=n), what=f"pod {n}") for n in ("a", "b")]
    cluster.core.patch_namespaced_secret("upstream-key", namespace, {"stringData": {"api-key": "vendor-key-v2"}})

    renewed = subprocess.run(
        [sys.executable, "-m", "agentcred", "renew", "vendor", "-n", namespace],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert "renewed 2 live value(s)" in renewed.stdout
    for pod in pods:
        assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(pod)), "vendor"), b"vendor-key-v2")
    assert len(audit_lines(operator, "renew", namespace=namespace)) == 2
