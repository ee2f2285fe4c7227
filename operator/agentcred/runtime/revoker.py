"""The one revocation sequence, whatever triggers it (a task's end, an emergency, a spec
that no longer allows a value, a policy, a leak):

1. an audit line per value, written *ahead* of the act (a `void` line follows if it fails);
2. the act: the Secret patched or deleted (the caller's part);
3. the value's source told: minted tokens go on the revocation list (by pod, so every token
   exchanged from the value goes with it), a minting service is asked to revoke its value;
4. the credential's revoked count, and an Event on the pod.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..api.pods import pod_ref
from ..api.projection import IssuedValue, Subject
from ..api.times import utcnow
from ..rules.credentials import CredentialRecord
from ..rules.scope import EXCHANGE_MAX_TTL
from ..sources.base import Sources
from .audit import AuditTrail, Entry
from .events import EventRecorder
from .statusbook import StatusBook

# Reasons a task ends for: its pod holds nothing any more, so its tokens need covering only
# until they expire. Any other reason leaves the pod running.
TASK_ENDS = frozenset({"task-succeeded", "task-failed", "pod-deleted", "orphaned"})

T = TypeVar("T")
CredentialLookup = Callable[[str, str], CredentialRecord | None]


@dataclass(frozen=True)
class Revocation:
    credential: str
    value: IssuedValue | None  # None: nothing was live (a tombstone, or already gone)
    reason: str


class Revoker:
    def __init__(
        self, audit: AuditTrail, sources: Sources, book: StatusBook, events: EventRecorder, credential: CredentialLookup
    ) -> None:
        self.audit, self.sources, self.book, self.events, self.credential = audit, sources, book, events, credential

    def ahead(self, subject: Subject, revocations: Sequence[Revocation]) -> list[Entry]:
        """Step 1: the audit lines, before the act (for `AuditTrail.ahead`)."""
        entries = []
        for revocation in revocations:
            record = self.credential(subject.namespace, revocation.credential)
            owner = record.spec.owner if record is not None and record.spec is not None else None
            entries.append(
                self.audit.revoke(subject, revocation.credential, revocation.value, revocation.reason, owner)
            )
        return entries

    async def after(self, subject: Subject, revocations: Sequence[Revocation], tell_pod: bool = True) -> None:
        """Steps 3 and 4, once the value is gone from the cluster."""
        now = utcnow()
        for revocation in revocations:
            record = self.credential(subject.namespace, revocation.credential)
            value = revocation.value
            source = self.sources.of_value(value) if value is not None else None
            if value is not None and source is not None:
                await source.revoked(
                    record,
                    revocation.credential,
                    value,
                    subject,
                    revocation.reason,
                    self._covered_until(value, record, revocation.reason, now),
                )
            if record is not None:
                self.book.revoked(record)
            if tell_pod and subject.pod and subject.pod_uid:
                self.events.post(
                    pod_ref(subject.namespace, subject.pod, subject.pod_uid),
                    "Warning",
                    "CredentialRevoked",
                    f"revoked {revocation.credential}: {revocation.reason}",
                )

    async def revoke(
        self,
        subject: Subject,
        revocations: Sequence[Revocation],
        act: Callable[[], Awaitable[T]],
        tell_pod: bool = True,
    ) -> T:
        """The whole sequence around `act` (step 2)."""
        with self.audit.ahead(self.ahead(subject, revocations)):
            result = await act()
        await self.after(subject, revocations, tell_pod)
        return result

    @staticmethod
    def _covered_until(
        value: IssuedValue, record: CredentialRecord | None, reason: str, now: dt.datetime
    ) -> dt.datetime:
        """Until when the pod's tokens of this value must stay revoked: past the last one's
        expiry; while the pod lives on, also until it could no longer hold one anyway, so it
        cannot exchange its way back."""
        until = max(value.expires_at, now + EXCHANGE_MAX_TTL)
        if reason not in TASK_ENDS and record is not None and record.spec is not None:
            until = max(until, value.task_started_at + record.spec.max_lifetime_delta)
        return until
