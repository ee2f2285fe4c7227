"""How a value fingerprint is written and shown (made in `platform.fingerprints`, with a key):
`hmac-sha256:<key id>:<128 bits, hex>`, and `hmac-sha256:<12 hex>` for display."""

from __future__ import annotations

import re

PREFIX = "hmac-sha256"
DIGEST_HEX = 32  # 128 bits
SHORT_HEX = 12
PATTERN = re.compile(rf"^{PREFIX}:[0-9a-f]{{8}}:[0-9a-f]{{{DIGEST_HEX}}}$")
# What people may paste: the full form, or the short one shown in tables and Events.
SHORT_PATTERN = re.compile(rf"^{PREFIX}:[0-9a-f]{{{SHORT_HEX}}}$")


def short(fingerprint: str) -> str:
    """The display form: enough to tell values apart in a table, not to look one up alone."""
    if not PATTERN.match(fingerprint):
        return fingerprint
    return f"{PREFIX}:{fingerprint.rsplit(':', 1)[1][:SHORT_HEX]}"


def is_fingerprint(text: str) -> bool:
    return bool(PATTERN.match(text) or SHORT_PATTERN.match(text))


def key_id(fingerprint: str) -> str | None:
    return fingerprint.split(":")[1] if PATTERN.match(fingerprint) else None
