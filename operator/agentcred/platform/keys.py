"""Signing keys for minted tokens: Ed25519 (EdDSA), P-256 (ES256) and RSA (RS256, which
RFC 9068 asks every access-token issuer to support), JWKS, compact JWS.

The key ring lives in one Secret in the operator's namespace, so every replica signs with
the same keys and a restart keeps them. Keys carry a `kid` (their RFC 7638 thumbprint).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

Algorithm = Literal["EdDSA", "ES256", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = ("EdDSA", "ES256", "RS256")
DEFAULT_ALGORITHM: Algorithm = "EdDSA"
RSA_BITS = 2048
KEYRING_KEY = "keys.json"
MACS_KEY = "macs.json"
# RFC 9068: the media type of JWT access tokens, which a verifier checks so that no other
# kind of JWT (an ID token, a ServiceAccount token) can be passed off as one.
ACCESS_TOKEN_TYPE = "at+jwt"

SigningPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def public_jwk_of(alg: Algorithm, private_key: SigningPrivateKey) -> dict[str, str]:
    if alg == "RS256":
        assert isinstance(private_key, rsa.RSAPrivateKey)
        public = private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "n": b64url(public.n.to_bytes((public.n.bit_length() + 7) // 8, "big")),
            "e": b64url(public.e.to_bytes((public.e.bit_length() + 7) // 8, "big")),
        }
    if alg == "EdDSA":
        assert isinstance(private_key, ed25519.Ed25519PrivateKey)
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    numbers = private_key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: the SHA-256 of the key's required members, canonically serialised."""
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    return b64url(hashlib.sha256(_canonical({k: jwk[k] for k in required})).digest())


