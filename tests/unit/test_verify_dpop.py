"""The public verifier (`agentcred.verify`) and `agentcred verify` with DPoP-bound tokens: a
bound token passes only with a proof by its key for the request it came with; proofs are made
by PyJWT (support.dpop)."""

from __future__ import annotations

import pytest

from agentcred.verify import Presented, TokenRejected, Verifier
from support.dpop import DPoPKey
from unit.test_verify_command import AUDIENCE, ISSUER, RING, _token, _verify

URL = "https://tools.agents.svc/mcp"
KEY = DPoPKey()


def _verifier() -> Verifier:
    return Verifier(jwks=RING.jwks(), issuer=ISSUER)


def _rejected(verifier: Verifier, token: str, presented: Presented | None) -> str:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token, AUDIENCE, namespace="agents", presented=presented)
    return caught.value.reason


def test_a_bound_token_passes_with_a_proof_by_its_key_for_its_request() -> None:
    token = _token(cnf={"jkt": KEY.jkt})
    verifier = _verifier()
    proof = KEY.proof("POST", URL, access_token=token)
    claims = verifier.verify(token, AUDIENCE, namespace="agents", presented=Presented("POST", URL, "DPoP", proof))
    assert claims["cnf"] == {"jkt": KEY.jkt}
    # Each proof once.
    assert _rejected(verifier, token, Presented("POST", URL, "DPoP", proof)) == "dpop-replayed"


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (lambda token: None, "dpop-missing"),
        (lambda token: Presented("POST", URL), "dpop-missing"),
        (
            lambda token: Presented("POST", URL, "Bearer", KEY.proof("POST", URL, access_token=token)),
            "dpop-wrong-scheme",
        ),
        (
            lambda token: Presented("POST", URL, "DPoP", DPoPKey().proof("POST", URL, access_token=token)),
            "dpop-key-mismatch",
        ),
        (lambda token: Presented("GET", URL, "DPoP", KEY.proof("POST", URL, access_token=token)), "dpop-wrong-method"),
        (
            lambda token: Presented("POST", URL + "2", "DPoP", KEY.proof("POST", URL, access_token=token)),
            "dpop-wrong-url",
        ),
        (
            lambda token: Presented("POST", URL, "DPoP", KEY.proof("POST", URL, access_token="another")),
            "dpop-wrong-token",
        ),
        (lambda token: Presented("POST", URL, "DPoP", KEY.proof("POST", URL, access_token=token, iat=1)), "dpop-stale"),
        (
            lambda token: Presented("POST", URL, "DPoP", KEY.proof("POST", URL, access_token=token, body=b"{}"), b"[]"),
            "dpop-body-mismatch",
        ),
    ],
)
def test_each_way_a_copied_token_is_refused(presented: object, reason: str) -> None:
    token = _token(cnf={"jkt": KEY.jkt})
    assert _rejected(_verifier(), token, presented(token)) == reason  # type: ignore[operator]


def test_a_bearer_token_needs_no_proof() -> None:
    token = _token()
    assert "cnf" not in _verifier().verify(token, AUDIENCE, namespace="agents")


def test_agentcred_verify_checks_the_proof(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    token = _token(cnf={"jkt": KEY.jkt})
    code, out, _ = _verify(token, tmp_path, monkeypatch, capsys, "--issuer", ISSUER)
    assert code == 1 and "refused (dpop-missing)" in out
    proof = KEY.proof("POST", URL, access_token=token)
    code, out, _ = _verify(
        token,
        tmp_path,
        monkeypatch,
        capsys,
        "--issuer",
        ISSUER,
        "--dpop-proof",
        proof,
        "--method",
        "POST",
        "--request-url",
        URL,
    )
    assert code == 0 and f"bound to DPoP key {KEY.jkt}" in out
    code, _, err = _verify(token, tmp_path, monkeypatch, capsys, "--issuer", ISSUER, "--dpop-proof", proof)
    assert code == 2 and "--method and --request-url" in err
