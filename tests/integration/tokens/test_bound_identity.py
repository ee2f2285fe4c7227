"""A copied identity token is useless without the pod's own key, on the real control plane
and operator.

The agent's pod holds a DPoP-bound credential (its value and `dpop.jwk` written into its
Secret), a bearer credential and a gateway-only one. An attacker who copied the pod's identity
token -- a TokenRequest token bound to the pod, audience `agentcred`, exactly what the kubelet
projects into it -- presents it at the token endpoint with no proof, with a proof by a fresh
key, with a proof by another pod's key (a pod of the same tenant with its own `dpop.jwk`), and
with the pod's own proof replayed; for the bearer credential too; and at a gateway. Every one is
refused with its reason and audited by the token's fingerprint only; the pod's own key, with a
fresh proof, is accepted, and what it gets is judged by PyJWT against the published keys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from agentcred.api import labels
from agentcred.api.labels import StateNames
from agentcred.api.pods import pod_task
from agentcred.platform.keys import KeyRing
from agentcred.platform.kube import Kube, load_configuration
from agentcred.rules.seal import Bookkeeping
from agentcred.runtime.store import ProjectionStore
from agentcred.runtime.tokens.pod_keys import PodKeys
from agents import (
    audit_lines,
    claims_of,
    create_credential,
    dpop_key_of,
    read_secret,
    secret_name_of,
    service_account,
    start_agent,
    value_of,
)
from clusterkit import OPERATOR_NAMESPACE, Cluster, OperatorProcess, wait_for
from gateways import ExtAuthz, forward_auth, gateway_token, mcp_call
from oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER,
    JWT_TYPE,
    TOKEN_EXCHANGE,
    bound_token,
    independently_verified,
    token_request,
)
from support.dpop import DPoPKey, thumbprint

BOUND_AUDIENCE = "https://llm-gateway.internal"
PLAIN_AUDIENCE = "https://search.internal"
SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}
HOST = "tools.agents.svc"
MCP_URL = f"https://{HOST}/mcp"


def _credentials(cluster: Cluster, namespace: str) -> None:
    service_account(cluster, namespace)
    create_credential(
        cluster, namespace, scope=SCOPE, source={"jwt": {"audiences": [BOUND_AUDIENCE], "dpop": "required"}}
    )
    create_credential(
        cluster,
        namespace,
        name="search",
        scope=SCOPE,
        source={"jwt": {"audiences": [PLAIN_AUDIENCE]}},
        projection={"mountPath": "/var/run/agentcred/search"},
    )
    create_credential(
        cluster,
        namespace,
        name="docs",
        category="tool",
        source={"jwt": {"audiences": [f"https://docs.{namespace}.svc"]}},
        scope=SCOPE,
        projection={"delivery": "gateway"},
        gateway={
            "routes": [{"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook", "headerAgreement": True}}]
        },
    )


class Pod:
    def __init__(self, cluster: Cluster, namespace: str, name: str, credentials: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.body = start_agent(cluster, namespace, name, credentials)
        self.uid = self.body["metadata"]["uid"]

    def identity(self) -> str:
        """A copy of the pod's projected identity token (bound to the pod, audience agentcred)."""
        return bound_token(self.cluster, self.namespace, self.body)

    def key(self) -> DPoPKey:
        return DPoPKey.from_private_jwk(dpop_key_of(self.cluster, self.body))


@pytest.fixture
def pods(cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str) -> dict[str, Pod]:
    _credentials(cluster, namespace)
    return {
        "agent": Pod(cluster, namespace, "agent", "research-llm,search,docs"),
        "other": Pod(cluster, namespace, "other-agent", "research-llm"),
        "unbound": Pod(cluster, namespace, "unbound-agent", "search"),
    }


def _exchange(operator: OperatorProcess, token: str, audience: str, proof: str | None) -> tuple[int, dict[str, Any]]:
    fields = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": JWT_TYPE,
        "resource": audience,
    }
    status, answer, _ = token_request(operator, fields, **({"DPoP": proof} if proof is not None else {}))
    return status, answer


