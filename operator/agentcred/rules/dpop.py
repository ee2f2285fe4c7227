"""DPoP (RFC 9449): a proof checked against the request it came with, and what binds a token
to a key. Pure: a proof, the request and the time in; the proof's facts -- or a refusal with
a stable reason -- out. The replay check (each proof's `jti` once) is the caller's, with
`platform.replay.ReplayCache`; which token a proof must match (`cnf.jkt`) is the caller's too.

A proof is a compact JWS whose header carries `typ: dpop+jwt`, an asymmetric `alg` and the
public key itself (`jwk`); its claims say which request it is for (`htm`, `htu`), when it was
made (`iat`), a unique `jti`, the hash of the access token sent with it (`ath`) and, when the
server asked for one, its `nonce`. The signature is checked with joserfc, a maintained JOSE
library: the key comes from whoever sent the proof, so importing it is left to code written
for hostile keys. The key's RFC 7638 thumbprint is what a token is bound to (`cnf.jkt`).

SEP-1932 (MCP's DPoP profile) adopts RFC 9449 as it is; an earlier draft had proofs cover
the JSON-RPC body too. A proof that carries `content_digest` (`sha-256=:<base64>:`, the
RFC 9530 syntax) is held to it wherever the body is seen.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import struct
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwk, jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jws import JWSRegistry

from ..api.model import AgentCredentialSpec

PROOF_TYPE = "dpop+jwt"
TOKEN_TYPE = "DPoP"  # token_type of a bound token (RFC 9449 §5) and the Authorization scheme (§7.1)
# Asymmetric algorithms only (RFC 9449 §4.2): never `none`, never HMAC. `EdDSA` is the name most
# clients still send for Ed25519 (RFC 9864 renamed it).
ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "Ed25519", "PS256", "RS256")
MAX_PROOF = 8 * 1024  # characters: a proof (with an RSA key in its header) is far smaller
MAX_JTI = 128
MAX_NONCE = 256
MIN_RSA_BITS = 2048
MAX_AGE = 60  # seconds a proof is accepted after its iat
FUTURE_SKEW = 5  # seconds a proof's iat may lie ahead of our clock
NONCE_LIFETIME = 300  # seconds a server nonce is accepted
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
DIGEST_PREFIX = "sha-256=:"


class ProofRefused(Exception):
    """The proof is refused; `reason` is stable for programs (a metric label), the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class _ProofRegistry(JWSRegistry):
    # An RSA key in the header makes it larger than joserfc's default ceiling of 512 bytes.
    max_header_length = 2048
    max_payload_length = 4096


REGISTRY = _ProofRegistry(algorithms=ALGORITHMS, strict_check_header=False)


@dataclass(frozen=True)
class Covered:
    """The request a proof must cover: its method and URL, the access token sent with it (if
    any), and its body (None when it is not seen: a gateway that sends no body)."""

    method: str
    url: str
    access_token: str | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class Proof:
    jkt: str  # the RFC 7638 thumbprint of the proof's key
    jti: str
    iat: int
    htm: str
    htu: str
    nonce: str | None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_hash(access_token: str) -> str:
    """`ath` (RFC 9449 §4.2): base64url of the SHA-256 of the token's ASCII."""
    return b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def body_digest(body: bytes) -> str:
    """`content_digest`: the body's SHA-256 in the RFC 9530 field syntax."""
    return f"{DIGEST_PREFIX}{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def jkt(public_jwk: dict[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256) of a public key, as `cnf.jkt` names it."""
    return str(_read_public(public_jwk).thumbprint())


def normalized_uri(uri: str) -> str | None:
    """`uri` compared as RFC 9449 §4.3 says (RFC 3986 §6.2.2, §6.2.3): scheme and host in
    lower case, the default port left out, an empty path as `/`, no query and no fragment.
    None: not an absolute http(s) URI."""
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


def _imported_or_refused(public_jwk: dict[str, Any]) -> tuple[Any, str]:
    try:
        members = tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in public_jwk.items()))
    except (TypeError, ValueError, RecursionError):
        raise ProofRefused("dpop-invalid", "the proof's jwk is not a JSON object of strings") from None
    return _imported(members)


@functools.lru_cache(maxsize=1024)
def _imported(members: tuple[tuple[str, str], ...]) -> tuple[Any, str]:
    """A public key read once per distinct JWK (a client signs every proof with one key), and
    its thumbprint; ProofRefused is not cached, it is raised again."""
    public_jwk = {k: json.loads(v) for k, v in members}
    key = _read_public(public_jwk)
    return key, str(key.thumbprint())


