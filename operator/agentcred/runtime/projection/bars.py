"""Bars last as long as their pods could hold the credential, whatever the tenant edits later.

A revocation while the pod lives on (an emergency revoke, a subject removed, a credential
deleted or no longer allowed) bars the pod from the credential on the shared revocation list,
until the task could no longer hold it: its sealed admission plus the credential's
`maxLifetime`. Sized once, at the revoke, that bar could be outlived: the tenant raised
`maxLifetime` (or deleted and re-created the credential with a longer one), deleted the pod's
Secret, and once the bar lapsed the same pod was issued a fresh value and exchanged tokens
again. The leader keeps every bar of a live pod until the pod's lifetime under the credential
as it is now -- and, past that, a while longer at a time for as long as the pod lives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ...api.pods import PodTask
from ...platform.revocations import ALL_CREDENTIALS, RevocationList
from ...rules.credentials import CredentialRecord

HORIZON = dt.timedelta(minutes=30)  # a live pod's bar reaches at least this far ahead


class Bars:
    def __init__(
        self,
        revocations: RevocationList,
        task: Callable[[str], PodTask | None],  # by pod UID: the pod as last seen, if admitted
        credential: Callable[[str, str], CredentialRecord | None],
    ) -> None:
        self.revocations, self.task, self.credential = revocations, task, credential

    def hold(self, now: dt.datetime) -> int:
        """Lengthen the bars of live pods that would lapse before the pod's lifetime ends (or
        within half the horizon); how many were lengthened."""
        lengthened = 0
        for entry in self.revocations.barring():
            task = self.task(entry.pod_uid)
            if task is None or task.end_reason is not None:
                continue  # its pod is gone: the bar covers its tokens until they expire, no longer
            wanted = max(self._lifetime_end(task, entry.credential) or now, now + HORIZON)
            if entry.until < wanted - HORIZON / 2:
                self.revocations.extend(entry, wanted)
                lengthened += 1
        return lengthened

    def _lifetime_end(self, task: PodTask, credential: str) -> dt.datetime | None:
        if task.admitted_at is None:
            return None
        names = task.credentials if credential == ALL_CREDENTIALS else (credential,)
        ends = [
            task.admitted_at + record.spec.max_lifetime_delta
            for name in names
            if (record := self.credential(task.namespace, name)) is not None and record.spec is not None
        ]
        return max(ends, default=None)
