"""A DPoP client for tests, written with PyJWT and `cryptography` -- never with agentcred's
own code or joserfc (what agentcred verifies proofs with), so a proof agentcred accepts was
made, and a token it binds is judged, by a JOSE library nobody here wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 §3, spelled out here (the required members, sorted, no whitespace, SHA-256)."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {name: public_jwk[name] for name in required[public_jwk["kty"]]}
    return b64url(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


@dataclass
class DPoPKey:
    """A client's key pair and the proofs it makes."""

    alg: str = "ES256"
    private_key: Any = None
    public_jwk: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.private_key is None:
            if self.alg == "ES256":
                self.private_key = ec.generate_private_key(ec.SECP256R1())
            elif self.alg == "EdDSA":
                self.private_key = ed25519.Ed25519PrivateKey.generate()
            else:
                self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if not self.public_jwk:
            public = self.private_key.public_key()
            algorithm = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}.get(self.alg, RSAAlgorithm)
            self.public_jwk = json.loads(algorithm.to_jwk(public))
            for extra in ("alg", "use", "kid", "key_ops"):
                self.public_jwk.pop(extra, None)

    @classmethod
    def from_private_jwk(cls, private_jwk: dict[str, Any]) -> DPoPKey:
        """The key a pod was given (its `dpop.jwk` file), read with PyJWT."""
        key = jwt.PyJWK(private_jwk)
        public = {k: v for k, v in private_jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
        return cls(alg=key.algorithm_name, private_key=key.key, public_jwk=public)

    @property
    def jkt(self) -> str:
        return thumbprint(self.public_jwk)

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        iat: int | None = None,
        jti: str | None = None,
        body: bytes | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(16),
            "htm": method,
            "htu": url,
            "iat": int(time.time()) if iat is None else iat,
        }
        if access_token is not None:
            payload["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
        if nonce is not None:
            payload["nonce"] = nonce
        if body is not None:
            payload["content_digest"] = f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
        payload.update(claims or {})
        headers = {"typ": "dpop+jwt", "jwk": self.public_jwk, **(header or {})}
        return jwt.encode(payload, self.private_key, algorithm=self.alg, headers=headers)


def bound_to(token: str, key: DPoPKey, jwks: dict[str, Any], audience: str | list[str], issuer: str) -> dict[str, Any]:
    """The claims of an access token, verified by PyJWT against the issuer's JWKS, that must be
    bound to `key` (cnf.jkt, RFC 9449 §6.1)."""
    header = jwt.get_unverified_header(token)
    signing = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(signing).key,
        algorithms=[signing["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "jti"]},
    )
    assert claims.get("cnf") == {"jkt": key.jkt}, f"the token is bound to {claims.get('cnf')}, not {key.jkt}"
    return claims