def _denied(operator: OperatorProcess, pod: Pod, reason: str) -> dict[str, Any]:
    lines = [line for line in audit_lines(operator, "deny", podUID=pod.uid) if line.get("dpop") == reason]
    assert lines, f"no deny line with dpop={reason} for the pod"
    return lines[-1]


def test_a_copied_identity_token_needs_the_pods_own_key_at_the_token_endpoint(
    operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    agent, other = pods["agent"], pods["other"]
    token_url = f"{operator.api_url}/oauth2/token"
    own, others = agent.key(), other.key()
    assert own.jkt != others.jkt
    stolen = agent.identity()
    fingerprints = set()
    attempts = {
        "dpop-missing": None,  # (a) no proof
        "dpop-not-pod-key": DPoPKey().proof("POST", token_url),  # (b) a fresh key
    }
    for reason, proof in attempts.items():
        status, answer = _exchange(operator, stolen, BOUND_AUDIENCE, proof)
        assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
        assert "pod's own key" in answer["error_description"]
        fingerprints.add(_denied(operator, agent, reason)["fingerprint"])
    # (c) another pod of the same tenant, with its own dpop.jwk: its key is not this pod's.
    status, answer = _exchange(operator, stolen, BOUND_AUDIENCE, others.proof("POST", token_url))
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    assert others.jkt in answer["error_description"]
    fingerprints.add(_denied(operator, agent, "dpop-not-pod-key")["fingerprint"])
    # The bearer credential of the same pod: the identity token is bound all the same.
    status, answer = _exchange(operator, stolen, PLAIN_AUDIENCE, None)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    # Another grant presenting it (jwt-bearer), with a fresh key: refused too.
    fields = {"grant_type": JWT_BEARER, "assertion": stolen, "resource": BOUND_AUDIENCE}
    status, answer, _ = token_request(operator, fields, DPoP=DPoPKey().proof("POST", token_url))
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    # The pod's own key, a fresh proof: accepted, and bound to that key as PyJWT reads it.
    proof = own.proof("POST", token_url)
    status, answer = _exchange(operator, stolen, BOUND_AUDIENCE, proof)
    assert status == 200 and answer["token_type"] == "DPoP", {k: v for k, v in answer.items() if k != "access_token"}
    claims = independently_verified(operator, answer["access_token"], BOUND_AUDIENCE)
    assert claims["cnf"] == {"jkt": thumbprint(own.public_jwk)}
    assert claims["agentcred"]["podUID"] == agent.uid
    # (d) that very proof, replayed (as an access log would keep the request): refused.
    status, answer = _exchange(operator, stolen, BOUND_AUDIENCE, proof)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    assert "used before" in answer["error_description"]
    # The bearer credential, with the pod's own key: accepted (bound to it).
    status, answer = _exchange(operator, stolen, PLAIN_AUDIENCE, own.proof("POST", token_url))
    assert status == 200 and answer["token_type"] == "DPoP"
    assert independently_verified(operator, answer["access_token"], PLAIN_AUDIENCE)["cnf"]["jkt"] == own.jkt
    # Audited by one fingerprint, never the token.
    assert len(fingerprints) == 1 and next(iter(fingerprints)).startswith("hmac-sha256:")
    assert stolen not in operator.audit_text()


def test_a_copied_identity_token_as_client_assertion_or_actor_needs_the_pods_own_key(
    operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    """The other places an identity token is presented: as a client_credentials client
    assertion, and as the actor token beside another pod's own subject token (the attacker's
    pod, which holds no bound value: its own identity needs no proof). And the victim's own
    proof, captured from its request (an access log): it was remembered for the victim as
    subject only, so under the attacker's subject it was fresh again and vouched for the copied
    identity token as actor, and for the victim's bound agentcred token too -- found attacking
    the actor token; the actor pod now spends it as well."""
    agent, attacker = pods["agent"], pods["unbound"]
    token_url = f"{operator.api_url}/oauth2/token"
    stolen, own = agent.identity(), agent.key()
    fields: dict[str, Any] = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": stolen,
        "resource": PLAIN_AUDIENCE,
    }
    for proof in (None, DPoPKey().proof("POST", token_url)):
        status, answer, _ = token_request(operator, fields, **({"DPoP": proof} if proof else {}))
        assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
        assert answer["error_description"].startswith("client_assertion:"), answer

    def act(actor: str, actor_type: str, proof: str | None) -> tuple[int, dict[str, Any]]:
        fields = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": attacker.identity(),
            "subject_token_type": JWT_TYPE,
            "actor_token": actor,
            "actor_token_type": actor_type,
            "resource": PLAIN_AUDIENCE,
        }
        status, answer, _ = token_request(operator, fields, **({"DPoP": proof} if proof else {}))
        return status, answer

    for proof in (None, DPoPKey().proof("POST", token_url), pods["other"].key().proof("POST", token_url)):
        status, answer = act(stolen, JWT_TYPE, proof)
        assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
        assert answer["error_description"].startswith("actor_token:"), answer
    for case in ("identity token", "bound agentcred token"):
        # The victim's own request, as an access log keeps it: the proof it was asked with, and what it got.
        captured = own.proof("POST", token_url)
        status, answer = _exchange(operator, stolen, BOUND_AUDIENCE, captured)
        assert status == 200, answer
        actor, actor_type = (
            (stolen, JWT_TYPE) if case == "identity token" else (answer["access_token"], ACCESS_TOKEN_TYPE)
        )
        status, answer = act(actor, actor_type, captured)
        assert (status, answer.get("error")) == (400, "invalid_dpop_proof"), (
            case,
            {k: v for k, v in answer.items() if k != "access_token"},
        )
        assert answer["error_description"].startswith("actor_token:") and "used before" in answer["error_description"]
    # The victim pod itself, with a fresh proof by its key, may act for the other pod.
    status, answer = act(stolen, JWT_TYPE, own.proof("POST", token_url))
    assert status == 200, answer
    claims = independently_verified(operator, answer["access_token"], PLAIN_AUDIENCE)
    assert claims["act"]["agentcred"]["podUID"] == agent.uid and claims["cnf"]["jkt"] == own.jkt
    assert stolen not in operator.audit_text()


