"""Value fingerprints: a keyed HMAC, so a fingerprint written in a Secret annotation, an audit
line or an Event is no offline guessing oracle for a low-entropy static value.

A fingerprint names the key that made it: `hmac-sha256:<key id>:<128 bits, hex>`. 128 bits
keep collisions out of reach at any realistic scale (the birthday bound is 2^64 values). The
key is the key ring's `fingerprint` MAC key, shared by every replica; after a rotation the
previous key stays in the ring (retired) as long as any value it fingerprinted can live, so a
value is traced by trying every key still kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .keys import KeyRing, MacKey

PREFIX = "hmac-sha256"
DIGEST_HEX = 32  # 128 bits
SHORT_HEX = 12
PATTERN = re.compile(rf"^{PREFIX}:[0-9a-f]{{8}}:[0-9a-f]{{{DIGEST_HEX}}}$")
# What people may paste: the full form, or the short one shown in tables and Events.
SHORT_PATTERN = re.compile(rf"^{PREFIX}:[0-9a-f]{{{SHORT_HEX}}}$")


DOMAIN = b"agentcred-fingerprint-v1\n"  # this key's MACs mean nothing anywhere else


def _with(key: MacKey, value: bytes) -> str:
    return f"{PREFIX}:{key.id}:{key.mac(DOMAIN + value).hex()[:DIGEST_HEX]}"


def short(fingerprint: str) -> str:
    """The display form: enough to tell values apart in a table, not to look one up alone."""
    if not PATTERN.match(fingerprint):
        return fingerprint
    return f"{PREFIX}:{fingerprint.rsplit(':', 1)[1][:SHORT_HEX]}"


def is_fingerprint(text: str) -> bool:
    return bool(PATTERN.match(text) or SHORT_PATTERN.match(text))


def key_id(fingerprint: str) -> str | None:
    return fingerprint.split(":")[1] if PATTERN.match(fingerprint) else None


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
