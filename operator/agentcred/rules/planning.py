"""Decide, from state alone, what a pod's projection needs now: issue, renew, revoke, wait.

Pure: the engine gathers the pod, its Secret's bookkeeping and the credentials, asks for a
plan, carries it out, and calls again at `next_due`. One function, one place for the rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..api.pods import PodTask
from ..api.projection import IssuedValue, ProjectionState
from ..api.reasons import ProblemReason, RevocationReason
from .credentials import UNHEALTHY, CredentialRecord
from .delivery import renew_before


@dataclass(frozen=True)
class Issue:
    credential: str
    expires_at: dt.datetime
    task_started_at: dt.datetime
    renewals: int = 0
    planned_at: dt.datetime | None = None  # when a renewal was due (for lateness)

    @property
    def is_renewal(self) -> bool:
        return self.renewals > 0


# Reasons a live value goes while its task runs on, because its credential stopped allowing it
# for a while: not Ready (a policy or a namespace label changed, the upstream is gone, ...),
# the ServiceAccount no longer a subject, the static exception expired. They leave no
# tombstone: when the credential allows the pod again, the pod -- still running, still asking
# for it -- gets a fresh value, as a new pod would be admitted. Only the tokens issued until
# then stay revoked. Any other reason (the task's end, maxLifetime, `agentcred revoke`, the
# credential's deletion, a leak with quarantine, ...) is final for the pod.
RECOVERABLE: frozenset[RevocationReason] = frozenset({"credential-not-ready", "subject-removed", "exception-expired"})


@dataclass(frozen=True)
class Revoke:
    credential: str
    reason: RevocationReason


@dataclass(frozen=True)
class Problem:
    """Why a credential cannot be issued to this pod right now (it stays gated)."""

    credential: str
    reason: ProblemReason
    message: str


@dataclass(frozen=True)
class Plan:
    issue: tuple[Issue, ...] = ()
    revoke: tuple[Revoke, ...] = ()
    delete_secret: bool = False
    problems: tuple[Problem, ...] = ()
    ungate: bool = False
    next_due: dt.datetime | None = None

    @property
    def idle(self) -> bool:
        return not (self.issue or self.revoke or self.delete_secret or self.ungate)


def exception_end(record: CredentialRecord) -> dt.datetime | None:
    """A static value's exception holds through its `expires` day (UTC)."""
    spec = record.spec
    if spec is None or spec.exception is None:
        return None
    day_after = spec.exception.expires + dt.timedelta(days=1)
    return dt.datetime(day_after.year, day_after.month, day_after.day, tzinfo=dt.timezone.utc)


def _revocation_reason(task: PodTask, record: CredentialRecord | None, today: dt.date) -> RevocationReason | None:
    """Why a live value must go although its task goes on, or None."""
    if record is None:
        return "credential-deleted"
    verdict = record.verdict(today)
    if not verdict.ready and verdict.reason != UNHEALTHY:
        return "exception-expired" if verdict.reason == "ExceptionExpired" else "credential-not-ready"
    if not record.allows(task.service_account):
        return "subject-removed"
    return None


def _problem(task: PodTask, name: str, record: CredentialRecord | None, today: dt.date) -> Problem | None:
    where = f"namespace {task.namespace}"
    if record is None:
        return Problem(name, "CredentialNotFound", f"AgentCredential {name} does not exist in {where}")
    verdict = record.verdict(today)
    if not verdict.ready:
        return Problem(name, "CredentialNotReady", f"AgentCredential {name} in {where} is not Ready: {verdict.message}")
    if not record.allows(task.service_account):
        return Problem(
            name,
            "NotASubject",
            f"ServiceAccount {task.service_account} is not a subject of AgentCredential {name} in {where}",
        )
    return None


def _due(value: IssuedValue | Issue, record: CredentialRecord, started: dt.datetime) -> dt.datetime:
    spec = record.spec
    assert spec is not None  # only called for ready records
    lifetime_end = started + spec.max_lifetime_delta
    renewal = value.expires_at - renew_before(spec, record.refresh_delay)
    due = lifetime_end if value.expires_at >= lifetime_end else renewal
    end = exception_end(record)
    return min(due, end) if end else due


def _gateway_only(task: PodTask, name: str, record: CredentialRecord | None) -> bool:
    """Admitted gateway-only, or gateway-only now: nothing of it is written into the pod."""
    return task.gateway_only(name) or (
        record is not None and record.spec is not None and record.spec.projection.gateway_only
    )


