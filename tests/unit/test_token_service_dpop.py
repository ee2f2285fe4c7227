"""Sender-constrained tokens at the token endpoint (RFC 9449) and single-use workload identity
assertions (MCP's jwt-bearer profile), without a cluster. Proofs are made with PyJWT
(support.dpop); every bound token is judged by PyJWT against the published keys."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from agentcred.api.pods import PodTask
from agentcred.api.projection import IssuedValue, new_projection
from agentcred.api.times import utcnow
from agentcred.platform.proofs import ProofChecker
from agentcred.rules import dpop
from agentcred.rules.oauth import (
    ACCESS_TOKEN_TYPE,
    FORM_CONTENT_TYPE,
    JWT_TOKEN_TYPE,
    OAuthError,
    authorization_server_metadata,
)
from agentcred.runtime.store import ProjectionStore
from agentcred.runtime.tokens.pod_keys import PodKeys
from support.dpop import DPoPKey, bound_to
from unit.test_token_service import GATEWAY, ISSUER, NARROW, Service, bearer, client_credentials, exchange, record, task

TOKEN_URL = f"{ISSUER}/oauth2/token"


def ask(service: Service, fields: dict[str, str], proof: str | None) -> dict[str, Any]:
    body = urlencode(fields, doseq=True).encode()
    return asyncio.run(service.tokens.token(FORM_CONTENT_TYPE, body, None, "10.0.0.7", proof))


def refused(service: Service, fields: dict[str, str], proof: str | None) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        ask(service, fields, proof)
    return caught.value


def last_line(service: Service) -> dict[str, Any]:
    return service.audit_lines()[-1]


def required(service: Service, pods: tuple[PodTask, ...] = ()) -> DPoPKey:
    """The credential requires DPoP; the pod's key (its `dpop.jwk`), as its bookkeeping records
    it (and each of `pods` its own)."""
    service.view.records["research-llm"] = record(source={"jwt": {"audiences": [GATEWAY], "dpop": "required"}})
    store = ProjectionStore()
    keys = []
    for pod in (task(), *pods):
        key = DPoPKey()
        now = utcnow()
        value = IssuedValue("research-llm", "llm", now, now + dt.timedelta(hours=1), now, "hmac-sha256:x", jkt=key.jkt)
        store.put(dataclasses.replace(new_projection(pod), values={"research-llm": value}))
        service.view.pods[pod.key] = pod
        keys.append(key)
    service.tokens.pod_keys = PodKeys(store, _no_secret, lambda message, seal: False, leading=lambda: True)
    return keys[0]


async def _no_secret(namespace: str, name: str) -> None:
    raise AssertionError("the leader reads a pod's keys from its own memory")


@pytest.mark.parametrize("grant", [exchange, bearer, client_credentials])
def test_a_proof_binds_the_token_to_its_key_as_pyjwt_reads_it(tmp_path: Path, grant: Any) -> None:
    service = Service(tmp_path)
    key = DPoPKey()
    answer = ask(service, grant(service.pod_token(), resource=GATEWAY, scope=NARROW), key.proof("POST", TOKEN_URL))
    assert answer["token_type"] == "DPoP"
    claims = bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)
    line = last_line(service)
    assert line["action"] == "exchange" and line["jkt"] == key.jkt and line["tokenId"] == claims["jti"]


def test_without_a_proof_a_bearer_token_as_before(tmp_path: Path) -> None:
    service = Service(tmp_path)
    answer = ask(service, exchange(service.pod_token(), resource=GATEWAY), None)
    assert answer["token_type"] == "Bearer"
    assert "cnf" not in service.verified(answer["access_token"], GATEWAY)


def test_a_credential_that_requires_dpop_refuses_bearer_requests(tmp_path: Path) -> None:
    service = Service(tmp_path)
    key = required(service)
    token = service.pod_token()
    problem = refused(service, exchange(token, resource=GATEWAY), None)
    assert (problem.error, problem.status) == ("invalid_dpop_proof", 400)
    assert "proof signed by the pod's own key" in problem.description
    line = last_line(service)
    assert (line["action"], line["reason"], line["dpop"]) == ("deny", "invalid_dpop_proof", "dpop-missing")
    assert line["fingerprint"].startswith("hmac-sha256:") and token not in service.audit_path.read_text()
    answer = ask(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))
    bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)
    assert last_line(service)["identityBoundBy"] == ["research-llm"]


@pytest.mark.parametrize("grant", [exchange, bearer, client_credentials])
def test_a_bound_pods_identity_token_needs_the_pods_own_key(tmp_path: Path, grant: Any) -> None:
    """Every grant that presents the identity token of a pod holding a DPoP-bound value."""
    service = Service(tmp_path)
    key = required(service)
    problem = refused(service, grant(service.pod_token(), resource=GATEWAY), DPoPKey().proof("POST", TOKEN_URL))
    assert problem.error == "invalid_dpop_proof" and "not by the pod's own key" in problem.description
    assert last_line(service)["dpop"] == "dpop-not-pod-key"
    answer = ask(service, grant(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))
    bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)


def test_a_bound_pod_with_no_key_on_record_is_refused(tmp_path: Path) -> None:
    service = Service(tmp_path)
    required(service)
    service.tokens.pod_keys = None
    problem = refused(service, exchange(service.pod_token(), resource=GATEWAY), DPoPKey().proof("POST", TOKEN_URL))
    assert problem.error == "invalid_dpop_proof" and last_line(service)["dpop"] == "dpop-no-pod-key"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key: key.proof("POST", TOKEN_URL.replace("token", "introspect")), "dpop-wrong-url"),
        (lambda key: key.proof("GET", TOKEN_URL), "dpop-wrong-method"),
        (lambda key: key.proof("POST", TOKEN_URL, iat=int(time.time()) - 600), "dpop-stale"),
        (lambda key: DPoPKey().proof("POST", TOKEN_URL, header={"jwk": key.public_jwk}), "dpop-bad-signature"),
        (
            lambda key: jwt.encode(
                {"jti": "j", "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())},
                b"a shared secret of thirty-two by",
                algorithm="HS256",
                headers={"typ": "dpop+jwt", "jwk": key.public_jwk},
            ),
            "dpop-unsupported-algorithm",
        ),
    ],
)
def test_a_bad_proof_is_invalid_dpop_proof_and_audited(tmp_path: Path, make: Any, reason: str) -> None:
    service = Service(tmp_path)
    proof = make(DPoPKey())
    problem = refused(service, exchange(service.pod_token(), resource=GATEWAY), proof)
    assert problem.error == "invalid_dpop_proof"
    assert last_line(service)["dpop"] == reason


def test_a_replayed_proof_is_refused(tmp_path: Path) -> None:
    service = Service(tmp_path)
    proof = DPoPKey().proof("POST", TOKEN_URL)
    ask(service, exchange(service.pod_token(), resource=GATEWAY), proof)
    problem = refused(service, exchange(service.pod_token(), resource=GATEWAY), proof)
    assert problem.error == "invalid_dpop_proof" and "used before" in problem.description
    assert last_line(service)["dpop"] == "dpop-replayed"


def test_exchanging_a_bound_token_keeps_its_binding_and_needs_its_key(tmp_path: Path) -> None:
    service = Service(tmp_path)
    key = DPoPKey()
    first = ask(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))["access_token"]
    narrowed = exchange(first, ACCESS_TOKEN_TYPE, scope=NARROW)
    # Stolen: without a proof, or with a proof by another key, it buys nothing.
    problem = refused(service, narrowed, None)
    assert problem.error == "invalid_dpop_proof" and "DPoP-bound" in problem.description
    line = last_line(service)
    assert line["dpop"] == "dpop-missing" and line["fingerprint"].startswith("hmac-sha256:")
    assert refused(service, narrowed, DPoPKey().proof("POST", TOKEN_URL)).error == "invalid_dpop_proof"
    assert last_line(service)["dpop"] == "dpop-key-mismatch"
    # With its key: a narrower token, bound to the same key.
    answer = ask(service, narrowed, key.proof("POST", TOKEN_URL))
    assert answer["token_type"] == "DPoP" and answer["scope"] == NARROW
    bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)


def test_a_bound_actor_token_needs_the_proofs_key(tmp_path: Path) -> None:
    service = Service(tmp_path)
    key = DPoPKey()
    actor = ask(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))["access_token"]
    fields = exchange(service.pod_token(), resource=GATEWAY, actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE)
    assert refused(service, fields, DPoPKey().proof("POST", TOKEN_URL)).error == "invalid_dpop_proof"
    answer = ask(service, fields, key.proof("POST", TOKEN_URL))
    assert bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)["act"]["sub"]


def test_a_bound_pods_identity_token_acts_only_with_its_own_key(tmp_path: Path) -> None:
    """As `actor_token`, another bound pod's identity token needs that pod's key: the request's
    one proof, by the subject pod's key, does not prove it."""
    service = Service(tmp_path)
    helper = task(name="helper", uid="helper-uid", binding="fedcba9876543210")
    key = required(service, (helper,))
    fields = exchange(
        service.pod_token(), resource=GATEWAY, actor_token=service.pod_token(helper), actor_token_type=JWT_TOKEN_TYPE
    )
    problem = refused(service, fields, key.proof("POST", TOKEN_URL))
    assert problem.error == "invalid_dpop_proof" and problem.description.startswith("actor_token:")
    assert last_line(service)["dpop"] == "dpop-not-pod-key"
    alone = exchange(
        service.pod_token(), resource=GATEWAY, actor_token=service.pod_token(), actor_token_type=JWT_TOKEN_TYPE
    )
    answer = ask(service, alone, key.proof("POST", TOKEN_URL))  # the pod acting for itself: its own key
    assert bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)["act"]["sub"]


