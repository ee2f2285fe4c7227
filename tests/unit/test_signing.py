import datetime as dt
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agentcred.revocations import RevocationList
from agentcred.signing import KeyRing, b64url_decode, encode_jwt, thumbprint

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_tokens_verify_with_the_public_key_and_name_their_kid(alg: str) -> None:
    ring = KeyRing.generate(NOW)
    key = ring.current(alg)
    token = encode_jwt({"sub": "x", "exp": 1}, key)
    header, payload, signature = token.split(".")
    assert json.loads(b64url_decode(header)) == {"alg": alg, "typ": "JWT", "kid": key.kid}
    message = f"{header}.{payload}".encode()
    public = key.private_key.public_key()
    raw = b64url_decode(signature)
    if alg == "EdDSA":
        public.verify(raw, message)
        with pytest.raises(InvalidSignature):
            public.verify(raw, message + b"x")
    else:
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The example key of RFC 8037 appendix A.3 and its published thumbprint.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_key_ring_survives_its_secret_and_publishes_public_keys_only() -> None:
    ring = KeyRing.generate(NOW)
    again = KeyRing.from_secret_data(ring.to_secret_data())
    assert again.jwks() == ring.jwks()
    assert all(set(jwk) <= {"kty", "crv", "x", "y", "kid", "alg", "use"} for jwk in ring.jwks()["keys"])


def test_revocation_list_prunes_and_round_trips() -> None:
    revocations = RevocationList()
    revocations.add("old", NOW)
    revocations.add("new", NOW + dt.timedelta(minutes=5))
    revocations.prune(NOW)
    assert "old" not in revocations and "new" in revocations
    again = RevocationList()
    again.load_configmap_data(revocations.to_configmap_data())
    assert "new" in again and len(again) == 1
