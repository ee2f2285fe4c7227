"""The one revocation sequence, whatever triggers it (a task's end, an emergency, a spec
that no longer allows a value, a policy, a leak):

1. an audit line per value, written *ahead* of the act (a `void` line follows if it fails);
2. the act: the Secret patched or deleted (the caller's part);
3. the pod and credential on the revocation list -- one entry covers the value and every token
   exchanged from it, and bars the pod from that credential while it lives on -- and the
   value's source told (a minting service is asked to revoke its value);
4. the credential's revoked count, and an Event on the pod.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ...api.pods import pod_ref
from ...api.projection import IssuedValue, Subject
from ...api.reasons import RevocationReason
from ...api.times import utcnow
from ...platform.revocations import ALL_CREDENTIALS, RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.planning import RECOVERABLE
from ...rules.scope import EXCHANGE_MAX_TTL
from ...sources.base import Sources
from ..audit import AuditTrail, Entry
from ..events import EventRecorder
from ..status.statusbook import StatusBook
from ..view import ClusterView

# Reasons a task ends for: its pod holds nothing any more, so its tokens need covering only
# until they expire. Any other reason leaves the pod running.
TASK_ENDS = frozenset({"task-succeeded", "task-failed", "pod-deleted", "orphaned"})

T = TypeVar("T")


@dataclass(frozen=True)
class RevokeOrder:
    credential: str
    value: IssuedValue | None  # None: nothing was live (a tombstone, or already gone)
    reason: RevocationReason  # the trigger (bounded: a metric label)
    message: str | None = None  # what a person said (`agentcred revoke --reason`)


# A leaked value: every token of the pod for that credential issued until now goes, a fresh one
# may follow (`spec.onLeak: reissue`); with `quarantine` the pod is barred instead.
LEAKED: RevocationReason = "leaked"
QUARANTINED: RevocationReason = "leaked-quarantine"
# Reasons that revoke what a pod held without barring it: its bookkeeping was unreadable, its
# value leaked, or its credential stopped allowing it for a while (rules.planning.RECOVERABLE),
# so only the tokens issued until now go (a fresh value may follow).
FRESH_START: frozenset[RevocationReason] = frozenset({"unreadable-state", LEAKED}) | RECOVERABLE
# Of those, the ones whose fresh value waits for the next whole second (`cut_off`).
CUT_OFF_REASONS: frozenset[RevocationReason] = frozenset({LEAKED}) | RECOVERABLE


def cut_off(now: dt.datetime) -> dt.datetime:
    """Where a leak's revocation ends: the next whole second. Tokens carry whole seconds
    (`iat`), so a cut-off inside a second would cover a fresh token minted in that second and
    spare none of the old; a fresh value is minted only once this moment has passed."""
    return now.replace(microsecond=0) + dt.timedelta(seconds=1)


# No token of ours lives longer than this (ttl is capped at 24h) plus an exchange's 5 minutes.
LONGEST_TOKEN = dt.timedelta(hours=24) + EXCHANGE_MAX_TTL


class Revoker:
    def __init__(
        self,
        audit: AuditTrail,
        sources: Sources,
        book: StatusBook,
        events: EventRecorder,
        view: ClusterView,
        revocations: RevocationList,
    ) -> None:
        self.audit, self.sources, self.book, self.events, self.view = audit, sources, book, events, view
        self.revocations = revocations

    def ahead(self, subject: Subject, revocations: Sequence[RevokeOrder]) -> list[Entry]:
        """Step 1: the audit lines, before the act (for `AuditTrail.ahead`)."""
        entries = []
        for revocation in revocations:
            record = self.view.credential(subject.namespace, revocation.credential)
            owner = record.spec.owner if record is not None and record.spec is not None else None
            entries.append(
                self.audit.revoke(
                    subject, revocation.credential, revocation.value, revocation.reason, owner, revocation.message
                )
            )
        return entries

    async def after(self, subject: Subject, revocations: Sequence[RevokeOrder], tell_pod: bool = True) -> None:
        """Steps 3 and 4, once the value is gone from the cluster."""
        now = utcnow()
        for revocation in revocations:
            record = self.view.credential(subject.namespace, revocation.credential)
            value = revocation.value
            if subject.pod_uid:
                self._list(subject, revocation, record, now)
            source = self.sources.of_value(value) if value is not None else None
            if value is not None and source is not None:
                until = self._covered_until(subject, revocation, record, now)
                await source.revoked(record, revocation.credential, value, subject, revocation.reason, until)
            if record is not None:
                self.book.revoked(record)
            if tell_pod and subject.pod and subject.pod_uid:
                self.events.post(
                    pod_ref(subject.namespace, subject.pod, subject.pod_uid),
                    "Warning",
                    "CredentialRevoked",
                    f"revoked {revocation.credential}: {revocation.reason}"
                    + (f": {revocation.message}" if revocation.message else ""),
                )

    async def revoke(
        self,
        subject: Subject,
        revocations: Sequence[RevokeOrder],
        act: Callable[[], Awaitable[T]],
        tell_pod: bool = True,
    ) -> T:
        """The whole sequence around `act` (step 2)."""
        with self.audit.ahead(self.ahead(subject, revocations)):
            result = await act()
        await self.after(subject, revocations, tell_pod)
        return result

    def _list(
        self, subject: Subject, revocation: RevokeOrder, record: CredentialRecord | None, now: dt.datetime
    ) -> None:
        """The revocation list entry: by the pod's UID (from the pod, or from bookkeeping we
        sealed), so whichever replica answers refuses every token of it."""
        assert subject.pod_uid
        until = self._covered_until(subject, revocation, record, now)
        before = (
            cut_off(now) if revocation.reason in CUT_OFF_REASONS else now if revocation.reason in FRESH_START else None
        )
        if revocation.reason in TASK_ENDS:
            # The task is over for every credential at once: one entry covers the pod, however
            # many credentials it held (16 entries each, a tenant's short pods filled shards).
            self.revocations.revoke(subject.pod_uid, ALL_CREDENTIALS, until, namespace=subject.namespace, ended=True)
            return
        self.revocations.revoke(subject.pod_uid, revocation.credential, until, before, namespace=subject.namespace)

    @staticmethod
    def _covered_until(
        subject: Subject, revocation: RevokeOrder, record: CredentialRecord | None, now: dt.datetime
    ) -> dt.datetime:
        """Until when: past the last token's expiry (unknown: the longest a token lives); while
        the pod lives on, also until its task could no longer hold one (counted from its sealed
        admission, which no one can move), so it cannot exchange or be issued its way back."""
        value = revocation.value
        until = max(value.expires_at if value else now + LONGEST_TOKEN, now + EXCHANGE_MAX_TTL)
        lives_on = revocation.reason not in TASK_ENDS | FRESH_START
        if lives_on and record is not None and record.spec is not None and subject.admitted_at is not None:
            until = max(until, subject.admitted_at + record.spec.max_lifetime_delta)
        return until
