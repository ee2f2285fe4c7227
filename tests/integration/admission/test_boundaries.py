"""Admission is the only way in: attacks by users without admin rights, each refused or
contained, on the real control plane (issue: trust boundaries, items 4-6, 7b, 9-11)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agentcred.platform.revocations import served_key
from agentcred.verify import TokenRejected, Verifier
from agents import (
    audit_lines,
    claims_of,
    create_credential,
    create_pod,
    guard_active,
    operator_caught_up,
    pod_events,
    read_secret,
    secret_name_of,
    service_account,
    start_agent,
    state_of,
    value_gone,
    value_of,
    without_opt_in_check,
    without_pod_guard,
)
from clusterkit import OPERATOR_NAMESPACE, Cluster, OperatorProcess, opt_in_check_refuses, wait_for
from identities import PODS_ONLY, narrow_user
from minting_service import MintingService
from oauth import JWT_BEARER, bound_token, details


def _user(cluster: Cluster, namespace: str, name: str, rules: list[dict], tmp_path: Path) -> client.CoreV1Api:
    return client.CoreV1Api(narrow_user(cluster, namespace, name, rules, tmp_path))


def _message(error: ApiException) -> str:
    return json.loads(error.body)["message"]


def test_a_label_added_after_creation_is_refused_and_gets_nothing_without_the_guard(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    developer = _user(cluster, namespace, "developer", PODS_ONLY, tmp_path)
    # A pod created without the label, carrying by hand what the webhook would have added.
    binding = "abcdefabcdef0123"
    crafted = {
        "metadata": {
            "name": "sneaky",
            "annotations": {labels.CREDENTIALS_ANNOTATION: "research-llm", labels.BINDING_ANNOTATION: binding},
        },
        "spec": {
            "serviceAccountName": "research-agent",
            "containers": [{"name": "c", "image": "x"}],
            "volumes": [
                {
                    "name": labels.volume_name("research-llm"),
                    "projected": {
                        "sources": [
                            {
                                "secret": {
                                    "name": labels.secret_name(binding),
                                    "optional": True,
                                    "items": [{"key": labels.value_key("research-llm"), "path": "token"}],
                                }
                            }
                        ]
                    },
                }
            ],
        },
    }
    # The opt-in check refuses it at once: it names credentials but has no opt-in label.
    wait_for(lambda: opt_in_check_refuses(cluster, namespace), what="the opt-in check in effect")
    with pytest.raises(ApiException) as at_creation:
        developer.create_namespaced_pod(namespace, crafted)
    assert f"has no label {labels.INJECT_LABEL}" in _message(at_creation.value)
    # Where nobody installed that check, it is created; the label guard stands next.
    with without_opt_in_check(cluster, namespace):
        developer.create_namespaced_pod(namespace, crafted)
    # The guard is an in-tree policy the operator installs at start; it takes effect in moments.
    wait_for(lambda: guard_active(cluster, namespace, "sneaky"), what="the label guard in effect")
    with pytest.raises(ApiException) as refused:
        developer.patch_namespaced_pod("sneaky", namespace, {"metadata": {"labels": {labels.INJECT_LABEL: "true"}}})
    assert refused.value.status in (403, 422)
    assert "cannot be added, changed or removed" in _message(refused.value)

    # Even where nobody installed the guard, the operator gives the pod nothing: no seal.
    with without_pod_guard(cluster):
        wait_for(lambda: not guard_active(cluster, namespace, "sneaky"), what="the guard gone")
        developer.patch_namespaced_pod("sneaky", namespace, {"metadata": {"labels": {labels.INJECT_LABEL: "true"}}})
        events = wait_for(
            lambda: [e for e in pod_events(cluster, namespace, "sneaky") if e.reason == "NotAdmitted"],
            what="a NotAdmitted Event on the pod",
        )
        assert "was not admitted by the agentcred webhook" in events[0].message
    assert read_secret(cluster, namespace, labels.secret_name(binding)) is None
    assert audit_lines(operator, "deny", namespace=namespace, reason="not-admitted")
    assert not audit_lines(operator, "issue", namespace=namespace)


def test_relabelling_cannot_undo_an_emergency_revoke(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_credential(cluster, namespace, name="search", category="tool")
    developer = _user(cluster, namespace, "developer", PODS_ONLY, tmp_path)
    pod = start_agent(cluster, namespace, credentials="research-llm,search")
    secret = secret_name_of(pod)
    token = value_of(read_secret(cluster, namespace, secret), "research-llm").decode()
    revoked = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcred",
            "revoke",
            "research-llm",
            "-n",
            namespace,
            "--pod",
            "agent",
            "--reason",
            "prompt injection",
        ],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    wait_for(lambda: value_gone(cluster, namespace, secret, "research-llm"), what="revoked")

    with pytest.raises(ApiException) as refused:
        developer.patch_namespaced_pod("agent", namespace, {"metadata": {"labels": {labels.INJECT_LABEL: None}}})
    assert "cannot be added, changed or removed" in _message(refused.value)

    with without_pod_guard(cluster):
        wait_for(lambda: not guard_active(cluster, namespace, "agent"), what="the guard gone")
        developer.patch_namespaced_pod("agent", namespace, {"metadata": {"labels": {labels.INJECT_LABEL: None}}})
        opted_out = wait_for(
            lambda: audit_lines(operator, "revoke", namespace=namespace, reason="opted-out"),
            what="leaving opt-in revokes what was left",
        )
        assert [line["credential"] for line in opted_out] == ["search"]
        developer.patch_namespaced_pod("agent", namespace, {"metadata": {"labels": {labels.INJECT_LABEL: "true"}}})
        operator_caught_up(cluster, namespace)  # it saw the pod labelled again
    tombstone = read_secret(cluster, namespace, secret)
    assert tombstone is not None
    assert value_of(tombstone, "research-llm") is None and value_of(tombstone, "search") is None
    issues = audit_lines(operator, "issue", podUID=pod["metadata"]["uid"])
    assert sorted(line["credential"] for line in issues) == ["research-llm", "search"], "issued again"
    with pytest.raises(TokenRejected) as rejected:
        Verifier.from_url(operator.api_url, cafile=operator.ca_file()).verify(
            token, audience="https://llm-gateway.internal", namespace=None
        )
    assert rejected.value.reason == "revoked"


def test_a_pod_cannot_name_another_pods_binding_or_secret(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    developer = _user(cluster, namespace, "developer", PODS_ONLY, tmp_path)
    victim = start_agent(cluster, namespace, "victim")
    victim_secret = secret_name_of(victim)
    before = value_of(read_secret(cluster, namespace, victim_secret), "research-llm")
    intruder = {
        "metadata": {
            "name": "intruder",
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: "research-llm"},
        },
        "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
    }
    attempts = {
        "its binding": {
            "metadata": {
                "annotations": {labels.BINDING_ANNOTATION: victim["metadata"]["annotations"][labels.BINDING_ANNOTATION]}
            }
        },
        "its volume": {"spec": {"volumes": victim["spec"]["volumes"]}},
        "its gate": {"spec": {"schedulingGates": [{"name": labels.SCHEDULING_GATE}]}},
        "a path in the name": {
            "spec": {
                "volumes": [{"name": "agentcred-x", "secret": {"secretName": "agentcred-x/../../../other/secrets/y"}}]
            }
        },
    }
    for what, extra in attempts.items():
        body = json.loads(json.dumps(intruder))
        body["metadata"]["annotations"].update(extra.get("metadata", {}).get("annotations", {}))
        body["spec"].update(extra.get("spec", {}))
        with pytest.raises(ApiException) as refused:
            developer.create_namespaced_pod(namespace, body)
        assert refused.value.status == 403, what
        assert "only the agentcred admission webhook sets these" in _message(refused.value), what

    # The victim still holds its value, untouched.
    after = value_of(read_secret(cluster, namespace, victim_secret), "research-llm")
    assert before == after and not audit_lines(operator, "revoke", namespace=namespace)


def test_a_lost_secret_is_healed_without_resetting_max_lifetime(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, ttl="30s", renewBefore="25s")
    pod = start_agent(cluster, namespace)
    name = secret_name_of(pod)
    first = state_of(read_secret(cluster, namespace, name))["values"]["research-llm"]
    cluster.core.delete_namespaced_secret(name, namespace)
    # At its next renewal (due within seconds) the operator finds the Secret gone and issues anew.
    healed = wait_for(lambda: (read_secret(cluster, namespace, name) or {}).get("data"), what="the value healed")
    assert healed
    again = state_of(read_secret(cluster, namespace, name))["values"]["research-llm"]
    assert again["fingerprint"] != first["fingerprint"]
    assert again["taskStartedAt"] == first["taskStartedAt"], "healing reset maxLifetime"


def test_a_gated_pod_deleted_before_issuing_does_not_upset_the_operator(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        name="minted",
        category="tool",
        source={"webhook": {"url": "https://127.0.0.1:1/mint", "timeout": "1s"}},
    )
    for i in range(5):
        create_pod(cluster, namespace, f"gated-{i}", "minted")
        cluster.core.delete_namespaced_pod(f"gated-{i}", namespace, grace_period_seconds=0)
    create_credential(cluster, namespace)
    operator_caught_up(cluster, namespace)  # every deletion above was handled
    operator.assert_alive()
    assert "Traceback" not in operator.logs()[-20000:]


def test_pods_in_namespaces_the_webhook_skips_get_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    victim = start_agent(cluster, namespace, "victim")
    # A pod in the operator's own namespace (skipped by the webhook), carrying a copy of
    # everything the webhook put on an admitted pod.
    copied = {
        "metadata": {
            "name": "copy",
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {
                k: v for k, v in victim["metadata"]["annotations"].items() if k.startswith("agentcred.dev/")
            },
        },
        "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "c", "image": "x"}],
            "volumes": victim["spec"]["volumes"],
        },
    }
    cluster.core.create_namespaced_pod(OPERATOR_NAMESPACE, copied)
    try:
        wait_for(
            lambda: [e for e in pod_events(cluster, OPERATOR_NAMESPACE, "copy") if e.reason == "NotAdmitted"],
            what="a NotAdmitted Event",
        )
        assert read_secret(cluster, OPERATOR_NAMESPACE, secret_name_of(victim)) is None
    finally:
        cluster.core.delete_namespaced_pod("copy", OPERATOR_NAMESPACE, grace_period_seconds=0)


# -- the token service: floods, globs, lifetimes ---------------------------------------------


_CONTEXTS: dict[str, ssl.SSLContext] = {}


def _token(operator: OperatorProcess, form: dict) -> tuple[int, dict, dict]:
    """A token request, over one TLS context per operator (a flood must not measure handshakes)."""
    request = urllib.request.Request(
        f"{operator.api_url}/oauth2/token",
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if operator.api_url not in _CONTEXTS:
        _CONTEXTS[operator.api_url] = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=_CONTEXTS[operator.api_url], timeout=30) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def _reviews(operator: OperatorProcess) -> float:
    return sum(v for (name, _), v in operator.metrics().items() if name == "agentcred_token_reviews_total")


def test_a_flood_of_garbage_tokens_costs_few_token_reviews(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)

    def bearer(assertion: str) -> dict:
        return {"grant_type": JWT_BEARER, "assertion": assertion}

    _token(operator, bearer("garbage-token"))  # one on its own first (and the client's TLS set up)
    before = _reviews(operator)
    tokens = ["garbage-token"] * 150 + [f"garbage-{i}" for i in range(250)]
    with ThreadPoolExecutor(20) as pool:
        statuses = [status for status, _, _ in pool.map(lambda t: _token(operator, bearer(t)), tokens)]
    reviews = _reviews(operator) - before
    assert 429 in statuses and set(statuses) <= {400, 429}
    assert reviews <= 120, f"{reviews} TokenReviews for 400 garbage requests"
    status, body, headers = next(r for r in (_token(operator, bearer("garbage-x")) for _ in range(50)) if r[0] == 429)
    assert body["error"] == "temporarily_unavailable" and headers.get("Retry-After")
    # Every test reaches the operator from 127.0.0.1: let the address's budget of refused
    # tokens (40, refilled at 10/s) refill, or the next test's refusals are answered 429.
    time.sleep(5)


def test_intents_are_literal_and_exchanged_tokens_live_at_most_five_minutes(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        ttl="1h",
        maxLifetime="8h",
        scope={
            "tools": ["web-search"],
            "actions": ["read"],
            "resources": ["repo:acme/*"],
            "deny": {"resources": ["repo:acme/secrets-*"]},
        },
    )
    pod = start_agent(cluster, namespace)
    base = {"grant_type": JWT_BEARER, "assertion": bound_token(cluster, namespace, pod)}
    for resource in ("repo:acme/*", "repo:acme/?ecrets-vault", "repo:acme/[s]ecrets-vault"):
        status, body, _ = _token(operator, {**base, "scope": f"tool:web-search action:read resource:{resource}"})
        assert (status, body["error"]) == (400, "invalid_scope"), resource
        assert "glob character" in body["error_description"]
        status, body, _ = _token(operator, {**base, "authorization_details": details("web-search", ["read"], resource)})
        assert (status, body["error"]) == (400, "invalid_authorization_details"), resource
    status, body, _ = _token(operator, {**base, "scope": "tool:web-search action:read resource:repo:acme/app"})
    assert status == 200 and body["expires_in"] <= 300
    claims = claims_of(body["access_token"].encode())
    assert claims["exp"] - claims["iat"] <= 300  # not the credential's hour


def test_exchanges_do_not_grow_the_revocation_list(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope={"tools": ["*"], "actions": ["read"], "resources": ["*"]})
    pod = start_agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)
    granted = []
    for i in range(60):
        status, body, _ = _token(
            operator, {"grant_type": JWT_BEARER, "assertion": token, "scope": f"tool:t{i} action:read resource:r{i}"}
        )
        if status == 200:
            granted.append(body["access_token"])
        else:
            time.sleep(0.3)  # the per-pod rate limit
    assert len(granted) >= 20
    cluster.core.delete_namespaced_pod("agent", namespace)

    def document() -> list[dict]:
        verifier_url = f"{operator.api_url}/v1/revocations"
        with urllib.request.urlopen(
            verifier_url, context=ssl.create_default_context(cafile=operator.ca_file()), timeout=10
        ) as answer:
            return [
                e for e in json.loads(answer.read())["revoked"] if e["pod"] == served_key(pod["metadata"]["uid"], "")[0]
            ]

    entries = wait_for(document, what="the pod on the revocation list")
    assert len(entries) == 1, entries  # one entry covers the value and every token exchanged from it
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    for exchanged in granted:
        with pytest.raises(TokenRejected) as rejected:
            verifier.verify(exchanged, audience="https://llm-gateway.internal", namespace=None)
        assert rejected.value.reason == "revoked"


def test_a_tenants_hanging_minting_service_does_not_delay_anothers_renewals(
    cluster: Cluster, own_operator: OperatorProcess, kubelet, namespace: str
) -> None:
    hanging, working = MintingService(), MintingService()
    hanging.mode = "hang"
    hanging.start()
    working.start()
    other = cluster.create_namespace("aaa-hung")  # sorts first: re-planned first after a take-over
    try:
        service_account(cluster, other)
        create_credential(
            cluster,
            other,
            name="stuck",
            category="tool",
            source={"webhook": {"url": hanging.url, "caBundle": hanging.ca_pem, "timeout": "5s"}},
        )
        with ThreadPoolExecutor(8) as pool:  # more hung calls than the operator has connections or slots
            list(pool.map(lambda i: create_pod(cluster, other, f"stuck-{i}", "stuck"), range(120)))
        service_account(cluster, namespace)
        create_credential(
            cluster,
            namespace,
            name="minted",
            category="tool",
            ttl="20s",
            renewBefore="15s",
            source={"webhook": {"url": working.url, "caBundle": working.ca_pem, "timeout": "5s"}},
        )
        start_agent(cluster, namespace, credentials="minted")
        # The stuck tenant's retries come round every few seconds and hang again; meanwhile
        # this tenant's value is renewed every ~5 s.
        time.sleep(20)
        before = len(working.minted)
        time.sleep(30)
        renewals = len(working.minted) - before
        assert renewals >= 3, f"only {renewals} renewals in 30 s while another tenant's service hung"
        # And after a restart (a new leader re-plans every pod, the stuck tenant's included).
        own_operator.restart()
        before = len(working.minted)
        time.sleep(30)
        renewals = len(working.minted) - before
        assert renewals >= 3, f"only {renewals} renewals in the 30 s after a take-over"
    finally:
        cluster.delete_namespace(other)
        hanging.stop()
        working.stop()
