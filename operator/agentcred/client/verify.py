"""Verify agentcred tokens: the implementation behind the public `agentcred.verify`.

Checks, in order, each with its own refusal reason: structure, type (`at+jwt`, RFC 9068 --
no other kind of JWT passes for an access token), algorithm (EdDSA, ES256 or RS256; `none`
and HMAC are refused before any key is touched), `kid`, signature, issuer, audience, time
window, revocation, sender constraint, and -- if an intent is given -- scope (the intents a
narrowed token grants, else its credential's scope patterns).

A token bound to a key (`cnf.jkt`, RFC 9449) is accepted only with the request it came with
(`Presented`): sent with the `DPoP` scheme, and a proof signed by that key covering the
method, URL, the token itself (`ath`) and -- when the proof carries `content_digest` and the
body is given -- the body, used once (`dpop-missing`, `dpop-wrong-scheme`, `dpop-key-mismatch`,
`dpop-replayed`, `dpop-stale`, `dpop-wrong-url`, `dpop-wrong-method`, `dpop-wrong-token`,
`dpop-body-mismatch`, `dpop-bad-signature`, `dpop-invalid`, ...).

    verifier = Verifier.from_url("https://agentcred.agentcred.svc:8443", cafile="ca.crt")
    claims = verifier.verify(token, audience="https://llm-gateway.internal", namespace="agents",
                             intent=Intent("web-search", "read", "repo:acme/app"))
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..platform.keys import ACCESS_TOKEN_TYPE, ALGORITHMS, b64url_decode
from ..platform.proofs import ProofChecker
from ..platform.revocations import EXPIRY_SKEW, RevocationList, parse_document, served_key
from ..rules.dpop import TOKEN_TYPE as DPOP_SCHEME
from ..rules.dpop import Covered, ProofRefused, confirmation
from ..rules.oauth import granted_intents
from ..rules.scope import Intent, scope_covers

CLOCK_SKEW = int(EXPIRY_SKEW.total_seconds())  # seconds of tolerance on exp/nbf/iat (revocations allow for it)
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
REVOCATIONS_PATH = "/v1/revocations"


class TokenRejected(Exception):
    """The token is refused; `reason` is stable for programs, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Presented:
    """How a token arrived: the request's method and URL (as the client addressed it), the
    Authorization scheme it came with, its `DPoP` header, and its body when the verifier sees it."""

    method: str
    url: str
    scheme: str = "Bearer"
    proof: str | None = None
    body: bytes | None = None


PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _public_key(jwk: dict[str, str]) -> PublicKey:
    if jwk.get("kty") == "RSA":
        exponent, modulus = (int.from_bytes(b64url_decode(jwk[name]), "big") for name in ("e", "n"))
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64url_decode(jwk["x"]), "big"),
            int.from_bytes(b64url_decode(jwk["y"]), "big"),
            ec.SECP256R1(),
        )
        return numbers.public_key()
    raise ValueError(f"unsupported key type {jwk.get('kty')}/{jwk.get('crv')}")


def _decode_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # nested too deep to parse: not ours
        raise TokenRejected("malformed", f"the {what} is not base64url-encoded JSON") from error
    if not isinstance(value, dict):
        raise TokenRejected("malformed", f"the {what} is not a JSON object")
    return value