def _read_public(public_jwk: dict[str, Any]) -> Any:
    private = sorted(PRIVATE_MEMBERS & set(public_jwk))
    if private:
        raise ProofRefused("dpop-invalid", f"the proof's jwk holds private key members ({', '.join(private)})")
    kty = public_jwk.get("kty")
    if kty not in ("EC", "RSA", "OKP"):
        raise ProofRefused("dpop-invalid", f"the proof's jwk has key type {str(kty)[:16]!r}: EC, RSA or OKP only")
    try:
        key = jwk.import_key(public_jwk, kty)
    except (JoseError, ValueError, TypeError, KeyError, binascii.Error) as error:
        raise ProofRefused("dpop-invalid", f"the proof's jwk is not a usable {kty} public key") from error
    if isinstance(key, jwk.RSAKey) and key.public_key.key_size < MIN_RSA_BITS:
        raise ProofRefused("dpop-invalid", f"the proof's RSA key is shorter than {MIN_RSA_BITS} bits")
    return key


def _header(proof: str) -> dict[str, Any]:
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise ProofRefused("dpop-invalid", "a proof is a JWS in compact form: three dot-separated parts")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
        raise ProofRefused("dpop-invalid", "the proof's header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise ProofRefused("dpop-invalid", "the proof's header is not a JSON object")
    return header


def _verified_claims(proof: str, key: Any, alg: str) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # EdDSA: still what clients send for Ed25519
            signed = jws.deserialize_compact(proof, key, algorithms=[alg], registry=REGISTRY)
    except JoseError as error:
        bad_signature = error.error == "bad_signature"
        raise ProofRefused(
            "dpop-bad-signature" if bad_signature else "dpop-invalid",
            "the proof's signature does not verify with its jwk" if bad_signature else f"the proof: {error.error}",
        ) from None
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise ProofRefused("dpop-invalid", "the proof is not a well-formed JWS") from None
    try:
        claims = json.loads(signed.payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProofRefused("dpop-invalid", "the proof's claims are not JSON") from None
    if not isinstance(claims, dict):
        raise ProofRefused("dpop-invalid", "the proof's claims are not a JSON object")
    return claims


def _string(claims: dict[str, Any], name: str, limit: int) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise ProofRefused("dpop-invalid", f"the proof has no {name} claim (a non-empty string)")
    if len(value) > limit or not value.isascii() or not value.isprintable():
        raise ProofRefused("dpop-invalid", f"the proof's {name} is longer than {limit} or not printable ASCII")
    return value


def check_proof(
    proof: str,
    request: Covered,
    now: float,
    *,
    max_age: int = MAX_AGE,
    nonce_ok: Callable[[str | None], bool] | None = None,
) -> Proof:
    """The facts of a proof that covers `request` now (RFC 9449 §4.3 steps 2-11), or
    ProofRefused. `nonce_ok` (when the server asks for nonces) judges the proof's `nonce`."""
    proof = proof.strip()
    if not proof or len(proof) > MAX_PROOF or "," in proof or not proof.isascii():
        raise ProofRefused("dpop-invalid", f"send exactly one DPoP proof, a compact JWS of at most {MAX_PROOF} bytes")
    header = _header(proof)
    if str(header.get("typ", "")).lower() != PROOF_TYPE:
        raise ProofRefused("dpop-invalid", f"the proof's typ is {str(header.get('typ'))[:32]!r}, not {PROOF_TYPE}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise ProofRefused(
            "dpop-unsupported-algorithm",
            f"the proof's alg {str(alg)[:16]!r} is not accepted (asymmetric only: {', '.join(ALGORITHMS)})",
        )
    if "crit" in header:
        raise ProofRefused("dpop-invalid", "the proof has critical header parameters agentcred does not understand")
    if not isinstance(header.get("jwk"), dict):
        raise ProofRefused("dpop-invalid", "the proof's jwk is not a JSON object")
    key, thumbprint = _imported_or_refused(header["jwk"])
    claims = _verified_claims(proof, key, alg)
    jti = _string(claims, "jti", MAX_JTI)
    htm = _string(claims, "htm", 16)
    htu = _string(claims, "htu", 2048)
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise ProofRefused("dpop-invalid", "the proof has no iat claim (an integer)")
    if htm != request.method.upper():
        raise ProofRefused("dpop-wrong-method", f"the proof is for method {htm}, the request is {request.method}")
    wanted = normalized_uri(request.url)
    if wanted is None or normalized_uri(htu) != wanted:
        raise ProofRefused("dpop-wrong-url", f"the proof is for {htu[:200]}, the request is for {wanted}")
    if iat > now + FUTURE_SKEW or iat < now - max_age:
        raise ProofRefused(
            "dpop-stale", f"the proof was made at {iat}; accepted within {max_age} s before now ({int(now)})"
        )
    ath = claims.get("ath")
    if request.access_token is not None:
        if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(request.access_token)):
            raise ProofRefused("dpop-wrong-token", "the proof's ath is not the hash of the access token sent with it")
    digest = claims.get("content_digest")
    if digest is not None and request.body is not None:
        if not isinstance(digest, str) or not hmac.compare_digest(digest, body_digest(request.body)):
            raise ProofRefused("dpop-body-mismatch", "the proof's content_digest is not the digest of this body")
    nonce = claims.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or len(nonce) > MAX_NONCE):
        raise ProofRefused("dpop-invalid", f"the proof's nonce is not a string of at most {MAX_NONCE} characters")
    if nonce_ok is not None and not nonce_ok(nonce):
        raise ProofRefused("dpop-nonce", "use the server's current DPoP-Nonce in the proof")
    return Proof(jkt=thumbprint, jti=jti, iat=iat, htm=htm, htu=htu, nonce=nonce)


