"""Leak response on the real control plane: a leaked value is traced to its pod and owner,
every live copy is revoked, the pod gets a fresh value (or is quarantined), static values are
flagged until rotated upstream -- and the intake hears only the reporters it lists.

Values are compared, never printed; the session's witness (conftest.py) searches every
log, audit line, Event and status for every value handled here.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agentcred.api.fingerprints import short
from agentcred.platform.keys import KeyRing
from agentcred.platform.revocations import parse_document, served_key
from agentcred.verify import TokenRejected, Verifier
from agents import (
    audit_lines,
    claims_of,
    condition,
    create_credential,
    create_pod,
    get_credential,
    pod_events,
    read_secret,
    reporter_token,
    running_pod,
    same_value,
    secret_name_of,
    service_account,
    shared_secret,
    start_agent,
    state_of,
    value_of,
)
from clusterkit import LEAK_REPORTER, OPERATOR_NAMESPACE, TENANT_REPORTER, Cluster, OperatorProcess, wait_for
from minting_service import MintingService
from oauth import bound_token, exchange
from samples import EXCEPTION, STATIC_SOURCE

AUDIENCE = "https://llm-gateway.internal"


# -- helpers -------------------------------------------------------------------------------


def intake(
    operator: OperatorProcess,
    path: str,
    body: list[dict[str, Any]] | bytes,
    token: str | None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{operator.api_url}{path}", data=data, method="POST", headers={"Content-Type": content_type}
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def report(operator: OperatorProcess, cluster: Cluster, value: bytes | str, **found: str) -> dict[str, Any]:
    text = value.decode() if isinstance(value, bytes) else value
    status, answers = intake(operator, "/v1/leaks", [{"token": text, **found}], reporter_token(cluster))
    assert status == 200, answers
    return answers[0]


def cli(
    cluster: Cluster, operator: OperatorProcess, command: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess:
    token_file = Path(operator.log_dir) / "reporter.token"
    token_file.write_text(reporter_token(cluster))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcred",
            command,
            "--url",
            operator.api_url,
            "--cafile",
            operator.ca_file(),
            "--token-file",
            str(token_file),
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )


def keyring(cluster: Cluster) -> KeyRing:
    secret = cluster.core.read_namespaced_secret("agentcred-signing-keys", OPERATOR_NAMESPACE)
    return KeyRing.from_secret_data(secret.data)


def revocations(operator: OperatorProcess) -> list:
    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{operator.api_url}/v1/revocations", context=context, timeout=10) as response:
        return list(parse_document(json.loads(response.read())))


def fresh_value(cluster: Cluster, namespace: str, pod: dict, credential: str, leaked: bytes) -> bytes | None:
    value = value_of(read_secret(cluster, namespace, secret_name_of(pod)) or {}, credential)
    return value if value is not None and not same_value(value, leaked) else None


def independently_verified(cluster: Cluster, token: bytes) -> dict[str, Any]:
    """PyJWT, not agentcred's own verifier, checks a re-issued token against the published key."""
    header = pyjwt.get_unverified_header(token)
    jwk = next(key for key in keyring(cluster).jwks()["keys"] if key["kid"] == header["kid"])
    return pyjwt.decode(
        token, key=pyjwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience=AUDIENCE, options={"require": ["exp", "jti"]}
    )


