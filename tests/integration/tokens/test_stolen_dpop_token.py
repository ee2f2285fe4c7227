"""A stolen DPoP-bound token is useless, on the real control plane and operator.

The agent's credential requires DPoP: its projected value is bound to a key written beside it
(`dpop.jwk`). The pod exchanges the value for narrower tokens and calls a tool through a
gateway (Envoy ext_authz over gRPC, and HTTP forward-auth), each request with a fresh proof
made by PyJWT from that key file. Then copies of its tokens -- the projected file, an exchanged
token as a log line would show it, a request as a gateway's access log would keep it -- are
replayed from another process, from another admitted pod with its own key, with a proof by
another key, with the pod's own proof replayed, with a proof for another URL or another body,
and as a plain bearer token. Each is refused with its reason, and the refusal is audited with
the token's fingerprint (or id), never the token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agents import audit_lines, create_credential, read_secret, secret_name_of, service_account, start_agent
from clusterkit import Cluster, OperatorProcess
from gateways import ExtAuthz, forward_auth, gateway_token, mcp_call
from oauth import ACCESS_TOKEN_TYPE, exchange, independently_verified, metadata, token_request
from support.dpop import DPoPKey, thumbprint

AUDIENCE = "https://llm-gateway.internal"
SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}
NARROW = "tool:search_docs action:call resource:docs:handbook"
HOST = "tools.agents.svc"
MCP_URL = f"https://{HOST}/mcp"


def docs_audience(namespace: str) -> str:
    return f"https://docs.{namespace}.svc"


def _credentials(cluster: Cluster, namespace: str) -> None:
    """research-llm: written into the pod, every value DPoP-bound; docs: gateway-only, for the MCP server."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE, source={"jwt": {"audiences": [AUDIENCE], "dpop": "required"}})
    create_credential(
        cluster,
        namespace,
        name="docs",
        category="tool",
        source={"jwt": {"audiences": [docs_audience(namespace)]}},
        scope=SCOPE,
        projection={"delivery": "gateway"},
        gateway={
            "routes": [{"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook", "headerAgreement": True}}]
        },
    )


class Pod:
    """What the agent's pod holds: the projected value and the key beside it (as the kubelet writes them)."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.body = start_agent(cluster, namespace, name, "research-llm,docs")
        secret = read_secret(cluster, namespace, secret_name_of(self.body))
        assert secret is not None
        import base64

        self.value = base64.b64decode(secret["data"]["research-llm.token"]).decode()
        self.key = DPoPKey.from_private_jwk(json.loads(base64.b64decode(secret["data"]["research-llm.dpop.jwk"])))


@pytest.fixture
def pods(cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str) -> tuple[Pod, Pod]:
    _credentials(cluster, namespace)
    return Pod(cluster, namespace, "agent"), Pod(cluster, namespace, "other-agent")


@pytest.fixture
def ext_authz(cluster: Cluster, operator: OperatorProcess) -> Iterator[ExtAuthz]:
    client = ExtAuthz(operator, gateway_token(cluster))
    yield client
    client.close()


def _forward_auth(
    operator: OperatorProcess, gateway: str, token: str, proof: str | None, scheme: str = "DPoP"
) -> tuple[int, dict[str, Any]]:
    return forward_auth(
        operator, gateway, HOST, {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
    )


def _issued(operator: OperatorProcess, pod: Pod) -> dict[str, Any]:
    """The audit line of the pod's projected value: its fingerprint, never the value."""
    meta = pod.body["metadata"]
    lines = audit_lines(operator, "issue", credential="research-llm", podName=meta["name"], namespace=meta["namespace"])
    assert lines, "no issue line for the pod's value"
    return lines[-1]


def _refusal(operator: OperatorProcess, reason: str) -> dict[str, Any]:
    lines = [line for line in operator.audit() if line.get("dpop") == reason or line.get("reason") == reason]
    assert lines, f"no audit line for {reason}"
    line = lines[-1]
    assert line["action"] in ("deny", "gateway") and line.get("decision", "deny") == "deny"
    return line


def test_the_projected_value_is_bound_to_the_key_beside_it(operator: OperatorProcess, pods: tuple[Pod, Pod]) -> None:
    agent, _ = pods
    claims = independently_verified(operator, agent.value, AUDIENCE)
    assert claims["cnf"] == {"jkt": thumbprint(agent.key.public_jwk)}
    assert "ES256" in metadata(operator)["dpop_signing_alg_values_supported"]
    assert _issued(operator, agent)["fingerprint"].startswith("hmac-sha256:")
    assert agent.value not in operator.audit_text()