def test_server_nonces_when_asked_for(tmp_path: Path) -> None:
    service = Service(tmp_path)
    service.tokens.proofs = ProofChecker(lambda: service.ring, require_nonce=True)
    key = DPoPKey()
    problem = refused(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))
    assert problem.error == "use_dpop_nonce" and problem.status == 400
    nonce = problem.headers["DPoP-Nonce"]
    answer = ask(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL, nonce=nonce))
    bound_to(answer["access_token"], key, service.ring.jwks(), GATEWAY, ISSUER)
    assert service.tokens.nonce_header()["DPoP-Nonce"]


def test_metadata_advertises_the_proof_algorithms() -> None:
    metadata = authorization_server_metadata(ISSUER, ("EdDSA",), dpop.ALGORITHMS)
    assert metadata["dpop_signing_alg_values_supported"] == list(dpop.ALGORITHMS)
    assert "none" not in metadata["dpop_signing_alg_values_supported"]
    assert not any(alg.startswith("HS") for alg in metadata["dpop_signing_alg_values_supported"])


def test_introspection_shows_the_binding(tmp_path: Path) -> None:
    service = Service(tmp_path)
    key = DPoPKey()
    token = ask(service, exchange(service.pod_token(), resource=GATEWAY), key.proof("POST", TOKEN_URL))["access_token"]
    service.tokens.introspectors = frozenset({"agentcred/introspector"})
    caller = service.api.service_account_token("agentcred", "introspector")
    body = urlencode({"token": token}).encode()
    answer = asyncio.run(service.tokens.introspect(FORM_CONTENT_TYPE, body, f"Bearer {caller}"))
    assert answer["active"] is True and answer["token_type"] == "DPoP" and answer["cnf"] == {"jkt": key.jkt}


