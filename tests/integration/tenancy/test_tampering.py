"""Attacks on what the operator reads back (its Secrets' bookkeeping, its finalizer, dates,
redirects, copies of an admission) by users without admin rights -- each found by a held-out
attack on the real control plane, each refused or contained here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agentcred.platform.revocations import served_key
from agentcred.verify import TokenRejected, Verifier
from agents import (
    admitted_copy,
    audit_lines,
    condition,
    create_credential,
    create_pod,
    get_credential,
    nudge,
    operator_caught_up,
    pod_events,
    read_secret,
    running_pod,
    secret_name_of,
    service_account,
    start_agent,
    state_of,
    value_gone,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from identities import PODS_ONLY, namespace_admin, narrow_user
from minting_service import MintingService
from oauth import bound_token, exchange
from samples import credential

AUDIENCE = "https://llm-gateway.internal"


def _revocations(operator: OperatorProcess) -> list[dict]:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{operator.api_url}/v1/revocations", context=context, timeout=10) as answer:
        return json.loads(answer.read())["revoked"]


def _revocation_list_passes(operator: OperatorProcess) -> float:
    return operator.metrics().get(("agentcred_revocation_list_passes_total", ()), 0.0)


def _ask_renew(admin: client.ApiClient, namespace: str, name: str) -> str:
    """What a tenant may do to its own credential: ask for a renewal (the operator re-reads its
    Secret). The request's id, which the operator writes into `status.lastRenewal` once handled."""
    request = f"r-{time.monotonic_ns()}"
    client.CustomObjectsApi(admin).patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        name,
        {"metadata": {"annotations": {labels.RENEW_ANNOTATION: json.dumps({"id": request})}}},
    )
    return request


def _handled(cluster: Cluster, namespace: str, name: str, request: str) -> bool:
    return (get_credential(cluster, namespace, name).get("status") or {}).get("lastRenewal", {}).get("id") == request


def _forge(admin: client.ApiClient, namespace: str, secret: str, mutate) -> None:  # noqa: ANN001
    core = client.CoreV1Api(admin)
    body = core.read_namespaced_secret(secret, namespace)
    meta = client.ApiClient().sanitize_for_serialization(body.metadata)
    mutate(meta)
    core.patch_namespaced_secret(
        secret, namespace, {"metadata": {"labels": meta.get("labels"), "annotations": meta.get("annotations")}}
    )