def dt_of(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def credential_events(cluster: Cluster, namespace: str, name: str, reason: str) -> list:
    return [
        e
        for e in pod_events(cluster, namespace, name)
        if e.reason == reason and e.involved_object.kind == "AgentCredential"
    ]


# -- a leaked live minted token --------------------------------------------------------------


def test_a_leaked_minted_token_is_traced_revoked_and_replaced_in_the_running_pod(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    uid = pod["metadata"]["uid"]
    leaked = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert leaked is not None

    # Trace: a user pastes the string and learns whose it is.
    traced = cli(cluster, operator, "trace", "-o", "json", stdin=leaked.decode() + "\n")
    assert traced.returncode == 0, traced.stderr
    [answer] = json.loads(traced.stdout)
    [holder] = answer["holders"]
    assert answer["verdict"] == "ours" and answer["issuedByAgentcred"] is True
    assert (holder["namespace"], holder["credential"], holder["kind"], holder["state"]) == (
        namespace,
        "research-llm",
        "minted",
        "live",
    )
    assert (holder["pod"], holder["podUID"], holder["serviceAccount"]) == ("agent", uid, "research-agent")
    assert holder["owner"] == "team-research@example.com" and holder["category"] == "model"
    assert holder["tokenId"] == claims_of(leaked)["jti"] and holder["expiresAt"] and holder["issuedAt"]
    table = cli(cluster, operator, "trace", stdin=leaked.decode())
    assert table.returncode == 0 and "issued by agentcred" in table.stdout and uid in table.stdout

    # Report: revoked everywhere, and a fresh value lands in the still-running pod.
    answer = report(
        operator,
        cluster,
        leaked,
        type="agentcred_token",
        url="https://github.com/acme/app/blob/main/.env",
        source="commit",
    )
    assert (answer["outcome"], answer["revoked"], answer["next"], answer["label"]) == (
        "revoked",
        1,
        ["reissued"],
        "true_positive",
    )
    entry = next(e for e in revocations(operator) if (e.pod_uid, e.credential) == served_key(uid, "research-llm"))
    assert entry.before is not None and entry.covers(dt_of(claims_of(leaked)["iat"]))
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    with pytest.raises(TokenRejected) as refused:
        verifier.verify(leaked.decode(), audience=AUDIENCE, namespace=namespace)
    assert refused.value.reason == "revoked"

    fresh = wait_for(lambda: fresh_value(cluster, namespace, pod, "research-llm", leaked), what="a fresh value")
    claims = independently_verified(cluster, fresh)
    assert claims["agentcred"]["podUID"] == uid and claims["jti"] != claims_of(leaked)["jti"]
    assert not entry.covers(dt_of(claims["iat"])), "the fresh token is past the cut-off"
    assert (
        Verifier.from_url(operator.api_url, cafile=operator.ca_file()).verify(
            fresh.decode(), audience=AUDIENCE, namespace=namespace
        )["jti"]
        == claims["jti"]
    )
    assert cluster.core.read_namespaced_pod("agent", namespace).status.phase == "Running", "the agent carries on"

    # One leak line, complete; Warning Events on the credential and the pod; the metric.
    [line] = audit_lines(operator, "leak", namespace=namespace)
    assert line["outcome"] == "revoked" and line["category"] == "model" and line["owner"] == "team-research@example.com"
    assert (
        line["fingerprint"].startswith("hmac-sha256:")
        and line["reporter"] == "system:serviceaccount:agentcred:leak-reporter"
    )
    assert line["reportedFrom"] == {
        "type": "agentcred_token",
        "url": "https://github.com/acme/app/blob/main/.env",
        "source": "commit",
    }
    assert [(r["podUID"], r["credential"], r["tokenId"]) for r in line["revoked"]] == [
        (uid, "research-llm", claims_of(leaked)["jti"])
    ]
    assert audit_lines(operator, "revoke", namespace=namespace, reason="leaked")
    wait_for(
        lambda: credential_events(cluster, namespace, "research-llm", "LeakReported"), what="Event on the credential"
    )
    wait_for(
        lambda: [
            e for e in pod_events(cluster, namespace, "agent") if e.reason == "CredentialLeaked" and e.type == "Warning"
        ],
        what="Event on the pod",
    )
    assert operator.metrics()[("agentcred_leaks_reported_total", (("category", "model"), ("outcome", "revoked")))] >= 1

    # Reported again (scanners repeat themselves): already revoked, nothing more happens.
    again = report(operator, cluster, leaked)
    assert again["outcome"] == "already-revoked" and again["revoked"] == 0
    assert (
        json.loads(cli(cluster, operator, "trace", "-o", "json", stdin=leaked.decode()).stdout)[0]["holders"][0][
            "state"
        ]
        == "revoked"
    )


def test_an_exchanged_token_is_revoked_with_its_pods_value_by_pod_uid(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """A token the token service issued to the pod carries the pod's UID: the cut-off entry on
    the revocation list covers it and the pod's value."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    held = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert held is not None
    status, granted = exchange(operator, bound_token(cluster, namespace, pod), resource=AUDIENCE)
    assert status == 200, granted
    exchanged = granted["access_token"]

    answer = report(operator, cluster, exchanged)
    assert answer["holders"][0]["kind"] == "exchanged" and answer["outcome"] == "revoked"
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    for token in (exchanged, held.decode()):
        with pytest.raises(TokenRejected) as refused:
            verifier.verify(token, audience=AUDIENCE, namespace=namespace)
        assert refused.value.reason == "revoked"
    fresh = wait_for(lambda: fresh_value(cluster, namespace, pod, "research-llm", held), what="a fresh value")
    assert independently_verified(cluster, fresh)["agentcred"]["podUID"] == pod["metadata"]["uid"]


# -- a static value held by three pods -----------------------------------------------------


def test_a_leaked_static_value_is_removed_from_every_pod_and_flagged_until_rotated_upstream(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "sk-vendor-leaked-0123456789")
    create_credential(cluster, namespace, name="vendor", category="tool", source=STATIC_SOURCE, exception=EXCEPTION)
    pods = [start_agent(cluster, namespace, f"agent-{i}", "vendor") for i in range(3)]
    leaked = b"sk-vendor-leaked-0123456789"
    assert all(same_value(value_of(read_secret(cluster, namespace, secret_name_of(p)), "vendor"), leaked) for p in pods)

    leak = cli(cluster, operator, "leak", "-o", "json", "--found-source", "transcript", stdin=leaked.decode() + "\n")
    assert leak.returncode == 0, leak.stderr
    [answer] = json.loads(leak.stdout)
    assert answer["outcome"] == "revoked" and answer["revoked"] == 3 and answer["next"] == ["compromised"]
    assert {h["pod"] for h in answer["holders"]} == {"agent-0", "agent-1", "agent-2"}
    assert {h["kind"] for h in answer["holders"]} == {"secretRef"}
    for pod in pods:
        wait_for(
            lambda pod=pod: value_of(read_secret(cluster, namespace, secret_name_of(pod)), "vendor") is None,
            what="value removed",
        )

    def compromised() -> dict | None:
        found = condition(get_credential(cluster, namespace, "vendor"), "Compromised")
        return found if found and found["status"] == "True" else None

    flagged = wait_for(compromised, what="Compromised=True")
    fingerprint = answer["holders"][0]["fingerprint"]
    assert short(fingerprint) in flagged["message"]
    assert get_credential(cluster, namespace, "vendor")["status"]["compromised"][0]["fingerprint"] == fingerprint
    inventory = subprocess.run(
        [sys.executable, "-m", "agentcred", "inventory", "-o", "json", "--fail-on", "compromised"],
        capture_output=True, text=True, env=cluster.env(), timeout=120,
    )  # fmt: skip
    assert inventory.returncode == 1
    assert [
        f
        for f in json.loads(inventory.stdout)["findings"]
        if f["kind"] == "compromised" and f["namespace"] == namespace
    ]

    # No pod receives that value again, a new one neither, while upstream still holds it.
    newcomer = create_pod(cluster, namespace, "newcomer", "vendor")
    wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "newcomer") if e.reason == "Compromised"],
        what="the newcomer told why it waits",
    )
    assert read_secret(cluster, namespace, secret_name_of(newcomer)) is None
    for pod in pods:
        assert value_of(read_secret(cluster, namespace, secret_name_of(pod)), "vendor") is None

    # Rotated upstream: everyone gets the new value, the flag goes.
    rotated = b"sk-vendor-rotated-9876543210"
    cluster.core.patch_namespaced_secret(
        "upstream-key", namespace, {"data": {"api-key": base64.b64encode(rotated).decode()}}
    )
    for pod in [*pods, newcomer]:
        wait_for(
            lambda pod=pod: same_value(
                value_of(read_secret(cluster, namespace, secret_name_of(pod)) or {}, "vendor"), rotated
            ),
            timeout=60,
            what="the rotated value in every pod",
        )
    wait_for(
        lambda: (condition(get_credential(cluster, namespace, "vendor"), "Compromised") or {}).get("status") == "False",
        what="Compromised=False",
    )
    assert not get_credential(cluster, namespace, "vendor")["status"].get("compromised")


# -- a minting-service value ---------------------------------------------------------------


def test_a_leaked_minting_service_value_is_revoked_at_the_service_and_replaced(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service = MintingService().start()
    try:
        service_account(cluster, namespace)
        create_credential(
            cluster,
            namespace,
            name="minted",
            category="tool",
            source={"webhook": {"url": service.url, "caBundle": service.ca_pem, "timeout": "1s"}},
        )
        create_pod(cluster, namespace, "agent", "minted")
        pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
        leaked = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "minted")
        assert leaked is not None
        first_id = service.minted[-1]["id"]

        answer = report(operator, cluster, leaked, source="siem")
        assert (
            answer["outcome"] == "revoked"
            and answer["holders"][0]["kind"] == "webhook"
            and answer["next"] == ["reissued"]
        )
        wait_for(lambda: [r for r in service.revoked if r["id"] == first_id], what="the revoke call at the service")
        assert next(r for r in service.revoked if r["id"] == first_id)["reason"] == "leaked"
        wait_for(lambda: fresh_value(cluster, namespace, pod, "minted", leaked), what="a fresh minted value")
        assert service.minted[-1]["id"] != first_id
        assert (
            state_of(read_secret(cluster, namespace, secret_name_of(pod)))["values"]["minted"]["tokenId"]
            == service.minted[-1]["id"]
        )
    finally:
        service.stop()


# -- a token whose pod has ended, a forgery, an unknown string --------------------------------


def test_an_ended_pods_token_is_answered_revoked(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    leaked = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert leaked is not None
    kubelet.succeed(namespace, "agent")
    wait_for(lambda: read_secret(cluster, namespace, secret_name_of(pod)) is None, what="the task's end revoked")
    answer = report(operator, cluster, leaked)
    assert answer["verdict"] == "ours" and answer["holders"][0]["state"] == "revoked"
    assert answer["outcome"] == "already-revoked" and answer["revoked"] == 0 and answer["next"] == []


def test_a_forged_token_naming_our_issuer_is_not_ours_and_changes_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    held = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert held is not None
    # Every claim of the real token, signed by a key that merely claims the operator's kid.
    forger = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    real_kid = pyjwt.get_unverified_header(held)["kid"]
    forged = pyjwt.encode(
        claims_of(held), forger.current("EdDSA").private_key, algorithm="EdDSA", headers={"kid": real_kid}
    )

    answer = report(operator, cluster, forged)
    assert (answer["verdict"], answer["outcome"], answer["holders"], answer["label"]) == (
        "not-ours", "not-ours", [], "false_positive",
    )  # fmt: skip
    assert not [e for e in revocations(operator) if e.pod_uid == served_key(pod["metadata"]["uid"], "")[0]]
    assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm"), held)
    assert [
        line
        for line in audit_lines(operator, "leak", outcome="not-ours")
        if short(line["fingerprint"]) == answer["fingerprint"]
    ]
    assert forged not in operator.audit_text()


def test_an_unknown_string_is_answered_unknown_and_audited_without_it(
    cluster: Cluster, operator: OperatorProcess, kubelet
) -> None:
    unknown = "ghp_notAnAgentcredValue0123456789abcdef"
    answer = report(operator, cluster, unknown, url=f"https://paste.example/raw?q={unknown}")
    assert (answer["verdict"], answer["outcome"], answer["holders"]) == ("unknown", "unknown", [])
    traced = cli(cluster, operator, "trace", stdin=unknown)
    assert traced.returncode == 1 and "unknown to agentcred" in traced.stdout
    line = next(
        line
        for line in audit_lines(operator, "leak", outcome="unknown")
        if short(line["fingerprint"]) == answer["fingerprint"]
    )
    assert line["reportedFrom"]["url"] == "https://paste.example/raw?q=[the reported value]"
    assert unknown not in operator.audit_text() and unknown not in operator.logs()


# -- quarantine ----------------------------------------------------------------------------


def test_quarantine_revokes_bars_and_labels_the_pod(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, onLeak="quarantine")
    pod = start_agent(cluster, namespace)
    leaked = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert leaked is not None
    answer = report(operator, cluster, leaked)
    assert answer["outcome"] == "revoked" and answer["next"] == ["quarantined"]
    wait_for(
        lambda: (
            (cluster.core.read_namespaced_pod("agent", namespace).metadata.labels or {}).get(labels.QUARANTINED_LABEL)
            == "true"
        ),
        what="the quarantine label",
    )
    assert value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm") is None
    entry = next(e for e in revocations(operator) if e.pod_uid == served_key(pod["metadata"]["uid"], "")[0])
    assert entry.before is None, "barred: no token of this pod for this credential verifies"
    wait_for(lambda: [e for e in pod_events(cluster, namespace, "agent") if e.reason == "Quarantined"], what="Event")
    # Whoever may update the pod cannot lift the quarantine a NetworkPolicy selects.
    with pytest.raises(ApiException) as refused:
        cluster.core.patch_namespaced_pod(
            "agent", namespace, {"metadata": {"labels": {labels.QUARANTINED_LABEL: None}}}
        )
    assert refused.value.status == 403 and "quarantined" in refused.value.body
    # A renewal would have come by now if anything were to come.
    assert value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm") is None


# -- the intake, attacked ------------------------------------------------------------------


def test_the_intake_hears_only_listed_reporters_and_bounded_batches(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    held = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert held is not None
    item = [{"token": held.decode()}]
    # No token, a token the API server does not accept, a ServiceAccount not on the list, the
    # agent's own pod-bound token: refused before anything is looked up.
    assert intake(operator, "/v1/leaks", item, None)[0] == 401
    assert intake(operator, "/v1/leaks", item, "not-a-token")[0] == 401
    outsider = reporter_token(cluster, (namespace, "research-agent"))
    status, body = intake(operator, "/v1/leaks", item, outsider)
    assert (status, body["error"]) == (403, "not-a-reporter")
    assert intake(operator, "/v1/trace", item, outsider)[0] == 403
    # Huge batches are refused whole, cheaply.
    listed = reporter_token(cluster)
    assert intake(operator, "/v1/leaks", [{"token": "x"}] * 1001, listed)[0] == 413
    assert intake(operator, "/v1/leaks", b"[" + b" " * (2 * 1024 * 1024) + b"]", listed)[0] == 413
    assert intake(operator, "/v1/leaks", b"{}", listed)[0] == 400
    assert intake(operator, "/v1/leaks", b"[]", listed, content_type="text/plain")[0] == 415
    # Nothing of it touched the pod.
    assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm"), held)
    assert audit_lines(operator, "deny", reason="not-a-reporter")


def test_another_tenants_reporter_cannot_revoke_by_fingerprint_or_token_id(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """A tenant's scanner is on the list, and learnt a fingerprint and a token id (from an Event,
    a shared dashboard): without the value it can neither trace nor revoke another tenant's."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    held = value_of(secret, "research-llm")
    recorded = state_of(secret)["values"]["research-llm"]
    tenant = reporter_token(cluster, TENANT_REPORTER)
    # The answer says the rule, in the same words for a value held elsewhere and for none at all.
    _, [nowhere] = intake(operator, "/v1/trace", [{"fingerprint": "hmac-sha256:" + "0" * 12}], tenant)
    assert f"in namespace {TENANT_REPORTER[0]}" in nowhere["why"]
    assert "a reporter sees only its own namespace's values" in nowhere["why"]
    for item in (
        {"fingerprint": recorded["fingerprint"]},
        {"fingerprint": short(recorded["fingerprint"])},
        {"tokenId": recorded["tokenId"]},
    ):
        for path in ("/v1/trace", "/v1/leaks"):
            status, [answer] = intake(operator, path, [item], tenant)
            assert status == 200 and answer["verdict"] == "unknown" and answer["holders"] == [], (path, item)
            assert answer["why"] == nowhere["why"], (path, item)
    assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm"), held)
    assert not [e for e in revocations(operator) if e.pod_uid == served_key(pod["metadata"]["uid"], "")[0]]
    # The operator's own reporter may: by the short fingerprint from the CLI, then by token id.
    traced = cli(cluster, operator, "trace", "-o", "json", "--fingerprint", short(recorded["fingerprint"]))
    assert json.loads(traced.stdout)[0]["holders"][0]["podUID"] == pod["metadata"]["uid"]
    leak = cli(cluster, operator, "leak", "-o", "json", "--token", recorded["tokenId"])
    assert leak.returncode == 0 and json.loads(leak.stdout)[0]["outcome"] == "revoked"
    wait_for(lambda: fresh_value(cluster, namespace, pod, "research-llm", held), what="a fresh value")


def test_a_flood_of_bad_tokens_stops_costing_token_reviews(cluster: Cluster, operator: OperatorProcess) -> None:
    statuses = [intake(operator, "/v1/trace", [{"token": "x"}], f"garbage-{i}")[0] for i in range(60)]
    # Throttled once the budget is spent (on a slow machine it may refill between requests:
    # which answer comes last is the machine's speed, not the defence).
    assert 429 in statuses and set(statuses) <= {401, 429}, statuses
    # The address is heard again once it slows down.
    listed = reporter_token(cluster)
    wait_for(lambda: intake(operator, "/v1/trace", [{"token": "x"}], listed)[0] == 200, what="heard again")


def test_trace_from_a_laptop_with_the_kubeconfig_and_context_named_and_no_cafile(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """`trace --as` requests the reporter's token through the kubeconfig and context given on
    the command line (KUBECONFIG points nowhere), takes the operator's CA from the ConfigMap it
    publishes, and reaches it at https://localhost:<port> -- where a port-forward puts it."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    held = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert held is not None
    reporter_token(cluster)  # the reporter exists
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["contexts"] = [{"name": "laptop", "context": admin["contexts"][0]["context"]}]
    admin["current-context"] = "nowhere"  # only --context makes this file usable
    admin["contexts"].append({"name": "nowhere", "context": {"cluster": "missing", "user": "missing"}})
    laptop = tmp_path / "laptop.kubeconfig"
    laptop.write_text(yaml.safe_dump(admin))
    traced = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcred",
            "trace",
            "--kubeconfig",
            str(laptop),
            "--context",
            "laptop",
            "--url",
            f"https://localhost:{operator.api_port}",
            "--as",
            "/".join(LEAK_REPORTER),
            "-o",
            "json",
        ],
        input=held.decode(),
        capture_output=True,
        text=True,
        env=cluster.env(KUBECONFIG=str(tmp_path / "none")),
        timeout=120,
    )
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout)[0]["holders"][0]["podUID"] == pod["metadata"]["uid"]
    # A reporter that does not exist: said in one line, its own exit code.
    missing = subprocess.run(
        [sys.executable, "-m", "agentcred", "trace", "--kubeconfig", str(laptop), "--context", "laptop"]
        + ["--url", f"https://localhost:{operator.api_port}", "--as", f"{namespace}/nobody"],
        input="x",
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    assert missing.returncode == 6 and f"ServiceAccount {namespace}/nobody not found" in missing.stderr


def _raw_intake(operator: OperatorProcess, path: str, body: bytes, token: str) -> tuple[int, str]:
    """Status and body as text: a server error is no JSON."""
    request = urllib.request.Request(
        f"{operator.api_url}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_hostile_json_in_a_report_is_answered_as_bad_and_the_batch_stands(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """A string shaped like a token whose header or claims nest JSON thousands deep (it matches
    the project's own gitleaks rule: whoever plants it where a scanner looks gets it reported)
    made the tracer's unverified peek raise RecursionError: HTTP 500 with a traceback, no audit
    line, and the answers for the whole batch lost. A report body nested as deep did the same."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    held = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert held is not None
    encode = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    deep = ("[" * 5000 + "]" * 5000).encode()
    header = encode(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": "x"}).encode())
    deep_claims = f"{header}.{encode(deep)}.{encode(b'x' * 64)}"
    deep_header = f"{encode(deep)}.{encode(b'{}')}.{encode(b'x' * 64)}"
    batch = [{"token": deep_claims}, {"token": held.decode()}, {"token": deep_header}]
    listed = reporter_token(cluster)
    for path in ("/v1/trace", "/v1/leaks"):
        status, text = _raw_intake(operator, path, json.dumps(batch).encode(), listed)
        assert status == 200, (path, status, text[:200])
        answers = json.loads(text)
        assert [a["index"] for a in answers] == [0, 1, 2]
        assert answers[0]["verdict"] == answers[2]["verdict"] == "unknown", path
        assert answers[1]["verdict"] == "ours", path
    # The good item was contained; the hostile ones were audited like any string that is not ours.
    assert [line for line in audit_lines(operator, "leak", outcome="revoked") if line["namespace"] == namespace]
    assert len([line for line in audit_lines(operator, "trace", verdict="unknown")]) >= 2
    # A body nested too deep is refused as malformed, as any other.
    status, text = _raw_intake(operator, "/v1/leaks", b"[" * 100_000 + b"]" * 100_000, listed)
    assert (status, json.loads(text)["error"]) == (400, "malformed-body"), text[:200]


def test_a_tenants_reporter_cannot_guess_another_tenants_static_value(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """A listed reporter of one tenant sent `POST /v1/trace` with 1,000 guesses a request, no
    limit: it hit `hunter2` in another tenant (`ours`, with its owner and pod), then revoked it
    at `/v1/leaks` and had the credential marked Compromised. A tenant's reporter now learns and
    revokes only within its own namespace (cluster-wide reporters are listed apart:
    leakResponse.clusterReporters), and values that are nobody's cost it: bulk guessing is cut
    off after a burst, and audited."""
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "hunter2")
    create_credential(cluster, namespace, name="vendor", category="tool", source=STATIC_SOURCE, exception=EXCEPTION)
    pod = start_agent(cluster, namespace, credentials="vendor")
    tenant = reporter_token(cluster, TENANT_REPORTER)
    guesses = [{"token": f"hunter{i}"} for i in range(1000)]
    status, answers = intake(operator, "/v1/trace", guesses, tenant)
    assert status in (200, 429), answers
    if status == 200:
        assert all(a.get("verdict") != "ours" for a in answers), "the guess found another tenant's value"
        limited = [a for a in answers if a.get("error") == "rate-limited"]
        assert len(limited) >= 800, "a thousand guesses were all looked up"
    status, answers = intake(operator, "/v1/leaks", [{"token": "hunter2"}], tenant)
    assert status == 429 or (answers[0]["verdict"] == "unknown" and answers[0]["revoked"] == 0), answers
    assert same_value(value_of(read_secret(cluster, namespace, secret_name_of(pod)), "vendor"), b"hunter2")
    assert not (condition(get_credential(cluster, namespace, "vendor"), "Compromised") or {}).get("status") == "True"
    assert audit_lines(
        operator, "deny", reason="guessing", reporter=f"system:serviceaccount:{TENANT_REPORTER[0]}:{TENANT_REPORTER[1]}"
    )
