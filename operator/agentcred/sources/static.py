"""The `secretRef` source: a static value copied from an upstream Secret its owner shares.

The operator can read Secrets its tenants cannot, so the copy happens only when the Secret
as read right now is shared with this very credential. A static value cannot be revoked
upstream: revoking removes it from the pod, nothing more. A value reported leaked is copied
to no pod again until the upstream Secret holds a different one.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from ..api import labels
from ..api.fingerprints import short
from ..api.model import SourceKind
from ..api.pods import PodTask
from ..api.projection import IssuedValue, Subject
from ..platform.fingerprints import Fingerprints
from ..rules.credentials import CredentialRecord, shared_secret, upstream_problem
from ..rules.leaks import Compromise, still_compromised
from ..rules.planning import Issue
from .base import Produced, SourceUnavailable

SecretReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def _no_marks(record: CredentialRecord) -> list[Compromise]:
    return []


class StaticSource:
    kind: SourceKind = "secretRef"

    def __init__(
        self,
        read_secret: SecretReader,
        fingerprints: Fingerprints,
        compromised: Callable[[CredentialRecord], list[Compromise]] = _no_marks,
        rotated: Callable[[CredentialRecord], None] = lambda record: None,
    ) -> None:
        self._read_secret, self._fingerprints = read_secret, fingerprints
        self._compromised, self._rotated = compromised, rotated

    async def produce(self, task: PodTask, record: CredentialRecord, issue: Issue, now: dt.datetime) -> Produced:
        spec = record.spec
        assert spec is not None and spec.source.secret_ref is not None
        ref = spec.source.secret_ref
        upstream = await self._read_secret(record.namespace, ref.name)
        shared = upstream is not None and (upstream["metadata"].get("labels") or {}).get(labels.SHARED_LABEL) == "true"
        problem = upstream_problem(record, shared_secret(upstream) if upstream is not None and shared else None)
        if problem is not None:
            raise SourceUnavailable(problem.reason, f"AgentCredential {record.name}: {problem.message}")
        assert upstream is not None
        value = base64.b64decode(upstream["data"][ref.key])
        marks = self._compromised(record)
        version = upstream["metadata"].get("resourceVersion")
        for mark in marks:
            if still_compromised(mark, self._fingerprints.under(mark.fingerprint, value), version):
                raise SourceUnavailable(
                    "Compromised",
                    f"AgentCredential {record.name}: the value in Secret {ref.name} (fingerprint "
                    f"{short(mark.fingerprint)}) was reported leaked; rotate it upstream",
                )
        if marks:
            self._rotated(record)
        return Produced.of(
            value, kind=self.kind, record=record, issue=issue, now=now, fingerprint=self._fingerprints(value)
        )

    async def revoked(
        self,
        record: CredentialRecord | None,
        credential: str,
        value: IssuedValue,
        subject: Subject,
        reason: str,
        until: dt.datetime,
    ) -> None:
        """Nothing to tell anyone: the value stays valid upstream until its owner rotates it."""