def test_a_stolen_token_buys_nothing_at_the_token_endpoint(
    cluster: Cluster, operator: OperatorProcess, pods: tuple[Pod, Pod]
) -> None:
    agent, other = pods
    token_url = f"{operator.api_url}/oauth2/token"
    fields = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": agent.value,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "scope": NARROW,
    }
    # The pod itself: a narrower token, still bound to its key.
    status, answer, _ = token_request(operator, fields, DPoP=agent.key.proof("POST", token_url))
    assert status == 200 and answer["token_type"] == "DPoP", answer
    narrowed = answer["access_token"]
    assert independently_verified(operator, narrowed, AUDIENCE)["cnf"] == {"jkt": agent.key.jkt}
    # The file copied out of the pod, replayed from another process with no proof.
    status, answer = exchange(operator, agent.value, ACCESS_TOKEN_TYPE, scope=NARROW)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    line = _refusal(operator, "dpop-missing")
    issued = _issued(operator, agent)
    assert line["fingerprint"] == issued["fingerprint"]
    # From another admitted pod, with that pod's own key; with a proof by a fresh key.
    for key in (other.key, DPoPKey()):
        status, answer, _ = token_request(operator, fields, DPoP=key.proof("POST", token_url))
        assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
        assert _refusal(operator, "dpop-key-mismatch")["fingerprint"] == issued["fingerprint"]
    # The pod's own proof, replayed with the stolen token.
    proof = agent.key.proof("POST", token_url)
    assert token_request(operator, fields, DPoP=proof)[0] == 200
    status, answer, _ = token_request(operator, fields, DPoP=proof)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof")
    _refusal(operator, "dpop-replayed")
    # A proof by the right key, made for another URL.
    status, answer, _ = token_request(operator, fields, DPoP=agent.key.proof("POST", f"{operator.api_url}/other"))
    assert (status, answer["error"]) == (400, "invalid_dpop_proof")
    _refusal(operator, "dpop-wrong-url")
    # An exchanged token as a log line would show it: as useless.
    status, answer = exchange(operator, narrowed, ACCESS_TOKEN_TYPE)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof")
    assert agent.value not in operator.audit_text() and narrowed not in operator.audit_text()


def test_a_stolen_token_is_refused_at_the_gateway(
    cluster: Cluster, operator: OperatorProcess, pods: tuple[Pod, Pod], ext_authz: ExtAuthz
) -> None:
    agent, other = pods
    body = mcp_call("search_docs", collection="handbook", query="rotate")

    def call(token: str, proof: str | None, scheme: str = "DPoP", payload: bytes = body) -> Any:
        headers = {"authorization": f"{scheme} {token}", "content-type": "application/json"}
        if proof is not None:
            headers["dpop"] = proof
        return ext_authz.check("POST", "/mcp", headers, payload, host=HOST)

    # The pod: its bound value with a proof for this call (method, URL, token, body) is allowed.
    own = agent.key.proof("POST", MCP_URL, access_token=agent.value, body=body)
    allowed = call(agent.value, own)
    assert allowed.allowed, allowed.body
    assert "dpop" in allowed.removed  # the agent's proof goes no further than the gateway
    issued = _issued(operator, agent)
    attempts = {
        "dpop-missing": call(agent.value, None),
        "dpop-wrong-scheme": call(agent.value, agent.key.proof("POST", MCP_URL, access_token=agent.value), "Bearer"),
        "dpop-key-mismatch": call(agent.value, other.key.proof("POST", MCP_URL, access_token=agent.value)),
        "dpop-replayed": call(agent.value, own),  # the request as an access log keeps it, replayed
        "dpop-wrong-url": call(
            agent.value, agent.key.proof("POST", "https://evil.example/mcp", access_token=agent.value)
        ),
        "dpop-body-mismatch": call(
            agent.value,
            agent.key.proof("POST", MCP_URL, access_token=agent.value, body=body),
            payload=mcp_call("search_docs", collection="secrets", query="keys"),
        ),
        "dpop-wrong-token": call(agent.value, agent.key.proof("POST", MCP_URL, access_token=other.value)),
    }
    for reason, refused in attempts.items():
        assert not refused.allowed and refused.status == 401, (reason, refused.body)
        assert refused.body["reason"] == reason, refused.body
        assert refused.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
        line = next(
            line
            for line in reversed(audit_lines(operator, "gateway", decision="deny", reason=reason))
            if line.get("podUID") == agent.body["metadata"]["uid"]
        )
        assert line["presentedFingerprint"] == issued["fingerprint"] and line["jkt"] == agent.key.jkt
    # Forward-auth (no body): the same token, the same refusals.
    gateway = gateway_token(cluster)
    assert (
        _forward_auth(operator, gateway, agent.value, agent.key.proof("POST", MCP_URL, access_token=agent.value))[0]
        == 200
    )
    status, answer = _forward_auth(operator, gateway, agent.value, None)
    assert (status, answer["reason"]) == (401, "dpop-missing")
    status, answer = _forward_auth(
        operator, gateway, agent.value, DPoPKey().proof("POST", MCP_URL, access_token=agent.value)
    )
    assert (status, answer["reason"]) == (401, "dpop-key-mismatch")
    assert agent.value not in operator.audit_text()


def test_workload_identity_assertions_are_single_use(
    cluster: Cluster, operator: OperatorProcess, pods: tuple[Pod, Pod]
) -> None:
    """MCP's workload identity federation: the pod's kubelet-rotated token addressed to the
    token endpoint, as a jwt-bearer assertion; good for one token, a replay refused."""
    from oauth import JWT_BEARER, bound_token

    agent, _ = pods
    token_url = f"{operator.api_url}/oauth2/token"
    assertion = bound_token(cluster, agent.body["metadata"]["namespace"], agent.body, audience=token_url)
    fields = {"grant_type": JWT_BEARER, "assertion": assertion, "resource": AUDIENCE}
    status, answer, _ = token_request(operator, fields, DPoP=agent.key.proof("POST", token_url))
    assert status == 200 and answer["token_type"] == "DPoP", answer
    independently_verified(operator, answer["access_token"], AUDIENCE)
    status, answer, _ = token_request(operator, fields, DPoP=agent.key.proof("POST", token_url))
    assert (status, answer["error"]) == (400, "invalid_grant") and "used before" in answer["error_description"]
