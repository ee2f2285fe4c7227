"""Taking over: the start-up sweep and a new leader's first act.

On start, and whenever this replica is elected, it lists the managed Secrets (metadata only)
into memory and re-plans every known projection, so that nothing a previous leader left
undone is lost: an ended task's Secret is revoked, a Secret with no pod at all is revoked as
an orphan, renewals are rescheduled. Tasks a follower saw end while no leader acted are
finished first; a pod deleted meanwhile, whose Secret the garbage collector already took,
still gets its revocation recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable

from ...api.pods import PodTask
from ...api.projection import ProjectionState, Subject
from ...api.times import utcnow
from ..status.statusbook import StatusBook
from ..store import ProjectionStore
from .reconciler import Reconciler, binding_key
from .revoker import RevokeOrder, Revoker

log = logging.getLogger(__name__)


class Handover:
    def __init__(
        self, reconciler: Reconciler, revoker: Revoker, store: ProjectionStore, book: StatusBook, window: dt.timedelta
    ) -> None:
        self.reconciler, self.revoker, self.store, self.book = reconciler, revoker, store, book
        self.window = window  # how long a dead leader may have missed things before an election
        self._ended_while_following: list[tuple[dt.datetime, PodTask]] = []

    def note_ended(self, task: PodTask) -> None:
        """A follower saw a task end: the leader revokes it -- or, if the leader is down,
        whoever is elected next does."""
        now = utcnow()
        self._ended_while_following = [e for e in self._ended_while_following if e[0] >= now - self.window]
        self._ended_while_following.append((now, task))

    async def take_over(self, pod_keys: Iterable[str], states: Iterable[ProjectionState]) -> None:
        for state in states:
            self.store.put(state)
        self.reconciler.loaded.set()
        since = utcnow() - self.window
        ended = [task for seen, task in self._ended_while_following if seen >= since]
        self._ended_while_following.clear()
        for task in ended:
            if self.store.get(task.key) is None and not task.gated and task.deleted:
                # Its pod was deleted while no leader acted and the garbage collector took the
                # Secret with it: the revocation happened, so it is recorded.
                reason = task.end_reason or "pod-deleted"
                subject = Subject.of_task(task).removed("garbage-collector")
                revocations = [RevokeOrder(name, None, reason) for name in task.credentials]
                await self.revoker.revoke(subject, revocations, _nothing, tell_pod=False)
        await asyncio.gather(
            *(self.reconciler.reconcile(task.key, task) for task in ended if self.store.get(task.key) is not None)
        )
        keys = sorted(set(pod_keys) | {state.key for state in self.store})
        log.info("re-planning %d projection(s)", len(keys))
        # Through the scheduler, bounded per namespace: a tenant whose minting service hangs
        # holds back its own pods, never another tenant's renewals.
        now = utcnow()
        for key in keys:
            self.reconciler.scheduler.schedule(binding_key(key), now)
        for record_key in list(self.book.tallies):
            self.book.touch(record_key)


async def _nothing() -> None:
    """The act was the garbage collector's, already done."""