def test_a_copied_workload_assertion_cannot_be_burnt_before_the_pod_uses_it(
    cluster: Cluster, operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    """A workload identity assertion (the pod's token addressed to the token endpoint) is good
    for one token. Found attacking it: a copy presented without the pod's key was refused, but
    only after its jti had been remembered as used, so the pod's own request with it was refused
    as a replay until the kubelet rotated the token -- a copy of the file bought a denial of
    service. The jti is now spent only once the pod's own key has spoken."""
    agent = pods["agent"]
    token_url = f"{operator.api_url}/oauth2/token"
    assertion = bound_token(cluster, agent.namespace, agent.body, audience=token_url)
    fields = {"grant_type": JWT_BEARER, "assertion": assertion, "resource": BOUND_AUDIENCE}
    for proof in (None, DPoPKey().proof("POST", token_url), pods["other"].key().proof("POST", token_url)):
        status, answer, _ = token_request(operator, fields, **({"DPoP": proof} if proof else {}))
        assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    status, answer, _ = token_request(operator, fields, DPoP=agent.key().proof("POST", token_url))
    assert status == 200 and answer["token_type"] == "DPoP", answer
    assert independently_verified(operator, answer["access_token"], BOUND_AUDIENCE)["cnf"]["jkt"] == agent.key().jkt
    # Single-use all the same: the pod's own second use is a replay.
    status, answer, _ = token_request(operator, fields, DPoP=agent.key().proof("POST", token_url))
    assert (status, answer["error"]) == (400, "invalid_grant") and "used before" in answer["error_description"]


def test_a_pod_holding_no_bound_value_keeps_a_bearer_identity(operator: OperatorProcess, pods: dict[str, Pod]) -> None:
    status, answer = _exchange(operator, pods["unbound"].identity(), PLAIN_AUDIENCE, None)
    assert status == 200 and answer["token_type"] == "Bearer", answer.get("error_description")
    assert "cnf" not in independently_verified(operator, answer["access_token"], PLAIN_AUDIENCE)


def test_a_copied_identity_token_needs_the_pods_own_key_at_the_gateway(
    cluster: Cluster, operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    agent, other = pods["agent"], pods["other"]
    own, stolen = agent.key(), agent.identity()
    body = mcp_call("search_docs", collection="handbook", query="rotate")
    ext_authz = ExtAuthz(operator, gateway_token(cluster))
    try:

        def call(proof: str | None, scheme: str = "DPoP") -> Any:
            headers = {"authorization": f"{scheme} {stolen}", "content-type": "application/json"}
            if proof is not None:
                headers["dpop"] = proof
            return ext_authz.check("POST", "/mcp", headers, body, host=HOST)

        attempts = {
            "dpop-missing": call(None, "Bearer"),
            "dpop-not-pod-key": call(DPoPKey().proof("POST", MCP_URL, access_token=stolen)),
            "dpop-wrong-scheme": call(own.proof("POST", MCP_URL, access_token=stolen), "Bearer"),
        }
        attempts["another pod's key"] = call(other.key().proof("POST", MCP_URL, access_token=stolen))
        own_proof = own.proof("POST", MCP_URL, access_token=stolen, body=body)
        allowed = call(own_proof)
        attempts["dpop-replayed"] = call(own_proof)
    finally:
        ext_authz.close()
    assert allowed.allowed, allowed.body
    for case, refused in attempts.items():
        reason = "dpop-not-pod-key" if case == "another pod's key" else case
        assert not refused.allowed and refused.status == 401, (case, refused.body)
        assert refused.body["reason"] == reason, (case, refused.body)
        assert refused.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    line = audit_lines(operator, "gateway", decision="deny", reason="dpop-not-pod-key", podUID=agent.uid)[-1]
    assert line["presentedFingerprint"].startswith("hmac-sha256:")
    assert stolen not in operator.audit_text()


def _forward_auth(operator: OperatorProcess, gateway: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return forward_auth(operator, gateway, HOST, headers)


def test_the_pods_own_proofs_for_other_calls_do_not_carry_a_copied_identity_token_through_either_contract(
    cluster: Cluster, operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    """Proofs by the pod's own key, as an access log keeps them, for another call than this one:
    another URL, another method, the pod's bound value rather than its identity token (a proof
    covers the token it was sent with). Refused at Envoy's gRPC ext_authz and at HTTP
    forward-auth alike, whatever the scheme's casing; the pod's own fresh proof passes both."""
    agent = pods["agent"]
    own, stolen = agent.key(), agent.identity()
    secret = read_secret(cluster, agent.namespace, secret_name_of(agent.body))
    assert secret is not None
    bound_value = (value_of(secret, "research-llm") or b"").decode()

    def other_calls() -> dict[str, str]:
        return {
            "dpop-wrong-url": own.proof("POST", f"https://{HOST}/admin", access_token=stolen),
            "dpop-wrong-method": own.proof("GET", MCP_URL, access_token=stolen),
            "dpop-wrong-token": own.proof("POST", MCP_URL, access_token=bound_value),
        }

    gateway = gateway_token(cluster)
    for reason, proof in other_calls().items():
        status, answer = _forward_auth(operator, gateway, {"Authorization": f"dpop {stolen}", "DPoP": proof})
        assert (status, answer.get("reason")) == (401, reason), answer
    status, answer = _forward_auth(operator, gateway, {"Authorization": f"DPOP {stolen}"})
    assert (status, answer.get("reason")) == (401, "dpop-missing"), answer
    fresh = own.proof("POST", MCP_URL, access_token=stolen)
    assert _forward_auth(operator, gateway, {"Authorization": f"dpop {stolen}", "DPoP": fresh})[0] == 200
    body = mcp_call("search_docs", collection="handbook", query="rotate")
    ext_authz = ExtAuthz(operator, gateway)
    try:

        def call(proof: str) -> Any:
            headers = {"authorization": f"DPoP {stolen}", "content-type": "application/json", "dpop": proof}
            return ext_authz.check("POST", "/mcp", headers, body, host=HOST)

        for reason, proof in other_calls().items():
            refused = call(proof)
            assert not refused.allowed and refused.body["reason"] == reason, refused.body
        allowed = call(own.proof("POST", MCP_URL, access_token=stolen, body=body))
        assert allowed.allowed, allowed.body
    finally:
        ext_authz.close()
    assert stolen not in operator.audit_text() and bound_value not in operator.audit_text()


def test_a_follower_reads_the_pods_keys_from_the_secrets_sealed_metadata(
    cluster: Cluster, operator: OperatorProcess, pods: dict[str, Pod]
) -> None:
    """A replica that does not lead holds no bookkeeping: it asks the API server for the pod's
    Secret's metadata (never its values) and checks the seal with the shared key ring."""
    agent = pods["agent"]
    task = pod_task(agent.body)
    assert task is not None
    secret = read_secret(cluster, OPERATOR_NAMESPACE, StateNames().keyring)
    assert secret is not None
    ring = KeyRing.from_secret_data(secret["data"])

    async def read() -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        kube = Kube(load_configuration(str(cluster.kubeconfig)))
        try:
            keys = PodKeys(
                ProjectionStore(), kube.find_secret_metadata, Bookkeeping(lambda: ring).verify, lambda: False
            )
            found = await kube.find_secret_metadata(task.namespace, labels.secret_name(task.binding))
            return found, await keys.of(task, dt.datetime.now(dt.timezone.utc))
        finally:
            await kube.close()

    metadata, keys = asyncio.run(read())
    assert metadata is not None and metadata["kind"] == "PartialObjectMetadata" and "data" not in metadata
    assert keys == (agent.key().jkt,)


def test_after_a_renewal_the_replaced_key_counts_until_its_value_expires(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str
) -> None:
    """A renewal writes a new value and a new key; the kubelet may put them into the container
    a volume refresh later, so the replaced key is still the pod's until the value it bound
    expires -- and not a moment after."""
    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        scope=SCOPE,
        source={"jwt": {"audiences": [BOUND_AUDIENCE], "dpop": "required"}},
        ttl="20s",
        renewBefore="10s",
        maxLifetime="1h",
    )
    agent = Pod(cluster, namespace, "agent", "research-llm")
    token_url = f"{operator.api_url}/oauth2/token"
    old = agent.key()
    secret = read_secret(cluster, namespace, secret_name_of(agent.body))
    assert secret is not None
    old_expiry = claims_of(value_of(secret, "research-llm") or b"")["exp"]

    def renewed() -> DPoPKey | None:
        key = agent.key()
        return key if key.jkt != old.jkt else None

    new = wait_for(renewed, timeout=30, what="a renewed key")
    for key in (old, new):
        status, answer = _exchange(operator, agent.identity(), BOUND_AUDIENCE, key.proof("POST", token_url))
        assert status == 200, (time.time() < old_expiry, answer.get("error_description"))
        assert independently_verified(operator, answer["access_token"], BOUND_AUDIENCE)["cnf"]["jkt"] == key.jkt
    assert time.time() < old_expiry, "the old key was tried only after its value expired: the test proved nothing"
    wait_for(lambda: time.time() > old_expiry + 1, timeout=30, what="the replaced value's expiry")
    status, answer = _exchange(operator, agent.identity(), BOUND_AUDIENCE, old.proof("POST", token_url))
    assert (status, answer["error"]) == (400, "invalid_dpop_proof"), answer
    assert _denied(operator, agent, "dpop-not-pod-key")