@dataclass(frozen=True)
class SigningKey:
    alg: Algorithm
    private_key: SigningPrivateKey
    created_at: dt.datetime
    retired_at: dt.datetime | None = None  # no longer signs; published until its tokens expire

    @functools.cached_property
    def public_jwk(self) -> dict[str, str]:
        jwk = public_jwk_of(self.alg, self.private_key)
        return {**jwk, "kid": thumbprint(jwk), "alg": self.alg, "use": "sig"}

    @functools.cached_property
    def kid(self) -> str:
        return self.public_jwk["kid"]

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(message)
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private_key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s

    def signed(self, message: bytes, signature: bytes) -> bool:
        """Did this key sign `message`?"""
        public = self.private_key.public_key()
        try:
            if isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(signature, message)
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                if len(signature) != 64:
                    return False
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {
            "alg": self.alg,
            "createdAt": self.created_at.isoformat(),
            "retiredAt": self.retired_at.isoformat() if self.retired_at else None,
            "pem": pem.decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SigningKey:
        key = serialization.load_pem_private_key(data["pem"].encode(), password=None)
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError("signing keys must be Ed25519, EC P-256 or RSA")
        retired = data.get("retiredAt")
        return cls(
            alg=data["alg"],
            private_key=key,
            created_at=dt.datetime.fromisoformat(data["createdAt"]),
            retired_at=dt.datetime.fromisoformat(retired) if retired else None,
        )


def new_signing_key(alg: Algorithm, now: dt.datetime) -> SigningKey:
    private_key: SigningPrivateKey
    if alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return SigningKey(alg=alg, private_key=private_key, created_at=now)


MacPurpose = Literal["admission", "bookkeeping", "fingerprint", "dpop-nonce"]
MAC_PURPOSES: tuple[MacPurpose, ...] = ("admission", "bookkeeping", "fingerprint", "dpop-nonce")


@dataclass(frozen=True)
class MacKey:
    """A shared secret for keyed MACs: the webhook's admission seal, value fingerprints."""

    purpose: MacPurpose
    secret: bytes
    created_at: dt.datetime
    retired_at: dt.datetime | None = None

    @functools.cached_property
    def id(self) -> str:
        # Names the key in what it signed; a hash of a 256-bit secret reveals nothing of it.
        return hashlib.sha256(b"agentcred-mac-id:" + self.secret).hexdigest()[:8]

    def mac(self, message: bytes) -> bytes:
        return hmac.digest(self.secret, message, "sha256")  # one-shot: OpenSSL's, no HMAC object

    def to_json(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "secret": b64url(self.secret),
            "createdAt": self.created_at.isoformat(),
            "retiredAt": self.retired_at.isoformat() if self.retired_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MacKey:
        retired = data.get("retiredAt")
        return cls(
            purpose=data["purpose"],
            secret=b64url_decode(data["secret"]),
            created_at=dt.datetime.fromisoformat(data["createdAt"]),
            retired_at=dt.datetime.fromisoformat(retired) if retired else None,
        )


def new_mac_key(purpose: MacPurpose, now: dt.datetime) -> MacKey:
    return MacKey(purpose=purpose, secret=secrets.token_bytes(32), created_at=now)


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[SigningKey, ...]
    macs: tuple[MacKey, ...] = ()

    @classmethod
    def generate(cls, now: dt.datetime) -> KeyRing:
        return cls(
            tuple(new_signing_key(alg, now) for alg in ALGORITHMS),
            tuple(new_mac_key(purpose, now) for purpose in MAC_PURPOSES),
        )

    def completed(self, now: dt.datetime) -> KeyRing:
        """The ring with a signing key for every algorithm and a MAC key for every purpose
        (rings written by older versions lack some)."""
        algorithms = {key.alg for key in self.keys if key.retired_at is None}
        purposes = {key.purpose for key in self.macs if key.retired_at is None}
        keys = tuple(new_signing_key(alg, now) for alg in ALGORITHMS if alg not in algorithms)
        macs = tuple(new_mac_key(purpose, now) for purpose in MAC_PURPOSES if purpose not in purposes)
        if not keys and not macs:
            return self
        return KeyRing((*self.keys, *keys), (*self.macs, *macs))

    def mac_key(self, purpose: MacPurpose) -> MacKey:
        """The current key for `purpose` (the newest one not retired)."""
        active = [k for k in self.macs if k.purpose == purpose and k.retired_at is None]
        if not active:
            raise LookupError(f"no active {purpose} MAC key")
        return max(active, key=lambda k: k.created_at)

    def mac_keys(self, purpose: MacPurpose) -> dict[str, MacKey]:
        """Every key for `purpose` still kept, current and retired, by id."""
        return {k.id: k for k in self.macs if k.purpose == purpose}

    def current(self, alg: Algorithm) -> SigningKey:
        active = [k for k in self.keys if k.alg == alg and k.retired_at is None]
        if not active:
            raise LookupError(f"no active {alg} signing key")
        return max(active, key=lambda k: k.created_at)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.keys]}

    def to_secret_data(self) -> dict[str, str]:
        def encoded(items: list[dict[str, Any]]) -> str:
            return base64.b64encode(json.dumps(items).encode()).decode()

        return {
            KEYRING_KEY: encoded([key.to_json() for key in self.keys]),
            MACS_KEY: encoded([key.to_json() for key in self.macs]),
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> KeyRing:
        entries = json.loads(base64.b64decode(data[KEYRING_KEY]))
        macs = json.loads(base64.b64decode(data[MACS_KEY])) if data.get(MACS_KEY) else []
        return cls(
            tuple(SigningKey.from_json(entry) for entry in entries), tuple(MacKey.from_json(entry) for entry in macs)
        )


# Retired keys stay published this long: longer than any token they signed can live
# (the CRD caps ttl at 24h), plus clock skew.
KEY_RETENTION = dt.timedelta(hours=25)


def rotate(ring: KeyRing, alg: Algorithm, now: dt.datetime) -> KeyRing:
    """A new current key for `alg`; the old one retires but stays published."""
    retired = tuple(
        dataclasses.replace(k, retired_at=now) if k.alg == alg and k.retired_at is None else k for k in ring.keys
    )
    return dataclasses.replace(ring, keys=(*retired, new_signing_key(alg, now)))


def rotate_mac(ring: KeyRing, purpose: MacPurpose, now: dt.datetime) -> KeyRing:
    """A new current MAC key for `purpose`; the old one retires but is kept as long as a
    retired signing key (for fingerprints: while a value it fingerprinted can live)."""
    retired = tuple(
        dataclasses.replace(k, retired_at=now) if k.purpose == purpose and k.retired_at is None else k
        for k in ring.macs
    )
    return dataclasses.replace(ring, macs=(*retired, new_mac_key(purpose, now)))


def prune(ring: KeyRing, now: dt.datetime, retention: dt.timedelta = KEY_RETENTION) -> KeyRing:
    """Drop retired keys whose every token has expired."""

    def kept(key: SigningKey | MacKey) -> bool:
        return key.retired_at is None or key.retired_at + retention > now

    return KeyRing(tuple(k for k in ring.keys if kept(k)), tuple(k for k in ring.macs if kept(k)))


def rotation_due(ring: KeyRing, alg: Algorithm, now: dt.datetime, interval: dt.timedelta | None) -> bool:
    return interval is not None and ring.current(alg).created_at + interval <= now


def fingerprint_rotation_due(ring: KeyRing, now: dt.datetime, interval: dt.timedelta | None) -> bool:
    return interval is not None and ring.mac_key("fingerprint").created_at + interval <= now


def encode_jwt(claims: dict[str, Any], key: SigningKey, typ: str = ACCESS_TOKEN_TYPE) -> str:
    header = {"alg": key.alg, "typ": typ, "kid": key.kid}
    signing_input = f"{b64url(_canonical(header))}.{b64url(_canonical(claims))}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


class NotOurs(Exception):
    """A token this key ring did not sign (or cannot read); the message says which check failed."""


def decode_own(token: str, ring: KeyRing) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token signed by a key of `ring`, checked before any claim is
    read: three parts, a known `kid` whose algorithm matches `alg`, and a valid signature."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NotOurs("a JWT has three dot-separated parts")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError, RecursionError):  # the header is read unsigned: anything goes
        raise NotOurs("the token is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise NotOurs("the token's header is not a JSON object")
    key = next((k for k in ring.keys if k.kid == header.get("kid")), None)
    if key is None or header.get("alg") != key.alg or "crit" in header:
        raise NotOurs("the token was not signed by one of this issuer's keys")
    if not key.signed(f"{parts[0]}.{parts[1]}".encode(), signature):
        raise NotOurs("the token's signature does not verify")
    try:
        claims = orjson.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotOurs("the token's claims are not base64url-encoded JSON") from None
    if not isinstance(claims, dict):
        raise NotOurs("the token's claims are not a JSON object")
    return header, claims


def peek_claims(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims of something shaped like a compact JWS, unverified (to tell a forgery
    that names our issuer from a string that is no token at all), else None."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = orjson.loads(b64url_decode(parts[0])), orjson.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):  # from anyone: nested too deep is no token
        return None
    return (header, claims) if isinstance(header, dict) and isinstance(claims, dict) else None
