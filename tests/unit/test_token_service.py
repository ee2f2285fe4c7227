"""The token service (runtime/tokens/token_service.py) without a cluster: the three grants it
accepts, each answered with an access token that PyJWT -- not our verifier -- accepts against
the published keys, and each refusal it makes, with the RFC's error, a description naming
what is wrong, and a `deny` audit line. TokenReviews are answered by `InMemoryApi`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from agentcred.api import labels
from agentcred.api.pods import PodTask
from agentcred.api.times import utcnow
from agentcred.platform.keys import KeyRing
from agentcred.platform.revocations import RevocationList
from agentcred.rules.credentials import CredentialRecord, credential_record
from agentcred.rules.oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_ASSERTION_TYPE,
    CLIENT_CREDENTIALS,
    FORM_CONTENT_TYPE,
    JWT_BEARER,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    TOOL_DETAILS_TYPE,
    OAuthError,
)
from agentcred.rules.scope import EXCHANGE_MAX_TTL
from agentcred.rules.verdicts import Verdict
from agentcred.runtime.audit import AuditTrail
from agentcred.runtime.projection.bindings import BindingOwners
from agentcred.runtime.store import ProjectionStore
from agentcred.runtime.tokens.callers import RateLimiter, ReviewGate
from agentcred.runtime.tokens.token_service import TokenService
from agentcred.sources.claims import Grant, token_claims
from agentcred.sources.jwt import JwtSource
from samples import credential
from support.fakes import InMemoryApi
from support.views import FixedView

NS = "agents"
ISSUER = "https://agentcred.test"
GATEWAY = "https://llm-gateway.internal"  # the sample credential's audience
SUBJECT = f"system:serviceaccount:{NS}:research-agent"
ADDRESS = "10.0.0.7"
NARROW = "tool:web-search action:read resource:repo:acme/app"
RING = KeyRing.generate(utcnow())  # once for the module: an RSA key takes a while


def record(**overrides: Any) -> CredentialRecord:
    body = credential(namespace=NS, **overrides)
    body["metadata"].update(uid="cred-uid", creationTimestamp="2026-11-01T00:00:00Z", generation=1)
    return credential_record(body)


def task(**changes: Any) -> PodTask:
    base = PodTask(
        NS,
        "agent",
        "pod-uid",
        "research-agent",
        "0123456789abcdef",
        ("research-llm",),
        "job-1",
        "Running",
        deleted=False,
        gated=False,
        admitted_at=utcnow() - dt.timedelta(minutes=1),
        created_at=utcnow() - dt.timedelta(minutes=1),
    )
    return dataclasses.replace(base, **changes)


class Service:
    """The token service as app.operator.build_parts wires it, around the in-memory API."""

    def __init__(self, tmp_path: Path, *, pod_burst: int = 100, source_burst: int = 100) -> None:
        self.api = InMemoryApi()
        self.ring = RING
        self.view = FixedView(records={"research-llm": record()}, pods={task().key: task()})
        self.bindings = BindingOwners(ProjectionStore())
        self.revocations = RevocationList()
        self.audit_path = tmp_path / "audit.log"
        audiences = [labels.SERVICE_ACCOUNT_AUDIENCE, ISSUER]
        self.tokens = TokenService(
            reviews=ReviewGate(lambda token: self.api.review_token(token, audiences)),
            view=self.view,
            owns_binding=self.bindings.owns,
            revocations=self.revocations,
            minted=JwtSource(lambda: self.ring, ISSUER),
            keyring=lambda: self.ring,
            issuer=ISSUER,
            audit=AuditTrail(str(self.audit_path)),
            # Refilling one token in a thousand seconds: no test waits for a refill.
            limiter=RateLimiter(rate=0.001, burst=pod_burst),
            by_source=RateLimiter(rate=0.001, burst=source_burst),
        )

    def pod_token(self, pod: PodTask | None = None, audience: str = labels.SERVICE_ACCOUNT_AUDIENCE) -> str:
        """The pod's projected ServiceAccount token."""
        pod = pod or task()
        return self.api.service_account_token(pod.namespace, pod.service_account, pod.name, pod.uid, audience)

    def ask(self, fields: dict[str, str], source: str = ADDRESS) -> dict[str, Any]:
        body = urlencode(fields, doseq=True).encode()
        return asyncio.run(self.tokens.token(FORM_CONTENT_TYPE, body, None, source))

    def refused(self, fields: dict[str, str], source: str = ADDRESS) -> OAuthError:
        with pytest.raises(OAuthError) as caught:
            self.ask(fields, source)
        return caught.value

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def verified(self, token: str, audience: str) -> dict[str, Any]:
        """The token's claims, as PyJWT checks them against our published JWKS."""
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt"  # RFC 9068
        (published,) = [key for key in self.ring.jwks()["keys"] if key["kid"] == header["kid"]]
        return jwt.decode(
            token,
            key=jwt.PyJWK(published),
            algorithms=[published["alg"]],
            audience=audience,
            issuer=ISSUER,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]},
        )


