"""DPoP proofs (rules/dpop.py) and the replay cache (platform/replay.py): proofs are made by
PyJWT (tests/support/dpop.py), never by the code under test; hostile proofs never crash."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcred.platform.keys import b64url
from agentcred.platform.replay import ReplayCache
from agentcred.rules import dpop
from agentcred.rules.dpop import Covered, ProofRefused, check_proof, jkt, new_nonce, nonce_fresh, normalized_uri
from support.dpop import DPoPKey, thumbprint

URL = "https://agentcred.agentcred.svc:8443/oauth2/token"
KEY = DPoPKey()


def refused(proof: str, request: Covered, now: float | None = None, **options: object) -> ProofRefused:
    with pytest.raises(ProofRefused) as caught:
        check_proof(proof, request, time.time() if now is None else now, **options)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_a_proof_made_by_pyjwt_is_accepted_and_names_its_keys_rfc7638_thumbprint(alg: str) -> None:
    key = DPoPKey(alg)
    proof = check_proof(key.proof("POST", URL), Covered("POST", URL), time.time())
    assert proof.jkt == key.jkt == thumbprint(key.public_jwk)
    assert proof.htm == "POST" and proof.htu == URL


def test_the_thumbprint_is_rfc7638s_own_example() -> None:
    example = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
        "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n9"
        "1CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jkt(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_proof_covers_the_access_token_sent_with_it() -> None:
    proof = KEY.proof("GET", "https://tools.example/mcp", access_token="token-a")
    check_proof(proof, Covered("GET", "https://tools.example/mcp", access_token="token-a"), time.time())
    assert refused(proof, Covered("GET", "https://tools.example/mcp", access_token="token-b")).reason == (
        "dpop-wrong-token"
    )
    without = KEY.proof("GET", "https://tools.example/mcp")
    assert refused(without, Covered("GET", "https://tools.example/mcp", access_token="token-a")).reason == (
        "dpop-wrong-token"
    )


def test_a_proof_for_another_method_or_url_is_refused() -> None:
    proof = KEY.proof("POST", URL)
    assert refused(proof, Covered("GET", URL)).reason == "dpop-wrong-method"
    assert refused(proof, Covered("POST", URL.replace("token", "introspect"))).reason == "dpop-wrong-url"
    assert refused(proof, Covered("POST", URL.replace("8443", "9443"))).reason == "dpop-wrong-url"


def test_urls_compare_as_rfc9449_says() -> None:
    check_proof(
        KEY.proof("POST", "HTTPS://Tools.Example:443/mcp?x=1#f"),
        Covered("POST", "https://tools.example/mcp"),
        0 + time.time(),
    )
    assert normalized_uri("https://tools.example") == "https://tools.example/"
    assert normalized_uri("http://tools.example:80/a") == "http://tools.example/a"
    assert normalized_uri("ftp://tools.example/") is None
    assert normalized_uri("https://user@tools.example/") is None
    assert normalized_uri("https://[::1]:8443/x") == "https://[::1]:8443/x"


def test_the_iat_window() -> None:
    now = time.time()
    assert refused(KEY.proof("POST", URL, iat=int(now) - 61), Covered("POST", URL), now).reason == "dpop-stale"
    assert refused(KEY.proof("POST", URL, iat=int(now) + 30), Covered("POST", URL), now).reason == "dpop-stale"
    check_proof(KEY.proof("POST", URL, iat=int(now) - 50), Covered("POST", URL), now)
    check_proof(KEY.proof("POST", URL, iat=int(now) - 200), Covered("POST", URL), now, max_age=300)


def test_a_body_digest_when_the_proof_carries_one() -> None:
    proof = KEY.proof("POST", URL, body=b'{"method":"tools/call"}')
    check_proof(proof, Covered("POST", URL, body=b'{"method":"tools/call"}'), time.time())
    assert refused(proof, Covered("POST", URL, body=b'{"method":"tools/list"}')).reason == "dpop-body-mismatch"
    check_proof(proof, Covered("POST", URL), time.time())  # a gateway that sees no body cannot hold it to one


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"typ": "JWT"}, "dpop-invalid"),
        ({"typ": "at+jwt"}, "dpop-invalid"),
        ({"crit": ["exp"]}, "dpop-invalid"),
        ({"jwk": {"kty": "oct", "k": "c2VjcmV0"}}, "dpop-invalid"),
    ],
)
def test_headers_that_are_no_proofs_header(header: dict[str, object], reason: str) -> None:
    assert refused(KEY.proof("POST", URL, header=header), Covered("POST", URL)).reason == reason


def test_a_private_key_in_the_header_is_refused() -> None:
    from jwt.algorithms import ECAlgorithm

    private = json.loads(ECAlgorithm.to_jwk(KEY.private_key))
    assert "d" in private
    problem = refused(KEY.proof("POST", URL, header={"jwk": private}), Covered("POST", URL))
    assert problem.reason == "dpop-invalid" and "private" in problem.message


def test_a_proof_signed_by_another_key_than_its_jwk_is_refused() -> None:
    other = DPoPKey()
    forged = other.proof("POST", URL, header={"jwk": KEY.public_jwk})
    assert refused(forged, Covered("POST", URL)).reason == "dpop-bad-signature"


def _unsigned(header: dict[str, object], claims: dict[str, object], signature: str = "") -> str:
    part = lambda data: b64url(json.dumps(data).encode())  # noqa: E731
    return f"{part(header)}.{part(claims)}.{signature or b64url(b'x' * 64)}"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS1", "", None])
def test_symmetric_and_unknown_algorithms_are_refused_before_any_key_is_read(alg: object) -> None:
    proof = _unsigned(
        {"typ": "dpop+jwt", "alg": alg, "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
        {"jti": "1", "htm": "POST", "htu": URL, "iat": int(time.time())},
    )
    assert refused(proof, Covered("POST", URL)).reason == "dpop-unsupported-algorithm"


@pytest.mark.parametrize("missing", ["jti", "htm", "htu", "iat"])
def test_each_required_claim(missing: str) -> None:
    proof = KEY.proof("POST", URL, claims={missing: None})
    assert refused(proof, Covered("POST", URL)).reason == "dpop-invalid"


def test_more_than_one_proof_is_refused() -> None:
    proof = KEY.proof("POST", URL)
    assert refused(f"{proof}, {proof}", Covered("POST", URL)).reason == "dpop-invalid"


def test_server_nonces_are_judged_by_any_replica_holding_the_mac_key() -> None:
    import hashlib
    import hmac

    def mac(message: bytes) -> bytes:
        return hmac.new(b"k" * 32, message, hashlib.sha256).digest()

    now = time.time()
    nonce = new_nonce(mac, now)
    assert nonce_fresh(nonce, mac, now + 10)
    assert not nonce_fresh(nonce, mac, now + dpop.NONCE_LIFETIME + 1)
    assert not nonce_fresh(nonce, lambda m: hmac.new(b"j" * 32, m, hashlib.sha256).digest(), now)
    assert not nonce_fresh(None, mac, now) and not nonce_fresh("garbage", mac, now)
    proof = KEY.proof("POST", URL, nonce=nonce)
    check_proof(proof, Covered("POST", URL), now, nonce_ok=lambda n: nonce_fresh(n, mac, now))
    assert (
        refused(KEY.proof("POST", URL), Covered("POST", URL), now, nonce_ok=lambda n: nonce_fresh(n, mac, now)).reason
        == "dpop-nonce"
    )


def test_the_authorization_header() -> None:
    assert dpop.authorization("DPoP abc") == ("DPoP", "abc")
    assert dpop.authorization("bearer abc") == ("Bearer", "abc")
    assert dpop.authorization("Basic abc") is None and dpop.authorization("DPoP ") is None
    assert dpop.confirmation({"cnf": {"jkt": "x"}}) == "x"
    assert dpop.confirmation({"cnf": "x"}) is None and dpop.confirmation({}) is None


text = st.text(max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(proof=text)
def test_any_string_is_refused_with_a_reason_never_a_crash(proof: str) -> None:
    problem = refused(proof, Covered("POST", URL))
    assert problem.reason.startswith("dpop-")


@settings(max_examples=300, deadline=None)
@given(header=st.dictionaries(text, json_values, max_size=6), claims=json_values, signature=text)
def test_any_json_in_a_proof_is_refused_with_a_reason_never_a_crash(
    header: dict[str, object], claims: object, signature: str
) -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", **header}
    part = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()  # noqa: E731
    problem = refused(f"{part(header)}.{part(claims)}.{signature or 'x'}", Covered("POST", URL))
    assert problem.reason.startswith("dpop-") and len(problem.message) < 600


@settings(max_examples=100, deadline=None)
@given(jwk=st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "k"]), json_values, max_size=6))
def test_any_jwk_is_refused_or_read_never_a_crash(jwk: dict[str, object]) -> None:
    proof = KEY.proof("POST", URL, header={"jwk": jwk})
    try:
        check_proof(proof, Covered("POST", URL), time.time())
    except ProofRefused as problem:
        assert problem.reason.startswith("dpop-")


# -- the replay cache -----------------------------------------------------------------------


def test_an_identifier_is_fresh_once_and_forgotten_when_it_lapses() -> None:
    cache = ReplayCache(per_holder=4, total=8)
    assert cache.use("pod-a", "j1", until=100, now=0) == "fresh"
    assert cache.use("pod-a", "j1", until=100, now=50) == "replayed"
    assert cache.use("pod-b", "j1", until=100, now=50) == "fresh"  # another holder's own
    assert cache.use("pod-a", "j1", until=200, now=100) == "fresh"  # lapsed: a proof that old is stale anyway
    assert len(cache) == 1  # pod-b's lapsed too


def test_full_is_a_refusal_for_that_holder_only_never_an_eviction() -> None:
    cache = ReplayCache(per_holder=3, total=5)
    for i in range(3):
        assert cache.use("pod-a", f"j{i}", until=100, now=0) == "fresh"
    assert cache.use("pod-a", "j3", until=100, now=0) == "full"
    assert cache.use("pod-a", "j0", until=100, now=0) == "replayed"  # still remembered
    assert cache.use("pod-b", "j0", until=100, now=0) == "fresh"
    assert cache.use("pod-c", "j0", until=100, now=0) == "fresh"
    assert cache.use("pod-d", "j0", until=100, now=0) == "full"  # total reached
    assert cache.use("pod-d", "j0", until=200, now=100) == "fresh"  # room again once entries lapse


@settings(max_examples=100, deadline=None)
@given(
    uses=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.text(max_size=3), st.integers(0, 50), st.integers(1, 30)),
        max_size=200,
    )
)
def test_the_cache_stays_within_its_bounds_and_never_accepts_a_live_replay(
    uses: list[tuple[str, str, int, int]],
) -> None:
    cache = ReplayCache(per_holder=5, total=9)
    accepted: dict[tuple[str, str], float] = {}
    now = 0.0
    for holder, identifier, step, life in uses:
        now += step
        seen = cache.use(holder, identifier, now + life, now)
        live = accepted.get((holder, identifier), -1.0) > now
        if live:
            assert seen == "replayed"
        if seen == "fresh":
            accepted[(holder, identifier)] = now + life
        assert len(cache) <= 9
        assert all(len(mine) <= 5 for mine in cache._seen.values())


def test_one_group_fills_its_share_never_the_others_room() -> None:
    """Workload assertions: a tenant's pods together fill their namespace's share, and another
    namespace's pod is still served; entries lapsing give the share back."""
    cache = ReplayCache(per_holder=2, total=10, per_group=4)
    for pod in ("a1", "a2"):
        for jti in ("j1", "j2"):
            assert cache.use(pod, jti, until=100, now=0, group="tenant-a") == "fresh"
    assert cache.use("a3", "j1", until=100, now=0, group="tenant-a") == "full"  # a new pod: the share is used
    assert cache.use("a1", "j1", until=100, now=0, group="tenant-a") == "replayed"  # never forgotten early
    assert cache.use("b1", "j1", until=100, now=0, group="tenant-b") == "fresh"
    assert cache.use("a3", "j1", until=200, now=100, group="tenant-a") == "fresh"  # lapsed: room again
    assert len(cache) == 1 and cache._groups == {"tenant-a": 1}
