"""The reconciler: brings one pod's projection in line with its task, one pod at a time.

Every entry point (a pod event, a scheduled expiry, a changed or deleted AgentCredential, a
request) ends in `reconcile(key)` for one projection ("namespace/binding"): gather the pod,
its Secret's bookkeeping and the credentials from memory, ask `rules.planning.plan` what to
do, do it, and schedule the next look. Work on one key is serialised by a lock; different
pods proceed concurrently. A stale picture of a Secret is re-read and planned again; any
other failure is retried from state a little later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ...api import labels
from ...api.pods import PodTask, pod_ref, split_key
from ...api.projection import (
    ProjectionState,
    Subject,
    csi_record,
    new_projection,
    parse_projection,
    secret_body,
    secret_patch,
    with_values,
    without,
)
from ...api.reasons import RevocationReason
from ...api.times import format_time, utcnow
from ...platform import metrics
from ...platform.kube import Conflict, Kube, NotFound, status_of
from ...platform.revocations import RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.planning import RECOVERABLE, Plan, Problem, plan
from ...rules.seal import Bookkeeping
from ...sources.base import Produced, Sources, SourceUnavailable
from ..audit import AuditTrail
from ..events import EventRecorder
from ..scheduler import Scheduler
from ..status.statusbook import StatusBook
from ..store import ProjectionStore
from ..view import ClusterView
from .bindings import BindingOwners
from .csi_volumes import CsiVolumes
from .due import BindingDue
from .pod_checks import PodChecks
from .revoker import RevokeOrder, Revoker

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
UNGATE_PATCH = {"spec": {"schedulingGates": [{"$patch": "delete", "name": labels.SCHEDULING_GATE}]}}

Records = dict[str, CredentialRecord | None]


class StalePicture(Exception):
    """Our picture of a Secret was stale (or the Secret is gone): re-read it and plan again."""


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        store: ProjectionStore,
        scheduler: Scheduler,
        sources: Sources,
        revoker: Revoker,
        audit: AuditTrail,
        events: EventRecorder,
        book: StatusBook,
        *,
        view: ClusterView,
        bindings: BindingOwners,
        checks: PodChecks,
        bookkeeping: Bookkeeping,
        revocations: RevocationList,
        ca_bundle: Callable[[], bytes] = lambda: b"",
        csi: CsiVolumes | None = None,
    ) -> None:
        self.kube, self.store, self.scheduler, self.sources = kube, store, scheduler, sources
        self.bookkeeping, self.revocations = bookkeeping, revocations
        self.revoker, self.audit, self.events, self.book = revoker, audit, events, book
        self.view, self.bindings, self.checks = view, bindings, checks
        self.ca_bundle = ca_bundle  # written into each pod's Secret next to its values
        # Pods served by agentcred's CSI node plugin: their values are written there, not in a Secret.
        self.csi = csi if csi is not None else CsiVolumes()
        self.loaded = asyncio.Event()  # the managed Secrets have been listed into the store
        self._locks: dict[str, asyncio.Lock] = {}
        self._attempts: dict[str, int] = {}
        self._reported: dict[str, tuple[Problem, ...]] = {}
        self._waiting: dict[tuple[str, str], set[str]] = {}  # pods held back by a credential's problem
        # Pods seen in a terminal phase, by UID: Succeeded and Failed are final, so a status
        # that later says otherwise (nothing but a bad actor writes that) gets no new value.
        self._finished: dict[str, str] = {}
        # Whose each binding is, once we wrote for it: a copy of a pod's admission (same
        # binding, another UID) never takes over, not even once the first pod is gone.

    # -- entry points ----------------------------------------------------------------

    async def reconcile(self, key: str, task: PodTask | None = None, renew_now: frozenset[str] = frozenset()) -> None:
        """Bring one pod's projection in line with its task; `task` overrides the index;
        `renew_now` replaces those credentials' live values whether due or not."""
        if not self.view.leading():
            return
        # Until the Secrets are listed, "no bookkeeping" would mean "unknown", not "none".
        await self.loaded.wait()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                for _ in range(3):
                    current = self._final(task if task is not None else self.view.pod(key))
                    try:
                        await self._run_plan(key, current, renew_now)
                        break
                    except StalePicture:
                        await self.refresh(key)
            except Exception as error:
                # The API server restarting, a timeout, a refusal: look again shortly, from
                # state, rather than leave a pod gated or a value unrevoked until its next event.
                delay = self._backoff(key)
                log.warning("could not bring %s in line (%s); again in %.0fs", key, status_of(error) or error, delay)
                self.scheduler.schedule(BindingDue(key), utcnow() + dt.timedelta(seconds=delay))
        if self.store.get(key) is None and self.view.pod(key) is None and not lock.locked():
            self._locks.pop(key, None)

    async def reconcile_all(self, keys: Any) -> None:
        await asyncio.gather(*(self.reconcile(key) for key in keys))

    def waiting_on(self, namespace: str, credential: str) -> set[str]:
        """The pods held back by a problem of this credential (forgotten once asked)."""
        return self._waiting.pop((namespace, credential), set())

    async def revoke_value(
        self,
        key: str,
        credential: str,
        reason: RevocationReason,
        pod_name: str | None = None,
        tombstone: bool = True,
        message: str | None = None,
    ) -> int:
        """Revoke one credential's live value in one projection now (1 if there was one);
        `tombstone=False` lets a later plan issue it again (a leaked static value, once rotated);
        `message` is what a person said about it."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            for _ in range(3):
                state = self.store.get(key)
                if state is None or credential not in state.values or (pod_name and state.pod_name != pod_name):
                    return 0
                task = self.view.pod(key)
                subject = Subject.of_task(task) if task else Subject.of_state(state)
                revocation = RevokeOrder(credential, state.values[credential], reason, message)
                remaining = (
                    without(state, {credential: reason})
                    if tombstone
                    else dataclasses.replace(state, values={k: v for k, v in state.values.items() if k != credential})
                )
                patch = secret_patch(remaining, {}, (credential,), previous=state, sign=self.bookkeeping.sign)
                write: Callable[[], Awaitable[dict[str, Any] | ProjectionState]]
                write = functools.partial(self.kube.patch_secret, state.namespace, state.secret_name, patch)
                if state.csi:
                    write = functools.partial(self._write_csi, remaining, {}, {credential: reason})
                try:
                    written: dict[str, Any] | ProjectionState = await self.revoker.revoke(
                        subject, [revocation], write, tell_pod=task is not None
                    )
                except NotFound:
                    self.store.forget(key)
                    return 0
                except Conflict:
                    await self.refresh(key)
                    continue
                self._remember(written)
                return 1
            return 0

    async def _write_csi(
        self, state: ProjectionState, values: dict[str, bytes], revoked: dict[str, RevocationReason]
    ) -> ProjectionState:
        """A CSI projection's write: each value (and its sealed record) handed to the node
        plugin that holds its volume, each revocation too; memory is the only copy here."""
        written = dataclasses.replace(state, csi=True)
        for name, value in values.items():
            issued = written.values[name]
            record = csi_record(written, name, self.bookkeeping.sign)
            self.csi.put(written.key, name, value, issued.fingerprint, format_time(issued.expires_at), record)
        for name, reason in revoked.items():
            self.csi.revoke(written.key, name, reason)
        return written

    async def refresh(self, key: str) -> None:
        """Re-read a projection's Secret into memory (a CSI projection has none: memory is all)."""
        known = self.store.get(key)
        if known is not None and known.csi:
            return
        namespace, binding = split_key(key)
        body = await self.kube.find_secret(namespace, labels.secret_name(binding))
        state = parse_projection(body, self.bookkeeping.verify) if body is not None else None
        if state is None:
            self.store.forget(key)
        else:
            self.store.put(state)

    # -- the plan, carried out ---------------------------------------------------------

    async def _run_plan(self, key: str, task: PodTask | None, renew_now: frozenset[str]) -> None:
        state = self.store.get(key)
        if task is not None and self.bindings.owner(key, state) not in (None, task.uid):
            self.checks.binding_taken(task)  # another pod made this binding first: not this pod's to touch
            return
        now = utcnow()
        if state is not None and not state.sealed:
            await self._start_over(key, task, state, now)
            return
        names = task.credentials if task else tuple(state.values) if state else ()
        namespace = task.namespace if task else state.namespace if state else ""
        records: Records = {name: self.view.credential(namespace, name) for name in names}
        barred = frozenset(name for name in names if task and self.revocations.bars(task.uid, name, now))
        not_before = {
            name: moment
            for name in names
            if task and (moment := self.revocations.fresh_after(task.uid, name)) is not None and moment > now
        }
        # A CSI value is first issued when the plugin asks (the kubelet publishes the volume):
        # an operator that restarted must not issue afresh to pods whose plugin still holds one.
        awaiting = frozenset(name for name in (task.csi if task else ()) if not self.csi.published(key, name))
        decided = plan(task, state, records, now, renew_now, barred, not_before, awaiting)
        if decided.delete_secret:
            assert state is not None
            await self._end(key, task, state, decided, now)
            return
        if task is None:  # gone before anything was issued: nothing to do
            return
        if (
            task.gated
            and decided.issue
            and self.revocations.over_budget(task.namespace, self.store.live_in(task.namespace))
        ):
            # Every pod given a value leaves an entry on the shared revocation list when its task
            # ends: a namespace at its budget waits for its entries to lapse, so one tenant's
            # churn never fills the list every tenant's revocations travel on.
            held = f"namespace {task.namespace} has used its revocation-list budget ({self.revocations.budget})"
            waiting = tuple(
                Problem(issue.credential, "RevocationBudget", f"{held}: the pod waits until entries lapse")
                for issue in decided.issue
            )
            decided = dataclasses.replace(decided, issue=(), ungate=False, problems=(*decided.problems, *waiting))
        for issue in decided.issue:
            if issue.planned_at is not None:
                metrics.renewal_lateness.observe(max((now - issue.planned_at).total_seconds(), 0.0))
        produced, problems = await self._produce(task, decided, records, now)
        if produced or decided.revoke:
            await self._write(task, state, produced, decided, records, now)
        if decided.ungate and not problems:
            await self._ungate(task)
            if task.admitted_at is not None:
                metrics.projection_latency.observe(max((utcnow() - task.admitted_at).total_seconds(), 0.0))
        self._follow_up(task, decided, problems, now)

    async def _produce(
        self, task: PodTask, decided: Plan, records: Records, now: dt.datetime
    ) -> tuple[dict[str, Produced], list[Problem]]:
        produced: dict[str, Produced] = {}
        problems = list(decided.problems)
        for issue in decided.issue:
            record = records[issue.credential]
            assert record is not None
            try:
                produced[issue.credential] = await self.sources.of(record).produce(task, record, issue, now)
            except SourceUnavailable as unavailable:
                problems.append(Problem(issue.credential, unavailable.reason, unavailable.message))
                self.book.source_failed(record, unavailable.reason, unavailable.message)
        return produced, problems

    async def _write(
        self,
        task: PodTask,
        state: ProjectionState | None,
        produced: dict[str, Produced],
        decided: Plan,
        records: Records,
        now: dt.datetime,
    ) -> None:
        """Issue, renew and revoke in one write of the pod's Secret."""
        revokes = {r.credential: r.reason for r in decided.revoke}
        base = state or new_projection(task)
        # A recoverable revocation leaves no tombstone: the pod may have the credential again.
        tombstones = {name: reason for name, reason in revokes.items() if reason not in RECOVERABLE}
        desired = without(with_values(base, {n: p.issued for n, p in produced.items()}), tombstones)
        desired = dataclasses.replace(desired, values={k: v for k, v in desired.values.items() if k not in revokes})
        values = {name: p.value for name, p in produced.items()}
        keys = {name: p.key for name, p in produced.items() if p.key is not None}
        subject = Subject.of_task(task)
        revocations = [
            RevokeOrder(name, state.values.get(name) if state else None, reason) for name, reason in revokes.items()
        ]
        entries = [
            self.audit.issue(subject, record, item.issued)
            for name, item in produced.items()
            if (record := records[name]) is not None
        ]
        entries += self.revoker.ahead(subject, revocations)
        written: dict[str, Any] | ProjectionState
        with self.audit.ahead(entries):
            try:
                if task.by_csi:
                    written = await self._write_csi(dataclasses.replace(desired, csi=True), values, revokes)
                elif state is None:
                    written = await self.kube.create_secret(
                        task.namespace,
                        secret_body(desired, values, task.uid, self.bookkeeping.sign, self.ca_bundle(), keys),
                    )
                else:
                    written = await self.kube.patch_secret(
                        task.namespace,
                        state.secret_name,
                        secret_patch(
                            desired,
                            values,
                            tuple(revokes),
                            previous=state,
                            sign=self.bookkeeping.sign,
                            ca=self.ca_bundle(),
                            keys=keys,
                        ),
                    )
            except (Conflict, NotFound) as error:
                # A stale picture, or the Secret was deleted behind our back: read it again
                # and plan anew (a lost Secret of a live pod is issued afresh: healed).
                raise StalePicture() from error
        self._remember(written)
        self.bindings.note(task)
        for name, item in produced.items():
            record = records[name]
            assert record is not None
            self.book.issued(record, now, renewal=item.issued.renewals > 0)
        if produced and not any(p.issued.renewals for p in produced.values()):
            self.events.post(
                pod_ref(task.namespace, task.name, task.uid),
                "Normal",
                "CredentialsIssued",
                f"issued {', '.join(sorted(produced))} for ServiceAccount {task.service_account}",
            )
        await self.revoker.after(subject, revocations)

    async def _end(
        self, key: str, task: PodTask | None, state: ProjectionState, decided: Plan, now: dt.datetime
    ) -> None:
        """The task ended (or the pod is unknown): revoke everything and delete its Secret."""
        subject = Subject.of_task(task) if task else Subject.of_state(state)
        revocations = [RevokeOrder(r.credential, state.values.get(r.credential), r.reason) for r in decided.revoke]

        async def delete() -> None:
            if state.csi:
                for revocation in revocations:
                    self.csi.revoke(key, revocation.credential, revocation.reason)
                return
            try:
                await self.kube.delete_secret(state.namespace, state.secret_name)
            except NotFound:
                pass  # the garbage collector was faster: gone all the same

        await self.revoker.revoke(subject, revocations, delete, tell_pod=False)
        metrics.revocation_latency.observe(max((utcnow() - now).total_seconds(), 0.0))
        self.store.forget(key)
        self.scheduler.cancel(BindingDue(key))
        self._attempts.pop(key, None)
        self._reported.pop(key, None)

    async def _start_over(self, key: str, task: PodTask | None, state: ProjectionState, now: dt.datetime) -> None:
        """Bookkeeping we did not write (damaged, or forged by someone who may edit Secrets):
        nothing in it counts. The Secret goes, every token the pod was issued until now is
        revoked, and the pod (if it lives) is planned afresh, within its sealed lifetime."""
        subject = Subject.of_task(task) if task else Subject(state.namespace, None, None)
        revocations = [RevokeOrder(name, None, "unreadable-state") for name in (task.credentials if task else ())]

        async def delete() -> None:
            try:
                await self.kube.delete_secret(state.namespace, state.secret_name)
            except NotFound:
                pass

        await self.revoker.revoke(subject, revocations, delete, tell_pod=False)
        self.store.forget(key)
        if task is not None:
            self.scheduler.schedule(BindingDue(key), now)

    async def _ungate(self, task: PodTask) -> None:
        try:
            await self.kube.patch_pod(task.namespace, task.name, UNGATE_PATCH)
        except NotFound:
            pass  # deleted meanwhile

    def _follow_up(self, task: PodTask, decided: Plan, problems: list[Problem], now: dt.datetime) -> None:
        """Schedule the next look: a retry with backoff while something stands in the way
        (and tell people once per change of problems), else the next renewal or expiry."""
        if problems:
            for problem in problems:
                if problem.credential in task.csi:  # a publish waiting for it is answered with why
                    self.csi.problem(task.key, problem.credential, f"{problem.reason}: {problem.message}")
            self.scheduler.schedule(BindingDue(task.key), now + dt.timedelta(seconds=self._backoff(task.key)))
            for problem in problems:
                self._waiting.setdefault((task.namespace, problem.credential), set()).add(task.key)
            if tuple(problems) != self._reported.get(task.key):
                self._reported[task.key] = tuple(problems)
                self._report(task, problems)
            return
        self._attempts.pop(task.key, None)
        self._reported.pop(task.key, None)
        if decided.next_due is not None:
            self.scheduler.schedule(BindingDue(task.key), decided.next_due)

    def _report(self, task: PodTask, problems: list[Problem]) -> None:
        subject = Subject.of_task(task)
        for problem in problems:
            self.events.post(pod_ref(task.namespace, task.name, task.uid), "Warning", problem.reason, problem.message)
            record = self.view.credential(task.namespace, problem.credential)
            self.audit.deny(
                subject,
                problem.reason,
                problem.message,
                credential=problem.credential,
                category=record.spec.category if record and record.spec else None,
            )

    def _backoff(self, key: str) -> float:
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]

    def _final(self, task: PodTask | None) -> PodTask | None:
        if task is None:
            return None
        if task.phase in ("Succeeded", "Failed"):
            self._finished[task.uid] = task.phase
        elif task.uid in self._finished:
            task = dataclasses.replace(task, phase=self._finished[task.uid])
        if task.deleted:
            self._finished.pop(task.uid, None)
        return task

    def _remember(self, written: dict[str, Any] | ProjectionState) -> None:
        if isinstance(written, ProjectionState):
            self.store.put(written)
            return
        observed = parse_projection(written, self.bookkeeping.verify)
        if observed is not None:
            self.store.put(observed)