def test_forged_bookkeeping_counts_for_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """A namespace admin edits its own pod's Secret: another pod's UID, values that never
    expire, a far-future task start, a cleared revocation. None of it reaches the revocation
    list, a lifetime or a value."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    admin = namespace_admin(cluster, namespace, tmp_path)
    victim = start_agent(cluster, namespace, "victim")
    attacker = start_agent(cluster, namespace, "attacker")
    secret = secret_name_of(attacker)
    first = state_of(read_secret(cluster, namespace, secret))["values"]["research-llm"]

    def poison(meta: dict) -> None:
        meta["labels"][labels.POD_UID_LABEL] = victim["metadata"]["uid"]
        state = json.loads(meta["annotations"][labels.STATE_ANNOTATION])
        forged = {
            **state["values"]["research-llm"],
            "expiresAt": "2099-01-01T00:00:00Z",
            "taskStartedAt": "2099-01-01T00:00:00Z",
        }
        state["values"] = {"research-llm": forged, "*": forged, "x" * 60: forged}
        state["revoked"] = {}
        meta["annotations"][labels.STATE_ANNOTATION] = json.dumps(state)

    _forge(admin, namespace, secret, poison)
    _ask_renew(admin, namespace, "research-llm")
    # The operator sees bookkeeping it did not seal: it revokes what the pod held until now
    # and issues afresh; the victim is untouched.
    healed = wait_for(
        lambda: (
            (s := read_secret(cluster, namespace, secret))
            and value_of(s, "research-llm")
            and state_of(s)["values"]["research-llm"]["fingerprint"] != first["fingerprint"]
            and s
        ),
        what="a fresh value after the forged bookkeeping",
    )
    assert healed["metadata"]["labels"][labels.POD_UID_LABEL] == attacker["metadata"]["uid"]
    entries = _revocations(operator)
    victim_pod, _ = served_key(victim["metadata"]["uid"], "")
    attacker_pod, attacker_credential = served_key(attacker["metadata"]["uid"], "research-llm")
    assert not [e for e in entries if e["pod"] == victim_pod], "the victim was revoked"
    assert {e["credential"] for e in entries if e["pod"] == attacker_pod} <= {attacker_credential}
    assert all(e["exp"] < time.time() + 25 * 3600 for e in entries), "an entry outlives any token"
    assert value_of(read_secret(cluster, namespace, secret_name_of(victim)), "research-llm") is not None


def test_a_forged_managed_secret_does_not_stop_the_operator(
    cluster: Cluster, own_operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    admin = client.CoreV1Api(namespace_admin(cluster, namespace, tmp_path))
    for state in ("[]", '{"values": {"a": {"issuedAt": 7}}}', "null"):
        admin.create_namespaced_secret(
            namespace,
            {
                "metadata": {
                    "name": f"agentcred-{abs(hash(state)) % 10**16:016d}",
                    "labels": {labels.MANAGED_LABEL: "true", labels.BINDING_LABEL: f"{abs(hash(state)) % 10**16:016d}"},
                    "annotations": {labels.STATE_ANNOTATION: state},
                }
            },
        )
    own_operator.restart()  # the start-up sweep meets them
    start_agent(cluster, namespace, "after")  # and the operator still serves
    assert own_operator.health("/healthz")[0] == 200 and own_operator.health("/readyz")[0] == 200


def test_an_emergency_revoke_holds_whatever_the_secret_says(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_credential(cluster, namespace, name="search", category="tool")
    admin = namespace_admin(cluster, namespace, tmp_path)
    pod = start_agent(cluster, namespace, credentials="research-llm,search")
    secret = secret_name_of(pod)
    revoked = subprocess.run(
        [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", namespace, "--pod", "agent"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    wait_for(lambda: value_gone(cluster, namespace, secret, "research-llm"), what="revoked")

    def forget(meta: dict) -> None:
        state = json.loads(meta["annotations"][labels.STATE_ANNOTATION])
        state["revoked"] = {}
        meta["annotations"][labels.STATE_ANNOTATION] = json.dumps(state)

    _forge(admin, namespace, secret, forget)
    request = _ask_renew(admin, namespace, "search")
    wait_for(lambda: _handled(cluster, namespace, "search", request), what="the renewal request handled")
    issues = [line["credential"] for line in audit_lines(operator, "issue", podUID=pod["metadata"]["uid"])]
    assert issues.count("research-llm") == 1, issues
    served_pod, served_credential = served_key(pod["metadata"]["uid"], "research-llm")
    assert any(
        e["pod"] == served_pod
        and e["credential"] == served_credential
        and "before" not in e
        and e["exp"] > time.time() + 3600
        for e in _revocations(operator)
    ), "the bar lapsed early"


def test_dates_that_would_overflow_are_refused_by_the_api_server(cluster: Cluster, namespace: str) -> None:
    for field, value in (
        ("review", {"cadence": "90d", "lastReviewed": "9999-12-31"}),
        ("exception", {"reason": "r", "approvedBy": "a", "expires": "9999-12-31"}),
    ):
        extra = {"source": {"secretRef": {"name": "x", "key": "y"}}} if field == "exception" else {}
        with pytest.raises(ApiException) as refused:
            cluster.custom.create_namespaced_custom_object(
                model.GROUP,
                model.VERSION,
                namespace,
                model.PLURAL,
                credential(name=f"far-{field}", **{field: value}, **extra),
            )
        assert refused.value.status == 422 and "should match" in json.loads(refused.value.body)["message"]


def test_a_minting_service_redirect_is_not_followed(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    redirecting, internal = MintingService(), MintingService()
    redirecting.start()
    internal.start()
    redirecting.redirect_to = internal.url
    try:
        service_account(cluster, namespace)
        create_credential(
            cluster,
            namespace,
            name="minted",
            category="tool",
            source={"webhook": {"url": redirecting.url, "caBundle": redirecting.ca_pem, "timeout": "2s"}},
        )
        create_pod(cluster, namespace, "agent", "minted")
        found = wait_for(
            lambda: (
                (c := condition(get_credential(cluster, namespace, "minted"), "SourceAvailable"))
                and c["status"] == "False"
                and c
            ),
            what="SourceAvailable=False",
        )
        assert found["reason"] == "MintingServiceRefused" and "redirects are not followed" in found["message"]
        assert internal.calls == 0, "the redirect target was called"
    finally:
        redirecting.stop()
        internal.stop()


def test_a_copy_of_an_admission_gets_nothing_even_once_the_original_is_gone(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    developer = client.CoreV1Api(narrow_user(cluster, namespace, "developer", PODS_ONLY, tmp_path))
    original = start_agent(cluster, namespace, "original")
    copy = admitted_copy(original)
    try:
        developer.create_namespaced_pod(namespace, copy)  # within the reinvocation window, gate and all
    except ApiException as refused:
        assert refused.status == 403  # refused outright is fine too
        return
    wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "copy") if e.reason == "BindingInUse"],
        what="the copy told the binding is taken",
    )
    cluster.core.delete_namespaced_pod("original", namespace)
    wait_for(lambda: read_secret(cluster, namespace, secret_name_of(original)) is None, what="the original revoked")
    nudge(cluster, namespace, "copy")
    operator_caught_up(cluster, namespace)
    assert read_secret(cluster, namespace, secret_name_of(original)) is None, "the copy was given a value"
    assert running_pod(cluster, namespace, name="copy") is None


def test_a_spoofed_progress_annotation_does_not_skip_revocation_on_deletion(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    admin = client.CustomObjectsApi(namespace_admin(cluster, namespace, tmp_path))
    pod = start_agent(cluster, namespace)
    admin.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        "research-llm",
        {"metadata": {"annotations": {"agentcred.dev/credential_deleted": json.dumps({"success": True})}}},
    )
    admin.delete_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, "research-llm")
    wait_for(lambda: value_gone(cluster, namespace, secret_name_of(pod), "research-llm"), what="revoked first")
    assert audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"], reason="credential-deleted")


def test_verifiers_must_say_which_tenant_they_serve() -> None:
    verifier = Verifier(jwks={"keys": []}, issuer="https://issuer")
    with pytest.raises(TypeError):
        verifier.verify("a.b.c", audience=AUDIENCE)  # type: ignore[call-arg]
    with pytest.raises(TokenRejected):
        verifier.verify("a.b.c", audience=AUDIENCE, namespace=None)


def test_the_lifetime_counts_from_admission_not_from_the_secret(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, ttl="20s", renewBefore="15s", maxLifetime="40s")
    admin = namespace_admin(cluster, namespace, tmp_path)
    pod = start_agent(cluster, namespace)
    secret = secret_name_of(pod)

    def forever(meta: dict) -> None:
        state = json.loads(meta["annotations"][labels.STATE_ANNOTATION])
        state["values"]["research-llm"]["taskStartedAt"] = "2099-01-01T00:00:00Z"
        meta["annotations"][labels.STATE_ANNOTATION] = json.dumps(state)

    _forge(admin, namespace, secret, forever)
    # The forged bookkeeping counts for nothing: the value is re-issued, and revoked all the
    # same when the task reaches maxLifetime, counted from its sealed admission.
    wait_for(
        lambda: audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"], reason="max-lifetime"),
        timeout=90,
        what="revoked at maxLifetime",
    )
    wait_for(lambda: value_gone(cluster, namespace, secret, "research-llm"), what="no value left")


def test_an_emergency_revoke_holds_after_the_tenant_lengthens_the_lifetime_and_deletes_the_secret(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """After `agentcred revoke` in a running pod, the tenant raised the credential's maxLifetime
    (its policy allowed 8 h) and deleted the pod's Secret: the bar on the revocation list had
    been sized from the maxLifetime at revoke time, and once it lapsed the same pod was issued
    a fresh value, token exchange answered 200 and verifiers accepted it. A bar now lasts as
    long as its pod could hold the credential, whatever the tenant edits afterwards."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, ttl="5m", maxLifetime="10m")
    admin = namespace_admin(cluster, namespace, tmp_path)
    pod = start_agent(cluster, namespace)
    secret = secret_name_of(pod)
    revoked = subprocess.run(
        [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", namespace, "--pod", "agent"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    wait_for(lambda: value_gone(cluster, namespace, secret, "research-llm"), what="revoked")
    served_pod, served_credential = served_key(pod["metadata"]["uid"], "research-llm")

    def bar_until() -> int:
        return max(
            (
                e["exp"]
                for e in _revocations(operator)
                if (e["pod"], e["credential"]) == (served_pod, served_credential)
            ),
            default=0,
        )

    assert bar_until() < time.time() + 3600  # sized from maxLifetime 10m

    # The tenant, within its policy: eight hours for every task, and the tombstone gone.
    client.CustomObjectsApi(admin).patch_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, "research-llm", {"spec": {"maxLifetime": "8h"}}
    )
    client.CoreV1Api(admin).delete_namespaced_secret(secret, namespace)
    admitted = _admitted_epoch(pod)
    lifetime_end = admitted + 8 * 3600 - 60
    wait_for(lambda: bar_until() >= lifetime_end, what="the bar lasting as long as the pod's new lifetime")
    # Positive proof the operator looked again: three more whole passes of the loop that keeps
    # the bars (each one could have let this one lapse, or shortened it again), and it stands.
    passes = _revocation_list_passes(operator)
    wait_for(lambda: _revocation_list_passes(operator) >= passes + 4, what="three more revocation-list passes")
    assert bar_until() >= lifetime_end
    issues = [line["credential"] for line in audit_lines(operator, "issue", podUID=pod["metadata"]["uid"])]
    assert issues.count("research-llm") == 1, issues
    status, answer = exchange(operator, bound_token(cluster, namespace, pod))
    assert status == 400 and "revoked" in answer["error_description"], answer


def _admitted_epoch(pod: dict) -> float:
    """The pod's sealed admission time, as epoch seconds."""
    import datetime as dt

    text = pod["metadata"]["annotations"][labels.ADMITTED_ANNOTATION]
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
