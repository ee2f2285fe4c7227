"""Minted token ids that were revoked before their expiry, kept until they expire.

Verifiers consult the list (served over HTTPS with the JWKS); it is persisted in a
ConfigMap in the operator's namespace (token ids are not secret) so a restart keeps it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

REVOCATIONS_CONFIGMAP = "agentcred-revocations"
REVOCATIONS_KEY = "revoked.json"


class RevocationList:
    def __init__(self) -> None:
        self._entries: dict[str, dt.datetime] = {}
        self.dirty = False

    def __contains__(self, token_id: str) -> bool:
        return token_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, token_id: str, expires_at: dt.datetime) -> None:
        self._entries[token_id] = expires_at
        self.dirty = True

    def prune(self, now: dt.datetime) -> None:
        expired = [jti for jti, exp in self._entries.items() if exp <= now]
        for jti in expired:
            del self._entries[jti]
        self.dirty = self.dirty or bool(expired)

    def document(self) -> dict[str, Any]:
        """The served form: token id -> expiry (RFC 3339)."""
        return {
            "revoked": [
                {"jti": jti, "exp": int(exp.timestamp())} for jti, exp in sorted(self._entries.items())
            ]
        }

    def to_configmap_data(self) -> dict[str, str]:
        return {REVOCATIONS_KEY: json.dumps({jti: int(exp.timestamp()) for jti, exp in self._entries.items()})}

    def load_configmap_data(self, data: dict[str, str] | None) -> None:
        raw = json.loads((data or {}).get(REVOCATIONS_KEY) or "{}")
        for jti, exp in raw.items():
            self._entries[str(jti)] = dt.datetime.fromtimestamp(int(exp), dt.timezone.utc)
