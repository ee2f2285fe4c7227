"""The projection engine: carries out plans against the cluster, one pod at a time.

Every entry point (a pod event, a Secret event, a scheduled expiry, a deleted or revoked
AgentCredential) ends in `reconcile(key)` for one pod's projection (keyed "namespace/binding"):
gather the pod, its Secret's bookkeeping and the credentials from memory, ask
`planning.plan` what to do, do it, and schedule the next look. Work on one key is
serialised by a lock; different pods proceed concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator

from . import audit, labels, metrics
from .credentials import CredentialRecord
from .events import EventRecorder, pod_ref
from .exchange import EXCHANGE_MAX_TTL
from .issuing import Produced, SourceUnavailable, produce
from . import kube as kube_errors
from .kube import Kube, status_of
from .minting import MintingClient
from .planning import Plan, Problem, exception_end, plan
from .projection import (
    IssuedValue,
    PodTask,
    ProjectionState,
    format_time,
    new_projection,
    parse_projection,
    secret_body,
    secret_patch,
    split_key,
    with_values,
    without,
)
from .revocations import RevocationList
from .scheduler import Scheduler, utcnow
from .signing import KeyRing
from .status import status_patch
from .statusbook import StatusBook
from .store import ProjectionStore

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
TASK_ENDS = ("task-succeeded", "task-failed", "pod-deleted", "orphaned")
UNGATE_PATCH = {"spec": {"schedulingGates": [{"$patch": "delete", "name": labels.SCHEDULING_GATE}]}}

CredentialLookup = Callable[[str, str], CredentialRecord | None]
PodLookup = Callable[[str], PodTask | None]


class NotLeader(Exception):
    """This replica is not the leader: the leader will do it."""


class Conflict(Exception):
    """Our picture of a Secret was stale: re-read it and plan again."""


@dataclass(frozen=True)
class EngineSettings:
    issuer: str
    status_interval: float = 1.0
    handover_window: float = 30.0  # seconds a dead leader may have missed before an election


class Engine:
    def __init__(
        self,
        kube: Kube,
        keyring: KeyRing,
        settings: EngineSettings,
        *,
        credentials: CredentialLookup,
        pods: PodLookup,
        events: EventRecorder,
        revocations: RevocationList,
        minter: MintingClient,
    ) -> None:
        self.kube = kube
        self.keyring = keyring
        self.settings = settings
        self.credential = credentials
        self.pod = pods
        self.events = events
        self.revocations = revocations
        self.minter = minter
        # Only the leader writes; followers keep their memory warm and wait (see `leader`).
        self.leading: Callable[[], bool] = lambda: True
        self.warm = asyncio.Event()  # every index has listed (see handlers.crd_event)
        self.loaded = asyncio.Event()  # the managed Secrets have been listed into the store
        self._background: set[asyncio.Task[None]] = set()
        self.store = ProjectionStore()
        self.book = StatusBook()
        self.scheduler = Scheduler(self._scheduled, partition=_namespace_of)
        self._locks: dict[str, asyncio.Lock] = {}
        self._attempts: dict[str, int] = {}
        self._reported: dict[str, tuple[Problem, ...]] = {}
        self._waiting: dict[tuple[str, str], set[str]] = {}
        self._written_status: dict[tuple[str, str], dict[str, Any]] = {}
        self._handled_requests: set[str] = set()
        self._generations: dict[tuple[str, str], int] = {}
        # Pods seen in a terminal phase, by UID: Succeeded and Failed are final, so a status
        # that later says otherwise (nothing but a bad actor writes that) gets no new value.
        self._finished: dict[str, str] = {}
        self._flagged: set[str] = set()  # pod UIDs already told they get nothing
        self._verdicts: dict[tuple[str, str], tuple[bool, str, str]] = {}  # last verdict seen per credential
        # Tasks that ended while this replica followed: a new leader finishes their revocation.
        self._ended_while_following: list[tuple[dt.datetime, PodTask]] = []

    # -- entry points --------------------------------------------------------------

    async def reconcile(self, key: str, task: PodTask | None = None, renew_now: frozenset[str] = frozenset()) -> None:
        """Bring one pod's projection in line with its task; `task` overrides the index;
        `renew_now` replaces those credentials' live values whether due or not."""
        if not self.leading():
            return
        # Until the Secrets are listed, "no bookkeeping" would mean "unknown", not "none".
        await self.loaded.wait()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                for _ in range(3):
                    current = self._final(task if task is not None else self.pod(key))
                    try:
                        await self._run_plan(key, current, renew_now)
                        break
                    except Conflict:
                        await self._refresh(key, current)
            except Exception as error:
                # The API server restarting, a timeout, a refusal: look again shortly, from
                # state, rather than leave a pod gated or a value unrevoked until its next event.
                attempt = self._attempts.get(key, 0)
                self._attempts[key] = attempt + 1
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("could not bring %s in line (%s); again in %.0fs", key, status_of(error) or error, delay)
                self.scheduler.schedule(("binding", key), utcnow() + dt.timedelta(seconds=delay))
        if self.store.get(key) is None and self.pod(key) is None and not lock.locked():
            self._locks.pop(key, None)

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

    def load(self, states: Iterable[ProjectionState]) -> int:
        """Fill the memory from a listing of the managed Secrets (their metadata only)."""
        count = 0
        for state in states:
            self.store.put(state)
            count += 1
        return count

    async def resync(self, pod_keys: Iterable[str], states: Iterable[ProjectionState] | None = None,
                     batch: int = 200) -> None:
        """Re-plan every known projection -- on start (the sweep) and on election, so that
        nothing a previous leader left undone is lost: an ended task's Secret is revoked,
        a Secret with no pod at all is revoked as an orphan, renewals are rescheduled."""
        if states is not None:
            self.load(states)
        self.loaded.set()
        window = utcnow() - dt.timedelta(seconds=self.settings.handover_window)
        ended = [task for seen, task in self._ended_while_following if seen >= window]
        self._ended_while_following.clear()
        for task in ended:
            if self.store.get(task.key) is None and not task.gated and task.deleted:
                # Its pod was deleted while the leader was down and the garbage collector
                # took the Secret with it: the revocation happened, so it is recorded.
                who = {**self._who(task), "removed_by": "garbage-collector"}
                for name in task.credentials:
                    entry = self._revoke_entry(task.namespace, name, None, task.end_reason or "pod-deleted", who)
                    metrics.observe_audit(entry)
                    self._after_revoke(task.namespace, name, None, task.end_reason or "pod-deleted", who)
        await self._reconcile_all_tasks(task for task in ended if self.store.get(task.key) is not None)
        keys = sorted(set(pod_keys) | {state.key for state in self.store})
        log.info("re-planning %d projection(s)", len(keys))
        for start in range(0, len(keys), batch):
            await self._reconcile_all(keys[start:start + batch])
        for record_key in list(self.book.tallies):
            self.book.touch(record_key)

    def note_ended(self, task: PodTask) -> None:
        """A follower saw a task end: the leader revokes it -- or, if the leader is down,
        whoever is elected next does (see `resync`)."""
        now = utcnow()
        window = now - dt.timedelta(seconds=self.settings.handover_window)
        self._ended_while_following = [e for e in self._ended_while_following if e[0] >= window]
        self._ended_while_following.append((now, task))

    async def credential_changed(self, record: CredentialRecord, force: bool = False) -> None:
        """A credential was seen: refresh its status; re-plan the pods it may affect."""
        self.book.touch(record.key)
        judged = self.credential(record.namespace, record.name)
        if judged is not None:
            self._note_verdict(judged)
        end = exception_end(record)
        if end is not None and end > utcnow():
            self.scheduler.schedule(("credential", record.namespace, record.name), end)
        affected = self._waiting.pop(record.key, set())
        # Our own status writes come back as events too; only a new spec (or the first
        # sight, or a date that expired an exception) can change what pods may hold.
        if force or self._generations.get(record.key) != record.generation:
            affected |= self.store.keys_with(record.namespace, record.name)
        self._generations[record.key] = record.generation
        await self._reconcile_all(affected)

    async def reevaluate(self, records: Iterable[CredentialRecord]) -> None:
        """What surrounds these credentials changed (a policy, a namespace's labels, a shared
        upstream Secret): act on those whose verdict changed."""
        changed = []
        for record in records:
            judged = self.credential(record.namespace, record.name)
            if judged is not None and self._note_verdict(judged):
                changed.append(record)
        for record in changed:
            await self.credential_changed(record, force=True)

    def _note_verdict(self, judged: CredentialRecord) -> bool:
        """Remember the verdict; True if it differs from the last one seen (first sight: False)."""
        verdict = judged.verdict()
        seen = (verdict.ready, verdict.reason, verdict.message)
        previous = self._verdicts.get(judged.key)
        self._verdicts[judged.key] = seen
        return previous is not None and previous != seen

    async def credential_deleted(self, record: CredentialRecord) -> int:
        """The finalizer's work: revoke every projection of the credential first."""
        if not self.leading():
            raise NotLeader()
        count = await self.revoke_credential(record, reason="credential-deleted")
        self.book.forget(record.key)
        self._verdicts.pop(record.key, None)
        self._written_status.pop(record.key, None)
        self._generations.pop(record.key, None)
        self.scheduler.cancel(("credential", record.namespace, record.name))
        return count

    async def revoke_credential(self, record: CredentialRecord, reason: str, pod_name: str | None = None) -> int:
        """Revoke the credential's live values in every pod (or one pod) right now."""
        await self.loaded.wait()
        keys = self.store.keys_with(record.namespace, record.name)
        results = await asyncio.gather(
            *(self._revoke_one(key, record, reason, pod_name) for key in keys)
        )
        return sum(results)

    def _new_request(self, record: CredentialRecord, request: dict[str, Any], status_field: str) -> str | None:
        """The id of a request not carried out yet, by the leader; else None."""
        if not self.leading():
            return None  # the leader carries it out; a new leader finds it still pending
        request_id = str(request.get("id") or "")
        handled = (record.status.get(status_field) or {}).get("id")
        if not request_id or request_id == handled or request_id in self._handled_requests:
            return None
        self._handled_requests.add(request_id)
        return request_id

    async def renew_now(self, record: CredentialRecord, request: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out an `agentcred renew` request: replace every live value now."""
        request_id = self._new_request(record, request, "lastRenewal")
        if request_id is None:
            return None
        await self.loaded.wait()
        keys = self.store.keys_with(record.namespace, record.name)
        await asyncio.gather(*(self.reconcile(key, renew_now=frozenset({record.name})) for key in keys))
        outcome = {"id": request_id, "at": format_time(utcnow()), "renewed": len(keys)}
        await self.kube.patch_credential_status(record.namespace, record.name, {"lastRenewal": outcome})
        self.events.post(record.owner_ref, "Normal", "Renewed", f"renewed {len(keys)} live value(s) of {record.name}")
        return outcome

    async def emergency_revoke(self, record: CredentialRecord, request: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out an `agentcred revoke` request recorded on the AgentCredential once."""
        request_id = self._new_request(record, request, "lastRevocation")
        if request_id is None:
            return None
        pod_name = request.get("pod") or None
        count = await self.revoke_credential(record, reason="emergency", pod_name=pod_name)
        outcome = {
            "id": request_id,
            "at": format_time(utcnow()),
            "pod": pod_name,
            "revoked": count,
            "reason": str(request.get("reason") or "")[:256] or None,
        }
        await self.kube.patch_credential_status(record.namespace, record.name, {"lastRevocation": outcome})
        where = f"pod {pod_name}" if pod_name else "every pod"
        self.events.post(
            record.owner_ref, "Warning", "EmergencyRevoke", f"revoked {count} live value(s) of {record.name} in {where}"
        )
        return outcome

    # -- background loops ----------------------------------------------------------

    async def flush_status_forever(self, lookup_all: Callable[[], Iterable[CredentialRecord]]) -> None:
        next_day = self._next_midnight()
        while True:
            await asyncio.sleep(self.settings.status_interval)
            if utcnow() >= next_day:  # reviews and exceptions turn over with the date
                for record in lookup_all():
                    self.book.touch(record.key)
                next_day = self._next_midnight()
            if self.leading():
                await self.flush_status()

    async def flush_status(self) -> None:
        metrics.set_active(self.store.count_by_category())
        metrics.revocation_list.set(len(self.revocations))
        metrics.events_dropped.set(self.events.dropped)
        dirty, self.book.dirty = self.book.dirty, set()
        now = utcnow()
        for namespace, name in dirty:
            record = self.credential(namespace, name)
            if record is None:
                continue
            keys = self.store.keys_with(namespace, name)
            expiries = [
                state.values[name].expires_at
                for state in (self.store.get(b) for b in keys)
                if state is not None and name in state.values
            ]
            desired = self.book.desired(record, len(expiries), min(expiries, default=None), now)
            known = {**record.status, **self._written_status.get(record.key, {})}
            changes = status_patch(known, desired)
            if not changes:
                continue
            try:
                await self.kube.patch_credential_status(namespace, name, changes)
            except Exception as error:
                log.warning("status of %s/%s not written (%s); will retry", namespace, name, status_of(error) or error)
                self.book.dirty.add(record.key)
                continue
            self._written_status[record.key] = {**self._written_status.get(record.key, {}), **changes}
            self._post_ready_transition(record, known, desired)

    # -- the plan ------------------------------------------------------------------

    async def _run_plan(self, key: str, task: PodTask | None, renew_now: frozenset[str] = frozenset()) -> None:
        state = self.store.get(key)
        if task is not None and state is not None and state.pod_uid and state.pod_uid != task.uid:
            # Another pod made this binding first: the Secret is not this pod's to touch.
            self._binding_taken(task)
            return
        names = task.credentials if task else tuple(state.values) if state else ()
        namespace = task.namespace if task else state.namespace if state else ""
        records = {name: self.credential(namespace, name) for name in names}
        now = utcnow()
        decided = plan(task, state, records, now, renew_now)
        if decided.delete_secret:
            await self._delete(key, state, decided, records, now)
            return
        if task is None:  # gone before anything was issued: nothing to do
            return
        for issue in decided.issue:
            if issue.planned_at is not None:
                metrics.renewal_lateness.observe(max((now - issue.planned_at).total_seconds(), 0.0))
        produced, problems = await self._produce(task, decided, records, now)
        revokes = {r.credential: r.reason for r in decided.revoke}
        if produced or revokes:
            await self._write(task, state, produced, revokes, records, now)
        if decided.ungate and not problems:
            await self._ungate(task)
            if task.admitted_at is not None:
                metrics.projection_latency.observe(max((utcnow() - task.admitted_at).total_seconds(), 0.0))
        self._follow_up(task, decided, problems, now)

    async def _produce(
        self, task: PodTask, decided: Plan, records: dict[str, CredentialRecord | None], now: dt.datetime
    ) -> tuple[dict[str, Produced], list[Problem]]:
        produced: dict[str, Produced] = {}
        problems = list(decided.problems)
        for issue in decided.issue:
            record = records[issue.credential]
            assert record is not None
            try:
                produced[issue.credential] = await produce(
                    task, record, issue, keyring=self.keyring, issuer=self.settings.issuer,
                    read_secret=self.kube.find_secret, minter=self.minter, now=now,
                )
            except SourceUnavailable as unavailable:
                problems.append(Problem(issue.credential, unavailable.reason, unavailable.message))
                self.book.source_failed(record, unavailable.reason, unavailable.message)
        return produced, problems

    async def _write(
        self,
        task: PodTask,
        state: ProjectionState | None,
        produced: dict[str, Produced],
        revokes: dict[str, str],
        records: dict[str, CredentialRecord | None],
        now: dt.datetime,
    ) -> None:
        base = state or new_projection(task)
        desired = without(with_values(base, {n: p.issued for n, p in produced.items()}), revokes)
        values = {name: p.value for name, p in produced.items()}
        who = self._who(task)
        entries = [self._issue_entry(task, records[name], item.issued) for name, item in produced.items()]
        entries += [self._revoke_entry(task.namespace, name, state.values.get(name) if state else None, reason, who)
                    for name, reason in revokes.items()]
        with self._ahead(entries):
            try:
                if state is None:
                    written = await self.kube.create_secret(task.namespace, secret_body(desired, values, task.uid))
                else:
                    patch = secret_patch(desired, values, tuple(revokes), previous=state)
                    written = await self.kube.patch_secret(task.namespace, state.secret_name, patch)
            except (kube_errors.Conflict, kube_errors.NotFound) as error:
                # A stale picture, or the Secret was deleted behind our back: read it again
                # and plan anew (a lost Secret of a live pod is issued afresh: healed).
                raise Conflict() from error
        observed = parse_projection(written)
        if observed is not None:
            self.store.put(observed)
        for name, item in produced.items():
            record = records[name]
            assert record is not None
            self.book.issued(record, now, renewal=item.issued.renewals > 0)
        if produced and not any(p.issued.renewals for p in produced.values()):
            issued = ", ".join(sorted(produced))
            self.events.post(
                pod_ref(task.namespace, task.name, task.uid), "Normal", "CredentialsIssued",
                f"issued {issued} for ServiceAccount {task.service_account}",
            )
        for name, reason in revokes.items():
            self._after_revoke(task.namespace, name, state.values.get(name) if state else None, reason, who)
            self.events.post(
                pod_ref(task.namespace, task.name, task.uid), "Warning", "CredentialRevoked",
                f"revoked {name}: {reason}",
            )

    async def _delete(
        self,
        key: str,
        state: ProjectionState | None,
        decided: Plan,
        records: dict[str, CredentialRecord | None],
        now: dt.datetime,
    ) -> None:
        assert state is not None
        who = {"pod": state.pod_name, "pod_uid": state.pod_uid, "job": state.job}
        entries = [self._revoke_entry(state.namespace, r.credential, state.values.get(r.credential), r.reason, who)
                   for r in decided.revoke]
        with self._ahead(entries):
            try:
                await self.kube.delete_secret(state.namespace, state.secret_name)
            except Exception as error:
                if status_of(error) != 404:
                    raise
        metrics.revocation_latency.observe(max((utcnow() - now).total_seconds(), 0.0))
        for revoke in decided.revoke:
            self._after_revoke(state.namespace, revoke.credential, state.values.get(revoke.credential),
                               revoke.reason, who)
        self._ended(key)

    def _ended(self, key: str) -> None:
        self.store.forget(key)
        self.scheduler.cancel(("binding", key))
        self._attempts.pop(key, None)
        self._reported.pop(key, None)

    async def _revoke_one(self, key: str, record: CredentialRecord, reason: str, pod_name: str | None) -> int:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            for _ in range(3):
                state = self.store.get(key)
                if state is None or record.name not in state.values:
                    return 0
                if pod_name and state.pod_name != pod_name:
                    return 0
                task = self.pod(key)
                who = self._who(task) if task else {"pod": state.pod_name, "pod_uid": state.pod_uid, "job": state.job}
                value = state.values[record.name]
                patch = secret_patch(without(state, {record.name: reason}), {}, (record.name,), previous=state)
                try:
                    with self._ahead([self._revoke_entry(state.namespace, record.name, value, reason, who)]):
                        written = await self.kube.patch_secret(state.namespace, state.secret_name, patch)
                except Exception as error:
                    if status_of(error) == 404:
                        self.store.forget(key)
                        return 0
                    if status_of(error) != 409:
                        raise
                    await self._refresh(key, task)
                    continue
                observed = parse_projection(written)
                if observed is not None:
                    self.store.put(observed)
                self._after_revoke(state.namespace, record.name, value, reason, who)
                if task is not None:
                    self.events.post(pod_ref(task.namespace, task.name, task.uid), "Warning", "CredentialRevoked",
                                     f"revoked {record.name}: {reason}")
                return 1
            return 0

    # -- the audit trail: written ahead, so a crash can repeat a line but never lose one --

    @contextlib.contextmanager
    def _ahead(self, entries: list[dict[str, Any]]) -> Iterator[None]:
        """The entries were logged before acting; if the act fails, a `void` line follows
        each; if it succeeds, they count in the metrics."""
        try:
            yield
        except BaseException as error:
            for entry in entries:
                audit.record("void", voids=entry["action"], credential=entry.get("credential"),
                             namespace=entry.get("namespace"), podUID=entry.get("podUID"),
                             tokenId=entry.get("tokenId"), fingerprint=entry.get("fingerprint"),
                             reason=f"not applied ({status_of(error) or type(error).__name__})")
            raise
        for entry in entries:
            metrics.observe_audit(entry)

    @staticmethod
    def _who(task: PodTask) -> dict[str, Any]:
        return {"pod": task.name, "pod_uid": task.uid, "job": task.job, "service_account": task.service_account}

    def _issue_entry(self, task: PodTask, record: CredentialRecord | None, value: IssuedValue) -> dict[str, Any]:
        assert record is not None
        spec = record.spec
        return audit.record(
            "renew" if value.renewals > 0 else "issue",
            count=False,
            credential=record.name,
            namespace=task.namespace,
            category=spec.category if spec else None,
            owner=spec.owner if spec else None,
            podName=task.name,
            podUID=task.uid,
            job=task.job,
            serviceAccount=task.service_account,
            scope=spec.scope.model_dump(by_alias=True, exclude_none=True) if spec and spec.scope else None,
            tokenId=value.token_id,
            fingerprint=value.fingerprint,
            expiresAt=format_time(value.expires_at),
        )

    def _revoke_entry(self, namespace: str, name: str, value: IssuedValue | None, reason: str,
                      who: dict[str, Any]) -> dict[str, Any]:
        record = self.credential(namespace, name)
        return audit.record(
            "revoke",
            count=False,
            credential=name,
            namespace=namespace,
            category=value.category if value is not None else None,
            owner=record.spec.owner if record is not None and record.spec else None,
            reason=reason,
            tokenId=value.token_id if value is not None else None,
            fingerprint=value.fingerprint if value is not None else None,
            podName=who.get("pod"),
            podUID=who.get("pod_uid"),
            job=who.get("job"),
            serviceAccount=who.get("service_account"),
            removedBy=who.get("removed_by"),
        )

    def _after_revoke(self, namespace: str, name: str, value: IssuedValue | None, reason: str,
                      who: dict[str, Any]) -> None:
        """Once a value is gone: every token of the pod for it (the value, and all exchanged
        from it) on the revocation list, the minting service told, the credential's count
        updated."""
        record = self.credential(namespace, name)
        now = utcnow()
        if value is not None and value.source == "jwt" and who.get("pod_uid"):
            # Until every token it covers has expired; while the pod lives on, until it could
            # no longer hold one anyway, so it cannot exchange its way back.
            until = max(value.expires_at, now + EXCHANGE_MAX_TTL)
            if reason not in TASK_ENDS and record is not None and record.spec is not None:
                until = max(until, value.task_started_at + record.spec.max_lifetime_delta)
            self.revocations.revoke(who["pod_uid"], name, until)
        if value is not None and value.token_id and value.expires_at > now:
            if value.source == "webhook" and record is not None and record.spec and record.spec.source.webhook:
                task = asyncio.create_task(self._revoke_at_service(record, value.token_id, who, reason))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        if record is not None:
            self.book.revoked(record)

    async def _revoke_at_service(self, record: CredentialRecord, token_id: str, who: dict[str, Any],
                                 reason: str) -> None:
        try:
            await self.minter.revoke(record, token_id, who, reason)
        except SourceUnavailable as failure:
            log.warning("%s", failure.message)
            self.events.post(record.owner_ref, "Warning", "ServiceRevokeFailed", failure.message)

    async def still_there(self, task: PodTask) -> PodTask:
        """A pod that left the label-selected watch: deleted, or only unlabelled (opted out)?"""
        found = await self.kube.find_pod(task.namespace, task.name)
        meta = (found or {}).get("metadata") or {}
        if found is None or meta.get("uid") != task.uid or meta.get("deletionTimestamp"):
            return task
        return dataclasses.replace(task, deleted=False, opted_out=True)

    def _binding_taken(self, task: PodTask) -> None:
        if task.end_reason or task.uid in self._flagged:
            return
        self._flagged.add(task.uid)
        message = f"binding {task.binding} belongs to another pod: this pod gets no credentials"
        self.events.post(pod_ref(task.namespace, task.name, task.uid), "Warning", "BindingInUse", message)
        audit.record("deny", namespace=task.namespace, reason="binding-in-use", message=message, podName=task.name,
                     podUID=task.uid, serviceAccount=task.service_account)

    def flag_unadmitted(self, pod: dict[str, Any]) -> None:
        """A labelled pod the webhook did not admit (created before it was installed, or
        changed since): it gets nothing, and people are told."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not self.leading() or not uid or uid in self._flagged or meta.get("deletionTimestamp"):
            return
        if len(self._flagged) > 100_000:
            self._flagged.clear()
        self._flagged.add(uid)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        message = (f"pod has label {labels.INJECT_LABEL}=true but was not admitted by the agentcred webhook "
                   "(created before the webhook was installed, or altered since): it gets no credentials; "
                   "recreate it")
        self.events.post(pod_ref(namespace, name, uid), "Warning", "NotAdmitted", message)
        audit.record("deny", namespace=namespace, reason="not-admitted", message=message, podName=name, podUID=uid,
                     serviceAccount=(pod.get("spec") or {}).get("serviceAccountName") or "default")

    async def _ungate(self, task: PodTask) -> None:
        try:
            await self.kube.patch_pod(task.namespace, task.name, UNGATE_PATCH)
        except Exception as error:
            if status_of(error) != 404:
                raise

    def _follow_up(self, task: PodTask, decided: Plan, problems: list[Problem], now: dt.datetime) -> None:
        due_key = ("binding", task.key)
        if problems:
            attempt = self._attempts.get(task.key, 0)
            self._attempts[task.key] = attempt + 1
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            self.scheduler.schedule(due_key, now + dt.timedelta(seconds=delay))
            for problem in problems:
                self._waiting.setdefault((task.namespace, problem.credential), set()).add(task.key)
            if tuple(problems) != self._reported.get(task.key):
                self._reported[task.key] = tuple(problems)
                for problem in problems:
                    self.events.post(pod_ref(task.namespace, task.name, task.uid), "Warning", problem.reason,
                                     problem.message)
                    record = self.credential(task.namespace, problem.credential)
                    audit.record("deny", credential=problem.credential, namespace=task.namespace,
                                 category=record.spec.category if record and record.spec else None,
                                 reason=problem.reason, message=problem.message, podName=task.name,
                                 podUID=task.uid, job=task.job, serviceAccount=task.service_account)
            return
        self._attempts.pop(task.key, None)
        self._reported.pop(task.key, None)
        if decided.next_due is not None:
            self.scheduler.schedule(due_key, decided.next_due)

    # -- helpers -------------------------------------------------------------------

    async def _refresh(self, key: str, task: PodTask | None) -> None:
        namespace, raw_binding = split_key(key)
        body = await self.kube.find_secret(namespace, labels.secret_name(raw_binding))
        state = parse_projection(body) if body is not None else None
        if state is None:
            self.store.forget(key)
        else:
            self.store.put(state)

    async def _reconcile_all_tasks(self, tasks: Iterable[PodTask]) -> None:
        await asyncio.gather(*(self.reconcile(task.key, task) for task in tasks))

    async def _reconcile_all(self, keys: Iterable[str]) -> None:
        await asyncio.gather(*(self.reconcile(key) for key in keys))

    async def _scheduled(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        if not self.leading():
            return  # dropped: a new leader re-plans and reschedules everything
        if key[0] == "binding":
            await self.reconcile(key[1])
        elif key[0] == "credential":
            record = self.credential(key[1], key[2])
            if record is not None:
                await self.credential_changed(record, force=True)

    def _post_ready_transition(self, record: CredentialRecord, known: dict[str, Any], desired: dict[str, Any]) -> None:
        def ready(status: dict[str, Any]) -> dict[str, Any] | None:
            return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)

        before, after = ready(known), ready(desired)
        if after and (before is None or before.get("status") != after.get("status")):
            kind = "Normal" if after["status"] == "True" else "Warning"
            self.events.post(record.owner_ref, kind, after["reason"], after["message"])

    @staticmethod
    def _next_midnight() -> dt.datetime:
        tomorrow = utcnow().date() + dt.timedelta(days=1)
        return dt.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=dt.timezone.utc)


def _namespace_of(key: Hashable) -> str:
    """The tenant a scheduled key belongs to: ("binding", "ns/binding") or ("credential", ns, name)."""
    assert isinstance(key, tuple)
    return split_key(key[1])[0] if key[0] == "binding" else str(key[1])