# -- workload identity federation ----------------------------------------------------------


def test_an_assertion_addressed_to_the_token_endpoint_is_good_for_one_token(tmp_path: Path) -> None:
    service = Service(tmp_path)
    service.tokens.reviews._review = lambda token: service.api.review_token(token, ["agentcred", ISSUER, TOKEN_URL])
    assertion = service.pod_token(audience=TOKEN_URL)
    first = ask(service, bearer(assertion, resource=GATEWAY), None)
    service.verified(first["access_token"], GATEWAY)
    problem = refused(service, bearer(assertion, resource=GATEWAY), None)
    assert problem.error == "invalid_grant" and "used before" in problem.description
    assert last_line(service)["action"] == "deny"
    # The same pod's `agentcred` token, RFC 7523 §2.2 and token exchange: as before, reusable.
    reusable = service.pod_token()
    for _ in range(2):
        ask(service, bearer(reusable, resource=GATEWAY), None)
        ask(service, client_credentials(reusable, resource=GATEWAY), None)
    # And the issuer as audience (what MCP SDKs address): single-use too.
    issuer_assertion = service.pod_token(audience=ISSUER)
    ask(service, bearer(issuer_assertion, resource=GATEWAY), None)
    assert refused(service, bearer(issuer_assertion, resource=GATEWAY), None).error == "invalid_grant"