def exchange(subject_token: str, subject_token_type: str = JWT_TOKEN_TYPE, **more: str) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": subject_token_type,
        **more,
    }


def bearer(assertion: str, **more: str) -> dict[str, str]:
    return {"grant_type": JWT_BEARER, "assertion": assertion, **more}


def client_credentials(assertion: str, **more: str) -> dict[str, str]:
    return {
        "grant_type": CLIENT_CREDENTIALS,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        **more,
    }


GRANTS = {"token exchange": exchange, "jwt bearer": bearer, "client credentials": client_credentials}
# The error each grant's RFC gives when the presented identity does not authenticate ...
UNAUTHENTICATED = {
    "token exchange": ("invalid_request", 400),  # RFC 8693 §2.2.2
    "jwt bearer": ("invalid_grant", 400),  # RFC 7523 §3.1
    "client credentials": ("invalid_client", 401),  # RFC 6749 §5.2
}
# ... and when it does, but the pod may not have a token.
UNACCEPTABLE = {
    "token exchange": ("invalid_request", 400),
    "jwt bearer": ("invalid_grant", 400),
    "client credentials": ("unauthorized_client", 400),
}


# -- what it issues ----------------------------------------------------------------------


def test_a_token_exchange_gives_a_narrowed_token_that_pyjwt_accepts(tmp_path: Path) -> None:
    service = Service(tmp_path)
    answer = service.ask(exchange(service.pod_token(), resource=GATEWAY, scope=NARROW))
    assert answer["token_type"] == "Bearer" and answer["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert answer["scope"] == NARROW
    claims = service.verified(answer["access_token"], GATEWAY)
    assert (claims["sub"], claims["client_id"], claims["aud"]) == (SUBJECT, SUBJECT, GATEWAY)
    assert claims["scope"] == NARROW
    # Never longer than an exchange may live, though the credential's ttl is 15m.
    assert claims["exp"] - claims["iat"] == EXCHANGE_MAX_TTL.total_seconds() and answer["expires_in"] <= 300
    assert claims["agentcred"] == {
        "credential": "research-llm",
        "namespace": NS,
        "category": "model",
        "pod": "agent",
        "podUID": "pod-uid",
        "job": "job-1",
        "grant": TOKEN_EXCHANGE,
    }
    # The pod was asked about once, for the audiences pods and RFC 7523 clients present.
    assert service.api.reviews == [[labels.SERVICE_ACCOUNT_AUDIENCE, ISSUER]]
    (line,) = service.audit_lines()
    assert (line["action"], line["tokenId"], line["podUID"], line["credential"]) == (
        "exchange",
        claims["jti"],
        "pod-uid",
        "research-llm",
    )
    assert line["intents"] == [{"tool": "web-search", "action": "read", "resource": "repo:acme/app"}]
    assert answer["access_token"] not in service.audit_path.read_text()


def test_a_jwt_bearer_assertion_gives_a_token_for_the_whole_credential(tmp_path: Path) -> None:
    service = Service(tmp_path)
    answer = service.ask(bearer(service.pod_token()))
    assert "issued_token_type" not in answer and "scope" not in answer
    claims = service.verified(answer["access_token"], GATEWAY)
    assert claims["sub"] == SUBJECT and claims["agentcred"]["grant"] == JWT_BEARER
    # Not narrowed: the credential's own scope patterns, for verifiers to evaluate.
    assert claims["agentcred"]["scope"] == {"tools": ["web-search"], "resources": ["repo:acme/*"], "actions": ["read"]}
    (line,) = service.audit_lines()
    assert line["action"] == "exchange" and line["grant"] == JWT_BEARER and line["tokenId"] == claims["jti"]


def test_client_credentials_with_a_jwt_bearer_assertion_addressed_to_the_issuer(tmp_path: Path) -> None:
    """RFC 7523 §2.2: the pod's token is its client assertion; RFC 7523bis clients address it
    to the issuer itself, and the pod's client_id is its ServiceAccount."""
    service = Service(tmp_path)
    assertion = service.pod_token(audience=ISSUER)
    answer = service.ask(client_credentials(assertion, client_id=SUBJECT, scope=NARROW))
    claims = service.verified(answer["access_token"], GATEWAY)
    assert claims["client_id"] == SUBJECT and claims["agentcred"]["grant"] == CLIENT_CREDENTIALS
    assert claims["scope"] == NARROW
    other = service.refused(client_credentials(assertion, client_id=f"system:serviceaccount:{NS}:someone-else"))
    assert (other.error, other.status) == ("invalid_client", 401)
    assert f"the pod's client_id is its ServiceAccount {SUBJECT}" in other.description


def test_an_agentcred_token_is_exchanged_only_for_less(tmp_path: Path) -> None:
    """A subject token agentcred issued: the new token is derived from it (revoking it revokes
    the new one), never outlives it, and cannot ask for more than it had."""
    service = Service(tmp_path)
    first = service.ask(exchange(service.pod_token(), resource=GATEWAY, scope=NARROW))["access_token"]
    parent = service.verified(first, GATEWAY)
    child = service.verified(service.ask(exchange(first, ACCESS_TOKEN_TYPE))["access_token"], GATEWAY)
    assert child["agentcred"]["derivedFrom"] == [parent["jti"]] and child["jti"] != parent["jti"]
    assert child["exp"] <= parent["exp"] and child["scope"] == NARROW
    wider = service.refused(
        exchange(first, ACCESS_TOKEN_TYPE, scope="tool:web-search action:read resource:repo:acme/other")
    )
    assert wider.error == "invalid_scope"
    assert "resource 'repo:acme/other' is outside the subject token's grant" in wider.description
    assert [line["action"] for line in service.audit_lines()] == ["exchange", "exchange", "deny"]


def test_a_token_exchanged_from_one_about_to_expire_expires_with_it(tmp_path: Path) -> None:
    service = Service(tmp_path)
    now = utcnow()
    claims = token_claims(
        issuer=ISSUER,
        record=record(),
        task=task(),
        issued_at=now,
        expires_at=now + dt.timedelta(seconds=60),
        token_id="parent-jti",
        grant=Grant((GATEWAY,), scope_strings=tuple(NARROW.split()), grant_type=JWT_BEARER),
    )
    parent = service.tokens.minted.sign(record(), claims)
    answer = service.ask(exchange(parent, ACCESS_TOKEN_TYPE))
    child = service.verified(answer["access_token"], GATEWAY)
    assert child["exp"] == claims["exp"] and answer["expires_in"] <= 60
    assert child["agentcred"]["derivedFrom"] == ["parent-jti"]


# -- who is refused ----------------------------------------------------------------------


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("a token the API server does not accept", "the API server did not accept the token: invalid bearer token"),
        ("a token for another audience", "the API server did not accept the token: token audiences are invalid"),
        ("a ServiceAccount token bound to no pod", "is not bound to a pod: send the pod's projected ServiceAccount"),
    ],
)
def test_a_subject_that_does_not_authenticate_is_refused(tmp_path: Path, grant: str, case: str, phrase: str) -> None:
    service = Service(tmp_path)
    token = {
        "a token the API server does not accept": "garbage",
        "a token for another audience": service.pod_token(audience="https://kubernetes.default.svc"),
        "a ServiceAccount token bound to no pod": service.api.service_account_token(NS, "research-agent"),
    }[case]
    refusal = service.refused(GRANTS[grant](token))
    assert (refusal.error, refusal.status) == UNAUTHENTICATED[grant]
    assert phrase in refusal.description
    (line,) = service.audit_lines()
    assert (line["action"], line["reason"], line["message"]) == ("deny", refusal.error, refusal.description)
    assert "podUID" not in line and token not in service.audit_path.read_text()


