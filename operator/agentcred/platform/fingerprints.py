"""Value fingerprints: a keyed HMAC, so a fingerprint written in a Secret annotation, an audit
line or an Event is no offline guessing oracle for a low-entropy static value.

A fingerprint names the key that made it: `hmac-sha256:<key id>:<128 bits, hex>`. 128 bits
keep collisions out of reach at any realistic scale (the birthday bound is 2^64 values). The
key is the key ring's `fingerprint` MAC key, shared by every replica; after a rotation the
previous key stays in the ring (retired) as long as any value it fingerprinted can live, so a
value is traced by trying every key still kept.
"""

from __future__ import annotations

from collections.abc import Callable

from ..api.fingerprints import DIGEST_HEX, PREFIX, key_id
from .keys import KeyRing, MacKey

DOMAIN = b"agentcred-fingerprint-v1\n"  # this key's MACs mean nothing anywhere else


def _with(key: MacKey, value: bytes) -> str:
    return f"{PREFIX}:{key.id}:{key.mac(DOMAIN + value).hex()[:DIGEST_HEX]}"


class Fingerprints:
    """Fingerprints under the key ring as it is now (it changes when the ring rotates)."""

    def __init__(self, keyring: Callable[[], KeyRing]) -> None:
        self._keyring = keyring

    def __call__(self, value: bytes) -> str:
        """Under the current key: what is written when a value is issued."""
        return _with(self._keyring().mac_key("fingerprint"), value)

    def every(self, value: bytes) -> list[str]:
        """Under every key still kept (current first): what a value may have been recorded as."""
        current = self._keyring().mac_key("fingerprint")
        others = [key for key in self._keyring().mac_keys("fingerprint").values() if key.id != current.id]
        return [_with(key, value) for key in (current, *others)]

    def under(self, fingerprint: str, value: bytes) -> str | None:
        """The value's fingerprint under the key `fingerprint` names, or None if that key is gone."""
        key = self._keyring().mac_keys("fingerprint").get(key_id(fingerprint) or "")
        return _with(key, value) if key is not None else None