def confirmation(claims: dict[str, Any]) -> str | None:
    """The key thumbprint a token is bound to (`cnf.jkt`), or None: a bearer token."""
    cnf = claims.get("cnf")
    found = cnf.get("jkt") if isinstance(cnf, dict) else None
    return found if isinstance(found, str) and found else None


# -- the pod's identity token, bound to the pod's own key -----------------------------------


def binds_identity(spec: AgentCredentialSpec | None) -> bool:
    """Does holding this credential bind the pod's identity token to the pod's own key? Yes
    when its values are DPoP-bound and written into the pod (secret delivery): the operator
    made the key beside the value (`dpop.jwk`), so it knows the pod's thumbprint. Not for
    gateway delivery (no value, no key enters the pod); CSI delivery with DPoP is refused by
    the API server (its plugin writes no key)."""
    jwt = spec.source.jwt if spec is not None else None
    return jwt is not None and jwt.dpop_required and spec is not None and spec.projection.delivery == "secret"


def identity_bound_by(specs: Iterable[tuple[str, AgentCredentialSpec | None]]) -> tuple[str, ...]:
    """Of a pod's credentials, those that bind its identity token. One is enough: a pod that
    holds any DPoP-bound value presents its identity token only with a proof by its own key,
    whatever else it holds (a copied identity token would otherwise buy the bearer credentials
    and the pod's name at gateways)."""
    return tuple(sorted(name for name, spec in specs if binds_identity(spec)))


def check_pod_key(proof_jkt: str | None, pod_keys: Collection[str], bound_by: Collection[str]) -> None:
    """The identity token of a pod holding credentials `bound_by` (non-empty) is accepted with
    a proof by one of `pod_keys` (the thumbprints of the `dpop.jwk` keys agentcred made for
    this pod); ProofRefused otherwise."""
    held = ", ".join(sorted(bound_by))
    if proof_jkt is None:
        raise ProofRefused(
            "dpop-missing",
            f"the pod holds DPoP-bound credentials ({held}): its identity token is accepted only with a DPoP "
            "proof signed by the pod's own key (the dpop.jwk beside its value)",
        )
    if not pod_keys:
        raise ProofRefused(
            "dpop-no-pod-key",
            f"the pod holds DPoP-bound credentials ({held}) but agentcred has no key on record for it yet: "
            "try again once its values are written",
        )
    if proof_jkt not in pod_keys:
        raise ProofRefused(
            "dpop-not-pod-key",
            f"the proof is signed by key {proof_jkt}, not by the pod's own key (the dpop.jwk agentcred wrote "
            f"beside {held}): an identity token is accepted only with a proof by the pod it names",
        )


def authorization(header: str | None) -> tuple[str, str] | None:
    """The scheme (`Bearer` or `DPoP`, as written) and token of an Authorization header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "dpop") or not token or " " in token:
        return None
    return ("DPoP" if scheme.lower() == "dpop" else "Bearer"), token


# -- server nonces (RFC 9449 §8): a MAC over a time, so every replica can judge any replica's nonce


def new_nonce(mac: Callable[[bytes], bytes], now: float) -> str:
    stamp = struct.pack(">Q", int(now))
    return b64url(stamp + mac(b"agentcred-dpop-nonce:" + stamp)[:16])


def nonce_fresh(nonce: str | None, mac: Callable[[bytes], bytes], now: float, lifetime: int = NONCE_LIFETIME) -> bool:
    if not nonce or len(nonce) > MAX_NONCE:
        return False
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except (ValueError, binascii.Error):
        return False
    if len(raw) != 24:
        return False
    stamp, tag = raw[:8], raw[8:]
    made = struct.unpack(">Q", stamp)[0]
    return hmac.compare_digest(tag, mac(b"agentcred-dpop-nonce:" + stamp)[:16]) and now - lifetime <= made <= now + 5