@dataclass
class Verifier:
    jwks: dict[str, Any]
    issuer: str
    revoked: RevocationList = field(default_factory=RevocationList)
    proofs: ProofChecker = field(default_factory=ProofChecker)  # each proof once, per pod

    def __post_init__(self) -> None:
        self._keys = {}
        for jwk in self.jwks.get("keys", []):
            if jwk.get("alg") in ALGORITHMS and jwk.get("kid"):
                self._keys[jwk["kid"]] = (jwk["alg"], _public_key(jwk))

    @classmethod
    def from_url(
        cls, base_url: str, *, issuer: str | None = None, cafile: str | None = None, timeout: float = 5.0
    ) -> Verifier:
        """Fetch the JWKS and revocation list the operator serves; the issuer to expect is
        the one its discovery document names, unless given."""
        context = ssl.create_default_context(cafile=cafile)
        base = base_url.rstrip("/")

        def fetch(path: str) -> dict[str, Any]:
            with urllib.request.urlopen(base + path, context=context, timeout=timeout) as response:
                found = json.loads(response.read())
                if not isinstance(found, dict):
                    raise ValueError(f"{base + path} did not answer with a JSON object")
                return found

        expected = issuer or str(fetch(DISCOVERY_PATH).get("issuer") or base)
        return cls(jwks=fetch(JWKS_PATH), issuer=expected, revoked=revocation_list(fetch(REVOCATIONS_PATH)))

    def verify(
        self,
        token: str,
        audience: str,
        intent: Intent | None = None,
        *,
        namespace: str | None,
        credential: str | None = None,
        now: float | None = None,
        presented: Presented | None = None,
    ) -> dict[str, Any]:
        """The token's claims if it is ours, for `audience`, live and not revoked, issued in
        `namespace` (the tenant this verifier serves: required, so that no gateway forgets to
        pin it; None accepts any namespace, said out loud), for `credential` if given,
        covering `intent` if given, and -- if it is bound to a key -- `presented` with a proof
        by that key."""
        parts = token.strip().split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise TokenRejected("malformed", "a token has three dot-separated parts")
        header = _decode_part(parts[0], "header")
        if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, f"application/{ACCESS_TOKEN_TYPE}"):
            raise TokenRejected("wrong-type", f"type {header.get('typ')!r} is not {ACCESS_TOKEN_TYPE} (RFC 9068)")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise TokenRejected(
                "unsupported-algorithm", f"algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})"
            )
        if "crit" in header:  # RFC 7515 4.1.11: refuse extensions we do not understand
            raise TokenRejected(
                "unsupported-critical-header", f"critical header parameters {header['crit']!r} are not understood"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self._keys:
            raise TokenRejected("unknown-kid", f"no published key has kid {kid!r}")
        key_alg, key = self._keys[kid]
        if key_alg != alg:
            raise TokenRejected("algorithm-mismatch", f"key {kid} is for {key_alg}, the token says {alg}")
        try:
            signature = b64url_decode(parts[2])
        except ValueError as error:
            raise TokenRejected("malformed", "the signature is not base64url") from error
        self._check_signature(key, f"{parts[0]}.{parts[1]}".encode(), signature)
        claims = _decode_part(parts[1], "payload")
        self._check_claims(claims, audience, time.time() if now is None else now)
        issued = _agentcred_claim(claims)
        for expected, name in ((namespace, "namespace"), (credential, "credential")):
            if expected is not None and issued.get(name) != expected:
                raise TokenRejected(
                    f"wrong-{name}", f"the token was issued for {name} {issued.get(name)!r}, not {expected!r}"
                )
        self._check_sender(token.strip(), claims, presented)
        if intent is not None:
            granted = granted_intents(claims)
            if granted is not None and intent not in granted:
                raise TokenRejected("out-of-scope", f"the token does not grant {intent.as_dict()}")
            if granted is None:
                decision = scope_covers(issued.get("scope") or {}, intent)
                if not decision.allowed:
                    raise TokenRejected("out-of-scope", decision.message)
        return claims

    def _check_sender(self, token: str, claims: dict[str, Any], presented: Presented | None) -> None:
        bound = confirmation(claims)
        if bound is None:
            return
        if presented is None or not presented.proof:
            raise TokenRejected(
                "dpop-missing", f"the token is DPoP-bound (key {bound}): the request needs a DPoP proof"
            )
        if presented.scheme.lower() != DPOP_SCHEME.lower():
            raise TokenRejected(
                "dpop-wrong-scheme", f"a DPoP-bound token is sent as 'Authorization: DPoP', not {presented.scheme}"
            )
        covered = Covered(presented.method, presented.url, access_token=token, body=presented.body)
        holder = str(_agentcred_claim(claims).get("podUID") or bound)
        try:
            self.proofs.check(presented.proof, covered, holder, bound_to=bound)
        except ProofRefused as refused:
            raise TokenRejected(refused.reason, refused.message) from None

    @staticmethod
    def _check_signature(key: Any, message: bytes, signature: bytes) -> None:
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                if len(signature) != 64:
                    raise InvalidSignature()
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as error:
            raise TokenRejected("bad-signature", "the signature does not match the token") from error

    def _check_claims(self, claims: dict[str, Any], audience: str, now: float) -> None:
        if claims.get("iss") != self.issuer:
            raise TokenRejected("wrong-issuer", f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
        if audience not in audiences:
            raise TokenRejected("wrong-audience", f"the token is for {audiences}, not {audience!r}")
        for name in ("exp", "iat", "nbf", "jti"):
            if name not in claims:
                raise TokenRejected("malformed", f"the token has no {name} claim")
        if not isinstance(claims["exp"], (int, float)) or now > claims["exp"] + CLOCK_SKEW:
            raise TokenRejected("expired", f"the token expired at {claims['exp']}")
        if not isinstance(claims["nbf"], (int, float)) or now + CLOCK_SKEW < claims["nbf"]:
            raise TokenRejected("not-yet-valid", f"the token is not valid before {claims['nbf']}")
        if not isinstance(claims["iat"], (int, float)):
            raise TokenRejected("malformed", "the iat claim is not a number")
        issued = _agentcred_claim(claims)
        pod_uid, credential = issued.get("podUID"), issued.get("credential")
        if not isinstance(pod_uid, str) or not isinstance(credential, str):
            raise TokenRejected("malformed", "the token names no pod and credential (agentcred claim)")
        lineage = (str(claims["jti"]), *[str(i) for i in issued.get("derivedFrom") or []])
        issued_at = dt.datetime.fromtimestamp(claims["iat"], dt.timezone.utc)
        if self.revoked.covers(*served_key(pod_uid, credential), issued_at, lineage):
            raise TokenRejected("revoked", f"token {claims['jti']} was revoked (credential {credential} of its pod)")


def describe_grant(claims: dict[str, Any]) -> list[str]:
    """What a verified token is for and allows, a line each, for people: its audience, the
    intents a narrowed token grants (its `scope` and `authorization_details`, RFC 9068 /
    RFC 9396), or the credential's scope patterns a token that names none carries, and who
    acts through it (`act`, RFC 8693)."""
    audiences = claims.get("aud")
    lines = [f"audience: {', '.join([audiences] if isinstance(audiences, str) else map(str, audiences or []))}"]
    if claims.get("scope") is not None:
        lines.append(f"scope: {claims['scope']}")
    details = claims.get("authorization_details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        actions = detail.get("actions")
        line = (
            f"authorization_details: type={detail.get('type')} tool={detail.get('tool')} "
            f"actions={','.join(map(str, actions)) if isinstance(actions, list) else actions} "
            f"identifier={detail.get('identifier')}"
        )
        if detail.get("locations"):
            line += f" locations={','.join(map(str, detail['locations']))}"
        lines.append(line)
    if granted_intents(claims) is None:
        scope = _agentcred_claim(claims).get("scope") or {}
        patterns = " ".join(
            f"{name}={','.join(map(str, scope[name]))}"
            for name in ("tools", "actions", "resources")
            if isinstance(scope.get(name), list)
        )
        deny = scope.get("deny")
        deny = deny if isinstance(deny, dict) else {}
        denied = " ".join(f"{name}={','.join(map(str, v))}" for name, v in deny.items() if isinstance(v, list))
        lines.append(f"not narrowed: the credential's scope {patterns or '(none: allows nothing)'}")
        if denied:
            lines.append(f"  deny {denied}")
    act = claims.get("act")
    chain: list[str] = []
    while isinstance(act, dict) and len(chain) < 8:
        chain.append(str(act.get("sub")))
        act = act.get("act")
    if chain:
        lines.append(f"acting: {' <- '.join(chain)}")
    return lines


def _agentcred_claim(claims: dict[str, Any]) -> dict[str, Any]:
    found = claims.get("agentcred")
    return found if isinstance(found, dict) else {}


def revocation_list(document: dict[str, Any]) -> RevocationList:
    """The operator's revocation list document, as a list to check tokens against."""
    revoked = RevocationList()
    for entry in parse_document(document):
        revoked.add(entry)
    return revoked