@dataclass
class _Draft:
    """What `plan` decides for one pod, credential by credential."""

    task: PodTask
    started: dt.datetime  # the task's admission: maxLifetime counts from here
    now: dt.datetime
    issues: list[Issue] = field(default_factory=list)
    revokes: list[Revoke] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    dues: list[dt.datetime] = field(default_factory=list)

    def keep_or_renew(
        self, name: str, record: CredentialRecord | None, value: IssuedValue, *, barred: bool, renew: bool
    ) -> None:
        """A live value: revoked (and why), renewed (when due, or asked), or kept until its due time."""
        now, started = self.now, self.started
        reason: RevocationReason | None = "barred" if barred else _revocation_reason(self.task, record, now.date())
        if reason is None and record is not None and record.spec is not None:
            spec = record.spec
            lifetime_end = started + spec.max_lifetime_delta
            end = exception_end(record)
            if now >= lifetime_end:
                reason = "max-lifetime"
            elif end is not None and now >= end:
                reason = "exception-expired"
            elif now >= value.expires_at - renew_before(spec, record.refresh_delay) or renew:
                renewal = Issue(
                    name,
                    expires_at=min(now + spec.ttl_delta, lifetime_end),
                    task_started_at=started,
                    renewals=value.renewals + 1,
                    planned_at=min(value.expires_at - renew_before(spec, record.refresh_delay), now),
                )
                self.issues.append(renewal)
                self.dues.append(_due(renewal, record, started))
            else:
                self.dues.append(_due(value, record, started))
        if reason is not None:
            self.revokes.append(Revoke(name, reason))
            # The pod waits for it from now on, told why, as a new pod would be.
            waiting = _problem(self.task, name, record, now.date()) if reason in RECOVERABLE else None
            if waiting is not None:
                self.problems.append(waiting)

    def issue_fresh(self, name: str, record: CredentialRecord | None, held_until: dt.datetime | None) -> None:
        """No live value: issued, unless something stands in the way (told), or a revocation's
        cut-off second has not passed yet (due then)."""
        problem = _problem(self.task, name, record, self.now.date())
        if problem is not None:
            self.problems.append(problem)
            return
        assert record is not None and record.spec is not None
        lifetime_end = self.started + record.spec.max_lifetime_delta
        if self.now >= lifetime_end:
            reached = f"the task reached maxLifetime {record.spec.max_lifetime} of {name}"
            self.problems.append(Problem(name, "MaxLifetimeReached", reached))
            return
        if held_until is not None and self.now < held_until:
            self.dues.append(held_until)
            return
        fresh = Issue(
            name, expires_at=min(self.now + record.spec.ttl_delta, lifetime_end), task_started_at=self.started
        )
        self.issues.append(fresh)
        self.dues.append(_due(fresh, record, self.started))


def plan(
    task: PodTask | None,
    state: ProjectionState | None,
    records: Mapping[str, CredentialRecord | None],
    now: dt.datetime,
    renew_now: frozenset[str] = frozenset(),
    barred: frozenset[str] = frozenset(),
    not_before: Mapping[str, dt.datetime] | None = None,
    awaiting_publish: frozenset[str] = frozenset(),
) -> Plan:
    """What the pod's projection needs now; `renew_now` names credentials whose live values
    are replaced at once (`agentcred renew`), due or not; `barred` names credentials the
    revocation list bars this pod from (revoked for it while it lives, whatever its Secret
    says); `not_before` says when a credential revoked up to a cut-off may be issued afresh
    (tokens carry whole seconds: one minted before the cut-off would be born revoked);
    `awaiting_publish` names CSI-delivered credentials whose volume no plugin has asked for
    yet: their first value waits for it (the plugin asks when the kubelet publishes). The
    task's lifetime counts from its sealed admission, never from bookkeeping."""
    if task is not None and task.end_reason == "opted-out":
        # The pod lives on without the opt-in label (only possible while the label guard is
        # not installed): its values go, and the Secret stays as a tombstone so that putting
        # the label back brings nothing back. The garbage collector removes it with the pod.
        done = set(state.revoked) if state else set()
        names = [
            name for name in dict.fromkeys([*task.credentials, *(state.values if state else ())]) if name not in done
        ]
        return Plan(revoke=tuple(Revoke(name, "opted-out") for name in names))
    if task is None or task.end_reason:
        if state is None or (task is None and not state.values and "opted-out" in state.revoked.values()):
            return Plan()  # nothing live; a tombstone stays until the garbage collector takes it
        ending: RevocationReason = (task.end_reason if task else None) or "orphaned"
        return Plan(revoke=tuple(Revoke(name, ending) for name in state.values), delete_secret=True)

    live = dict(state.values) if state else {}
    revoked = dict(state.revoked) if state else {}
    # maxLifetime counts from admission (sealed, so no one can move it), not from the first
    # value or anything a Secret says: a healed pod gets no extra lifetime.
    started = min(task.admitted_at or now, now)
    draft = _Draft(task, started, now)

    # Values of credentials the pod no longer asks for, or that were damaged, go.
    for name in live:
        if name not in task.credentials:
            draft.revokes.append(Revoke(name, "not-requested"))

    projected = [name for name in task.credentials if not _gateway_only(task, name, records.get(name))]
    for name in task.credentials:
        record = records.get(name)
        value = live.get(name)
        if name not in projected:
            # Gateway-only: never written into the pod. A value written before the credential
            # became gateway-only goes.
            if value is not None and name not in task.gateway:
                draft.revokes.append(Revoke(name, "gateway-only"))
        elif name in revoked or "*" in revoked or (name in barred and value is None):
            if task.gated:
                draft.problems.append(Problem(name, "Revoked", f"credential {name} was revoked for this pod"))
        elif value is not None:
            draft.keep_or_renew(name, record, value, barred=name in barred, renew=name in renew_now)
        elif name in awaiting_publish:
            continue
        else:
            draft.issue_fresh(name, record, held_until=(not_before or {}).get(name))
    issues, revokes, problems, dues = draft.issues, draft.revokes, draft.problems, draft.dues

    revoked_now = {r.credential for r in revokes}
    ready_to_run = not problems and all(
        (name in live and name not in revoked_now) or any(i.credential == name for i in issues) for name in projected
    )
    return Plan(
        issue=tuple(issues),
        revoke=tuple(revokes),
        problems=tuple(problems),
        ungate=task.gated and ready_to_run,
        next_due=min(dues, default=None),
    )
