"""Taking over: the start-up sweep and a new leader's first act (`TakeOver`).

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
import itertools
import logging
from collections.abc import Iterable, Sequence

from ...api import labels
from ...api.pods import PodTask
from ...api.projection import ProjectionState, Subject, parse_projection
from ...api.times import utcnow
from ...platform.kube import Kube, namespaced
from ...rules.seal import Bookkeeping
from ..status.statusbook import StatusBook
from ..store import ProjectionStore
from ..view import ClusterView
from .credential_lifecycle import CredentialLifecycle
from .due import BindingDue
from .pod_watch import PodIndex
from .reconciler import Reconciler
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
            self.reconciler.scheduler.schedule(BindingDue(key), now)
        for record_key in list(self.book.tallies):
            self.book.touch(record_key)


async def _nothing() -> None:
    """The act was the garbage collector's, already done."""


class TakeOver:
    """A new leader's (or a lone replica's) first act, retried until it succeeds: list the
    managed Secrets, re-plan everything, flag what followers saw unadmitted, finish deletions
    no leader finished. Until it has, the replica is not ready (`taking_over`)."""

    def __init__(
        self,
        handover: Handover,
        kube: Kube,
        bookkeeping: Bookkeeping,
        pods: PodIndex,
        warm: asyncio.Event,
        lifecycle: CredentialLifecycle,
        view: ClusterView,
        namespaces: Sequence[str] = (),
    ) -> None:
        self.handover, self.kube, self.bookkeeping, self.pods = handover, kube, bookkeeping, pods
        self.warm, self.lifecycle, self.view = warm, lifecycle, view
        self.namespaces = namespaces  # namespace-scoped: the only places Secrets may be listed

    def taking_over(self) -> str | None:
        """A leader that has not yet listed its Secrets and re-planned serves no one."""
        listing = self.view.leading() and self.warm.is_set() and not self.handover.reconciler.loaded.is_set()
        return "taking over (listing the managed Secrets)" if listing else None

    async def run(self) -> None:
        # Only once every index has listed: planning against a half-listed index would take
        # live pods' Secrets for orphans.
        await self.warm.wait()
        for attempt in itertools.count():
            try:
                await self.handover.take_over(self.pods.keys(), await self._managed_states())
                # Labelled pods no webhook admitted (created before it was installed) that a
                # follower saw at start-up: flagged now that this replica leads.
                self.handover.reconciler.checks.flag_pending()
                for record in self.view.credentials():
                    if record.deleting:
                        await self.lifecycle.finalize(record)
                return
            except Exception:
                delay = min(2.0**attempt, 30.0)
                log.exception("taking over failed; again in %.0fs", delay)
                await asyncio.sleep(delay)

    async def _managed_states(self) -> list[ProjectionState]:
        """The managed Secrets' bookkeeping, read from their metadata a page at a time: in
        every namespace, or (namespace-scoped) in each watched one."""
        selector = f"{labels.MANAGED_LABEL}=true"
        paths = [namespaced("v1", ns, "secrets") for ns in self.namespaces] if self.namespaces else ["/api/v1/secrets"]
        states: list[ProjectionState] = []
        for path in paths:
            async for items in self.kube.metadata_pages(path, selector):
                states.extend(s for item in items if (s := parse_projection(item, self.bookkeeping.verify)) is not None)
        return states
