"""Gateways' external authorization against the real control plane and operator: Envoy's
ext_authz `Check` over gRPC with real `CheckRequest` messages (bodies included), for a
gateway-only minted credential (an MCP tool server) and a gateway-only static key (a model
API). The agent's pod holds only its identity; every call is decided from the request and
written to the audit; attacks by other pods and other callers are refused."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agents import (
    audit_lines,
    create_credential,
    read_secret,
    secret_name_of,
    service_account,
    shared_secret,
    start_agent,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from gateways import ExtAuthz, check_request, gateway_token, mcp_call
from oauth import bound_token, independently_verified
from samples import EXCEPTION

STATIC_VALUE = "sk-upstream-7f3e9c1d5b2a"  # compared and searched for, never printed
DOCS_SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}
LLM_SCOPE = {"tools": ["llm"], "actions": ["invoke"], "resources": ["model:small-*"]}
CHAT = {
    "name": "chat",
    "methods": ["POST"],
    "path": "/v1/chat/completions",
    "intent": {"tool": "llm", "action": "invoke", "resource": "model:{body.model}"},
}


def docs_audience(namespace: str) -> str:
    return f"https://docs.{namespace}.svc"


def gateway_credentials(cluster: Cluster, namespace: str, sa: str = "research-agent") -> None:
    """`docs` (minted for the MCP server) and `llm` (a static key for the model API), both gateway-only."""
    service_account(cluster, namespace, sa)
    create_credential(
        cluster,
        namespace,
        name="docs",
        category="tool",
        subjects={"serviceAccounts": [sa]},
        source={"jwt": {"audiences": [docs_audience(namespace)]}},
        scope=DOCS_SCOPE,
        projection={"delivery": "gateway"},
        gateway={"routes": [{"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:{arguments.collection}"}}]},
    )
    shared_secret(cluster, namespace, STATIC_VALUE)
    create_credential(
        cluster,
        namespace,
        name="llm",
        subjects={"serviceAccounts": [sa]},
        source={"secretRef": {"name": "upstream-key", "key": "api-key"}},
        exception=EXCEPTION,
        scope=LLM_SCOPE,
        projection={"delivery": "gateway"},
        gateway={"routes": [CHAT], "upstream": {"name": "X-Api-Key", "prefix": ""}},
    )


@pytest.fixture
def ext_authz(cluster: Cluster, operator: OperatorProcess) -> Iterator[ExtAuthz]:
    client = ExtAuthz(operator, gateway_token(cluster))
    yield client
    client.close()


@pytest.fixture
def agent(cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str) -> dict:
    gateway_credentials(cluster, namespace)
    return start_agent(cluster, namespace, credentials="docs,llm")


def bearer(cluster: Cluster, namespace: str, pod: dict | None, sa: str = "research-agent") -> dict[str, str]:
    return {
        "authorization": f"Bearer {bound_token(cluster, namespace, pod, sa=sa)}",
        "content-type": "application/json",
    }


def test_gateway_only_credentials_never_enter_the_pod(cluster: Cluster, namespace: str, agent: dict) -> None:
    """The pod gets its identity volume and nothing else of agentcred's: no value volume, no
    env var, and its Secret (if any) holds no value of either credential."""
    volumes = agent["spec"]["volumes"]
    assert [v["name"] for v in volumes if v["name"].startswith("agentcred-")] == ["agentcred-identity"]
    secret = read_secret(cluster, namespace, secret_name_of(agent))
    assert secret is None or (value_of(secret, "docs") is None and value_of(secret, "llm") is None)


def test_an_allowed_tool_call_gets_a_token_minted_for_that_call(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    identity = bearer(cluster, namespace, agent)
    body = mcp_call("search_docs", collection="handbook", query="rotate")
    checked = ext_authz.check("POST", "/mcp", {**identity, "cookie": "a=b"}, body, request_id="req-allow")
    assert checked.allowed and checked.grpc_code == 0
    scheme, _, token = checked.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and token != identity["authorization"].split()[1]
    claims = independently_verified(operator, token, docs_audience(namespace))
    assert claims["authorization_details"] == [
        {"type": "agentcred.dev/tool", "tool": "search_docs", "actions": ["call"], "identifier": "docs:handbook"}
    ]
    assert claims["agentcred"]["grant"] == "gateway" and claims["agentcred"]["podUID"] == agent["metadata"]["uid"]
    assert claims["exp"] - claims["iat"] <= 60
    # Authorization itself is overwritten; a DPoP proof (there is none here) goes no further either.
    assert set(checked.removed) == {"cookie", "dpop", "proxy-authorization"}
    # The upstream holds that token: replayed to the gateway as the pod's identity, it is refused.
    replayed = ext_authz.check("POST", "/mcp", {"authorization": f"Bearer {token}"}, body)
    assert (replayed.status, replayed.body["reason"]) == (401, "invalid-token")

    line = wait_for(lambda: audit_lines(operator, "gateway", requestId="req-allow"), what="the call's audit line")[0]
    assert line["decision"] == "allow" and line["contract"] == "ext_authz"
    assert line["intent"] == {"tool": "search_docs", "action": "call", "resource": "docs:handbook"}
    assert (line["credential"], line["pod"], line["podUID"], line["serviceAccount"]) == (
        "docs",
        agent["metadata"]["name"],
        agent["metadata"]["uid"],
        "research-agent",
    )
    assert line["tokenId"] == claims["jti"] and line["rule"] == "route:docs+scope" and line["latencyMs"] > 0


def test_a_call_outside_the_intents_is_refused_with_the_reason(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    checked = ext_authz.check(
        "POST",
        "/mcp",
        bearer(cluster, namespace, agent),
        mcp_call("delete_docs", collection="handbook"),
        request_id="req-deny",
    )
    assert not checked.allowed and checked.status == 403 and checked.grpc_code == 7  # PERMISSION_DENIED
    assert checked.body["reason"] == "tool-not-allowed"
    assert checked.body["error_description"] == "tool 'delete_docs' is not in the credential's scope"
    assert checked.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    line = wait_for(lambda: audit_lines(operator, "gateway", requestId="req-deny"), what="the refusal's audit line")[0]
    assert (line["decision"], line["reason"], line["rule"]) == ("deny", "tool-not-allowed", "scope")
    assert line["intent"]["tool"] == "delete_docs"
    samples = operator.metrics()
    key = (
        "agentcred_gateway_decisions_total",
        (("contract", "ext_authz"), ("decision", "deny"), ("reason", "tool-not-allowed")),
    )
    assert samples.get(key, 0) >= 1


def test_a_static_key_goes_upstream_and_only_its_fingerprint_into_the_audit(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    identity = bearer(cluster, namespace, agent)
    checked = ext_authz.check(
        "POST", "/v1/chat/completions", identity, json.dumps({"model": "small-1"}).encode(), request_id="req-llm"
    )
    assert checked.allowed
    assert checked.headers["X-Api-Key"] == STATIC_VALUE
    assert "authorization" in checked.removed  # the agent's own token never goes upstream
    refused = ext_authz.check("POST", "/v1/chat/completions", identity, json.dumps({"model": "large-1"}).encode())
    assert not refused.allowed and refused.body["reason"] == "resource-not-allowed"
    line = wait_for(lambda: audit_lines(operator, "gateway", requestId="req-llm"), what="the audit line")[0]
    assert line["fingerprint"].startswith("hmac-sha256:") and line["intent"]["resource"] == "model:small-1"
    leaked = STATIC_VALUE in operator.audit_text() + operator.logs()
    assert not leaked, "the static value appears in the operator's audit or log"


def test_without_a_body_an_mcp_call_is_refused_saying_why(
    cluster: Cluster, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    """A gateway configured without with_request_body: the route does not declare that its
    upstream enforces header agreement, so headers naming a tool are not believed."""
    spoofed = {**bearer(cluster, namespace, agent), "mcp-method": "tools/call", "mcp-name": "search_docs"}
    checked = ext_authz.check("POST", "/mcp", spoofed, None)
    assert not checked.allowed and checked.body["reason"] == "no-body"
    assert "mcp.headerAgreement" in checked.body["error_description"]
    # With the body, headers that disagree with it are refused.
    lying = ext_authz.check("POST", "/mcp", spoofed, mcp_call("delete_docs", collection="handbook"))
    assert not lying.allowed and lying.body["reason"] == "header-mismatch"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps([json.loads(mcp_call("search_docs", collection="a"))] * 2).encode(), "jsonrpc-batch"),
        (b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search_docs"}}', "jsonrpc-notification"),
        (b"{", "malformed-body"),
        (b"[" * 5000 + b"]" * 5000, "body-too-deep"),
        (mcp_call("search\u0430docs", collection="a"), "invalid-intent"),  # a Cyrillic a
    ],
)
def test_hostile_bodies_are_refused(
    cluster: Cluster, namespace: str, agent: dict, ext_authz: ExtAuthz, body: bytes, reason: str
) -> None:
    checked = ext_authz.check("POST", "/mcp", bearer(cluster, namespace, agent), body)
    assert not checked.allowed and checked.body["reason"] == reason


def test_a_body_past_the_limit_is_refused_by_the_transport_never_allowed(
    cluster: Cluster, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    """Over the gRPC message limit the call fails (Envoy, failing closed, denies)."""
    huge = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "x": "'
        + b"a" * (3 * 1024 * 1024)
        + b'"}}'
    )
    with pytest.raises(grpc.RpcError) as failed:
        ext_authz.raw(check_request("POST", "/mcp", bearer(cluster, namespace, agent), huge))
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- who may ask, and who may call ------------------------------------------------------------


def test_only_a_listed_gateway_may_ask(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict
) -> None:
    """An agent that reaches agentcred itself would get the upstream value in the answer: it
    is not a gateway, whatever token it shows."""
    identity = bearer(cluster, namespace, agent)
    body = json.dumps({"model": "small-1"}).encode()
    for token in (None, identity["authorization"].split()[1], gateway_token(cluster, (namespace, "research-agent"))):
        client = ExtAuthz(operator, token)
        try:
            checked = client.check("POST", "/v1/chat/completions", identity, body)
        finally:
            client.close()
        assert not checked.allowed and checked.body["reason"] == "unknown-gateway"
        handed = STATIC_VALUE in json.dumps(checked.headers)
        assert not handed


def test_calls_without_a_live_admitted_pod_behind_them_are_refused(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    body = json.dumps({"model": "small-1"}).encode()

    def outcome(headers: dict[str, str]) -> tuple[int, str]:
        checked = ext_authz.check("POST", "/v1/chat/completions", headers, body)
        handed = STATIC_VALUE in json.dumps(checked.headers)  # a bare `in` would print the value on failure
        assert handed == checked.allowed
        return checked.status, checked.body.get("reason", "allowed")

    assert outcome({}) == (401, "no-token")
    assert outcome({"authorization": "Bearer not-a-token"}) == (401, "invalid-token")
    # A token naming the pod and the credential, signed by a key that is not agentcred's.
    forged_claims = {
        "iss": operator.api_url,
        "sub": f"system:serviceaccount:{namespace}:research-agent",
        "aud": docs_audience(namespace),
        "exp": int(time.time()) + 300,
        "iat": int(time.time()),
        "jti": "forged",
        "agentcred": {
            "credential": "docs",
            "namespace": namespace,
            "pod": agent["metadata"]["name"],
            "podUID": agent["metadata"]["uid"],
        },
    }
    forged = jwt.encode(
        forged_claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"typ": "at+jwt"}
    )
    assert outcome({"authorization": f"Bearer {forged}"}) == (401, "invalid-token")
    # The same claims signed with agentcred's own key (read as an admin could), expired a minute ago.
    from agentcred.platform.keys import KeyRing, encode_jwt

    secret = cluster.core.read_namespaced_secret("agentcred-signing-keys", "agentcred")
    ring = KeyRing.from_secret_data(secret.data)
    expired = encode_jwt(
        {**forged_claims, "exp": int(time.time()) - 60, "iat": int(time.time()) - 400}, ring.current("EdDSA")
    )
    assert outcome({"authorization": f"Bearer {expired}"}) == (401, "invalid-token")
    # A ServiceAccount token bound to no pod; one of a pod agentcred never admitted.
    assert outcome(bearer(cluster, namespace, None))[0] == 401
    plain = cluster.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "plain"},
            "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    plain_pod = cluster.api_client.sanitize_for_serialization(plain)
    assert outcome(bearer(cluster, namespace, plain_pod)) == (403, "pod-not-admitted")
    # Another tenant's admitted pod, with credentials of its own for the same route.
    other = cluster.create_namespace("gw-other")
    try:
        gateway_credentials(cluster, other)
        theirs = start_agent(cluster, other, name="theirs", credentials="docs")
        status, reason = outcome(bearer(cluster, other, theirs))
        assert (status, reason) == (403, "no-route")  # its own docs has no chat route; our llm is not its
    finally:
        cluster.delete_namespace(other)
    # The pod ends: its identity token still verifies at the API server, but nothing is decided for it.
    identity = bearer(cluster, namespace, agent)
    assert outcome(identity) == (200, "allowed")
    cluster.core.delete_namespaced_pod(agent["metadata"]["name"], namespace, grace_period_seconds=0)
    wait_for(lambda: outcome(identity)[0] in (401, 403), what="the ended pod refused")


def test_a_revocation_stops_the_next_call(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    identity = bearer(cluster, namespace, agent)
    body = json.dumps({"model": "small-1"}).encode()
    assert ext_authz.check("POST", "/v1/chat/completions", identity, body).allowed
    started = time.monotonic()  # the request written -> the first call refused
    ran = cluster.kubectl(
        "annotate",
        "acred",
        "llm",
        "-n",
        namespace,
        f'agentcred.dev/revoke={{"id": "r1", "pod": "{agent["metadata"]["name"]}", "reason": "test"}}',
    )
    assert ran.returncode == 0, ran.stderr
    wait_for(
        lambda: not ext_authz.check("POST", "/v1/chat/completions", identity, body).allowed,
        what="the revoked call refused",
    )
    print(f"revocation -> refused call: {time.monotonic() - started:.2f}s")
    refused = ext_authz.check("POST", "/v1/chat/completions", identity, body)
    assert refused.body["reason"] == "revoked"
    # The other credential of the pod is untouched.
    assert ext_authz.check("POST", "/mcp", identity, mcp_call("search_docs", collection="handbook")).allowed


def test_one_pods_flood_is_held_to_its_budget_and_another_tenant_is_not_slowed(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    other = cluster.create_namespace("gw-tenant")
    try:
        gateway_credentials(cluster, other)
        theirs = start_agent(cluster, other, name="theirs", credentials="docs,llm")
        flooding = bearer(cluster, namespace, agent)
        calm = bearer(cluster, other, theirs)
        body = json.dumps({"model": "small-1"}).encode()
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: ext_authz.check("POST", "/v1/chat/completions", flooding, body), range(600))
            )
        throttled = [a for a in answers if a.status == 429]
        assert throttled and all(
            a.headers.get("Retry-After") == "1" and a.body["reason"] == "budget" for a in throttled
        )
        assert ext_authz.check("POST", "/v1/chat/completions", calm, body).allowed
    finally:
        cluster.delete_namespace(other)


def test_trace_knows_a_token_handed_to_a_gateway(
    cluster: Cluster, operator: OperatorProcess, namespace: str, agent: dict, ext_authz: ExtAuthz
) -> None:
    """`agentcred trace` and the leak intake know what was handed to gateways: a minted token
    by its signature, a static key by its fingerprint; a reported static key is refused to
    every gateway until it is rotated upstream."""
    identity = bearer(cluster, namespace, agent)
    checked = ext_authz.check("POST", "/mcp", identity, mcp_call("search_docs", collection="handbook"))
    minted = trace(cluster, operator, checked.headers["Authorization"].split()[1])
    assert minted["verdict"] == "ours" and [(h["kind"], h["pod"]) for h in minted["holders"]] == [
        ("gateway", agent["metadata"]["name"])
    ]
    body = json.dumps({"model": "small-1"}).encode()
    assert ext_authz.check("POST", "/v1/chat/completions", identity, body).allowed
    static = trace(cluster, operator, STATIC_VALUE)
    ours = [(h["kind"], h["credential"], h["pod"]) for h in static["holders"] if h["namespace"] == namespace]
    assert static["verdict"] == "ours" and ours == [("gateway", "llm", agent["metadata"]["name"])]
    status, answers = leak_intake(cluster, operator, "/v1/leaks", STATIC_VALUE)
    assert status == 200 and answers[0]["outcome"] == "revoked" and answers[0]["next"] == ["compromised"], answers
    refused = ext_authz.check("POST", "/v1/chat/completions", identity, body)
    assert not refused.allowed and refused.body["reason"] == "compromised"


def leak_intake(cluster: Cluster, operator: OperatorProcess, path: str, value: str) -> tuple[int, Any]:
    from clusterkit import LEAK_REPORTER

    token = gateway_token(cluster, LEAK_REPORTER)
    request = urllib.request.Request(
        f"{operator.api_url}{path}",
        data=json.dumps([{"token": value}]).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def trace(cluster: Cluster, operator: OperatorProcess, value: str) -> dict[str, Any]:
    status, answers = leak_intake(cluster, operator, "/v1/trace", value)
    assert status == 200, answers
    return dict(answers[0])
