"""Property-based: hostile and malformed input gets a clear refusal, never a crash."""

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agentcred.api import labels
from agentcred.api.model import AgentCredentialSpec
from agentcred.platform.keys import KeyRing, b64url, encode_jwt
from agentcred.rules.admission import Refusal, admit
from agentcred.rules.credentials import credential_record
from agentcred.runtime.tokens.callers import NotAuthenticated, reviewed_identity
from agentcred.sources.base import SourceUnavailable
from agentcred.sources.minting_service import _parse_reply
from agentcred.verify import TokenRejected, Verifier
from samples import credential, spec

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
nasty_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "'; DROP TABLE x; --",
            "$(rm -rf /)",
            "../../etc/passwd",
            "\u202egnp.exe",
            "a\x00b",
            "{{7*7}}",
            "<script>alert(1)</script>",
            "ﬁ" * 40,
            "🔑" * 30,
            "%00",
            "\r\nX-Injected: 1",
        ]
    ),
)


@given(st.dictionaries(st.sampled_from(list(spec().keys()) + ["extra"]), json_values, max_size=8))
def test_spec_validation_accepts_or_explains(raw: dict) -> None:
    try:
        AgentCredentialSpec.model_validate({**spec(), **raw})
    except ValidationError as error:
        assert error.errors()


@given(json_values)
def test_token_review_answers_of_any_shape(status) -> None:
    try:
        who = reviewed_identity(status if isinstance(status, dict) else {"authenticated": status})
    except (NotAuthenticated, AttributeError, TypeError) as error:
        assert isinstance(error, NotAuthenticated), f"{type(error).__name__} escaped"
    else:
        assert who.namespace and who.service_account


RING = KeyRing.generate(dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc))
VERIFIER = Verifier(jwks=RING.jwks(), issuer="https://issuer")


@given(nasty_text)
def test_verifier_refuses_garbage(token: str) -> None:
    try:
        VERIFIER.verify(token, audience="a", namespace=None)
    except TokenRejected as rejected:
        assert rejected.reason


@given(json_values, json_values)
def test_verifier_refuses_forged_headers_and_payloads(header, payload) -> None:
    forged = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{b64url(b'sig')}"
    try:
        VERIFIER.verify(forged, audience="a", namespace=None)
    except TokenRejected as rejected:
        assert rejected.reason in (
            "malformed",
            "wrong-type",
            "unsupported-algorithm",
            "unknown-kid",
            "algorithm-mismatch",
            "bad-signature",
            "unsupported-critical-header",
        )


GOOD_CLAIMS = {
    "iss": "https://issuer",
    "aud": "a",
    "exp": 2**40,
    "nbf": 0,
    "iat": 0,
    "jti": "j",
    "agentcred": {"podUID": "p", "credential": "c", "namespace": "ns"},
}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"kid": ["a", "b"]}, "unknown-kid"),
        ({"kid": {"k": 1}}, "unknown-kid"),
        ({"alg": ["EdDSA"]}, "unsupported-algorithm"),
        ({"crit": ["exp"], "exp": 1}, "unsupported-critical-header"),
    ],
)
def test_odd_headers_are_refused_with_a_reason(extra: dict, reason: str) -> None:
    good = encode_jwt(GOOD_CLAIMS, RING.current("EdDSA"))
    header, payload, signature = good.split(".")
    fields = {**json.loads(__import__("base64").urlsafe_b64decode(header + "==")), **extra}
    with pytest.raises(TokenRejected) as rejected:
        VERIFIER.verify(f"{b64url(json.dumps(fields).encode())}.{payload}.{signature}", audience="a", namespace=None)
    assert rejected.value.reason == reason


def test_algorithm_confusion_is_refused_before_any_key_is_used() -> None:
    good = encode_jwt(GOOD_CLAIMS, RING.current("EdDSA"))
    header, payload, signature = good.split(".")
    kid = json.loads(__import__("base64").urlsafe_b64decode(header + "=="))["kid"]
    for alg in ("none", "HS256", "RS256", "ES512", None):
        forged_header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "at+jwt"}).encode())
        for forged_signature in ("", signature):
            try:
                VERIFIER.verify(f"{forged_header}.{payload}.{forged_signature}", audience="a", namespace=None)
                raise AssertionError(f"alg {alg} accepted")
            except TokenRejected as rejected:
                assert rejected.reason in ("unsupported-algorithm", "algorithm-mismatch", "malformed")
    assert VERIFIER.verify(good, audience="a", namespace=None)["jti"] == "j"


record = credential_record(
    {
        **credential(namespace="ns"),
        "metadata": {"name": "research-llm", "namespace": "ns", "creationTimestamp": "2026-11-01T00:00:00Z"},
    }
)


@given(
    st.dictionaries(st.sampled_from(["metadata", "spec", "status", "kind"]), json_values, max_size=4),
    st.one_of(st.none(), nasty_text, st.just("research-llm")),
)
def test_admission_of_malformed_pods(pod: dict, annotation) -> None:
    if annotation is not None:
        pod = {**pod, "metadata": {"annotations": {labels.CREDENTIALS_ANNOTATION: annotation}}}
    try:
        admit(pod, "ns", {"research-llm": record}.get, RING)
    except Refusal as refusal:
        assert str(refusal)
    except (AttributeError, TypeError) as error:
        raise AssertionError(f"malformed pod crashed admission: {type(error).__name__}") from error


@pytest.mark.parametrize("reply", ["[" * 100_000, '{"value": ' + "[" * 100_000, "<html>", '{"value": ""}'])
def test_a_minting_service_reply_of_any_shape_is_a_malformed_reply(reply: str) -> None:
    """A hostile minting service cannot crash the operator's call (nested too deep included)."""
    record = credential_record(credential(source={"webhook": {"url": "https://m.example"}}))
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(SourceUnavailable) as refused:
        _parse_reply(record, "https://m.example", reply, now + dt.timedelta(minutes=5), now)
    assert refused.value.reason == "MintingServiceMalformedReply"