def ended(service: Service) -> None:
    service.view.pods = {task().key: task(phase="Succeeded")}


def deleted(service: Service) -> None:
    service.view.pods = {task().key: task(deleted=True)}


def unknown(service: Service) -> None:
    service.view.pods = {}


def renamed_uid(service: Service) -> None:
    service.view.pods = {task().key: task(uid="another-pod-uid")}  # a new pod under the old name


def gated(service: Service) -> None:
    service.view.pods = {task().key: task(gated=True)}


def a_copy(service: Service) -> None:
    """The pod carries a binding an earlier pod made (a copy of its sealed admission)."""
    earlier = task(name="original", uid="original-uid", created_at=utcnow() - dt.timedelta(hours=1))
    service.bindings.note(earlier)


def revoked(service: Service) -> None:
    service.revocations.revoke("pod-uid", "research-llm", utcnow() + dt.timedelta(hours=1))


def not_a_subject(service: Service) -> None:
    service.view.records["research-llm"] = record(subjects={"serviceAccounts": ["other-agent"]})


def not_ready(service: Service) -> None:
    blocked = Verdict(False, "NoPolicy", "no AgentCredentialPolicy allows it")
    service.view.records["research-llm"] = dataclasses.replace(record(), blocked=blocked)


def past_max_lifetime(service: Service) -> None:
    service.view.pods = {task().key: task(admitted_at=utcnow() - dt.timedelta(hours=9))}


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize(
    ("situation", "phrase"),
    [
        (ended, "pod agent has ended (task-succeeded)"),
        (deleted, "pod agent has ended (pod-deleted)"),
        (unknown, "pod agent in agents was not admitted by agentcred"),
        (renamed_uid, "pod agent in agents was not admitted by agentcred"),
        (gated, "pod agent has not been given its credentials yet"),
        (a_copy, "pod agent carries the admission of another pod (binding 0123456789abcdef)"),
        (revoked, "research-llm was revoked for pod agent"),
        (not_a_subject, "ServiceAccount research-agent is no longer a subject of research-llm"),
        (not_ready, "AgentCredential research-llm is not Ready"),
        (past_max_lifetime, "pod agent reached maxLifetime 8h of research-llm"),
    ],
)
def test_an_authenticated_pod_that_may_not_have_a_token_is_refused(
    tmp_path: Path, grant: str, situation: Any, phrase: str
) -> None:
    service = Service(tmp_path)
    served = service.ask(GRANTS[grant](service.pod_token()))  # before: served
    assert service.verified(served["access_token"], GATEWAY)["sub"] == SUBJECT
    situation(service)
    refusal = service.refused(GRANTS[grant](service.pod_token()))
    assert (refusal.error, refusal.status) == UNACCEPTABLE[grant]
    assert phrase in refusal.description
    allowed, denied = service.audit_lines()
    assert allowed["action"] == "exchange"
    assert (denied["action"], denied["reason"], denied["message"]) == ("deny", refusal.error, refusal.description)
    assert (denied["podName"], denied["podUID"], denied["serviceAccount"]) == ("agent", "pod-uid", "research-agent")


@pytest.mark.parametrize(
    ("fields", "error", "phrase"),
    [
        (
            {"scope": "tool:shell action:read resource:repo:acme/app"},
            "invalid_scope",
            "tool 'shell' is not in the credential's scope",
        ),
        (
            {"scope": "tool:web-search action:write resource:repo:acme/app"},
            "invalid_scope",
            "action 'write' is not in the credential's scope",
        ),
        (
            {"scope": "tool:web-search action:read resource:repo:other/app"},
            "invalid_scope",
            "resource 'repo:other/app' is not in the credential's scope",
        ),
        (
            {
                "authorization_details": json.dumps(
                    [{"type": TOOL_DETAILS_TYPE, "tool": "shell", "actions": ["read"], "identifier": "repo:acme/app"}]
                )
            },
            "invalid_authorization_details",
            "tool 'shell' is not in the credential's scope",
        ),
    ],
)
def test_intents_outside_the_credentials_scope_are_refused(
    tmp_path: Path, fields: dict[str, str], error: str, phrase: str
) -> None:
    service = Service(tmp_path)
    refusal = service.refused(exchange(service.pod_token(), **fields))
    assert (refusal.error, refusal.status) == (error, 400)
    assert phrase in refusal.description
    (line,) = service.audit_lines()
    assert (line["action"], line["reason"], line["credential"], line["podUID"]) == (
        "deny",
        error,
        "research-llm",
        "pod-uid",
    )


def test_a_pod_that_asks_too_fast_is_slowed_down_and_other_pods_are_not(tmp_path: Path) -> None:
    service = Service(tmp_path, pod_burst=2)
    other = task(name="other", uid="other-uid", binding="fedcba9876543210")
    service.view.pods[other.key] = other
    for _ in range(2):
        service.ask(bearer(service.pod_token()))
    slowed = service.refused(bearer(service.pod_token()))
    assert (slowed.error, slowed.status, slowed.retry_after) == ("temporarily_unavailable", 429, 1)
    assert "pod agent asks too fast" in slowed.description
    served = service.ask(bearer(service.pod_token(other)))
    assert service.verified(served["access_token"], GATEWAY)["agentcred"]["pod"] == "other"
    actions = [(line["action"], line.get("podUID")) for line in service.audit_lines()]
    assert actions == [("exchange", "pod-uid"), ("exchange", "pod-uid"), ("deny", "pod-uid"), ("exchange", "other-uid")]


def test_an_address_sending_refused_tokens_is_cut_off_before_any_token_review(tmp_path: Path) -> None:
    service = Service(tmp_path, source_burst=3)
    for attempt in range(3):
        assert service.refused(exchange(f"garbage-{attempt}"), source="10.9.9.9").error == "invalid_request"
    assert len(service.api.reviews) == 3
    cut_off = service.refused(exchange("garbage-3"), source="10.9.9.9")
    assert (cut_off.error, cut_off.status) == ("temporarily_unavailable", 429)
    assert len(service.api.reviews) == 3  # no TokenReview was spent on it
    # Valid tokens cost an address nothing: another address is served as ever.
    assert service.ask(exchange(service.pod_token()), source=ADDRESS)["token_type"] == "Bearer"
