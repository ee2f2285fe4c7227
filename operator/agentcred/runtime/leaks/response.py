"""Containing a leaked value: for each place it was issued to, revoke every live copy at once,
then give the pod what its credential's `spec.onLeak` says.

- `reissue` (the default): the pod's tokens for that credential issued until now go on the
  revocation list (covering the value and every token exchanged from it), a minting service
  is told to revoke its value, and once the cut-off second has passed a fresh value replaces
  the leaked one in the still-running pod: the agent carries on.
- `quarantine`: the value is removed and the pod barred from the credential; the pod is
  labelled `agentcred.dev/quarantined=true` (for a NetworkPolicy) and told by an Event.
- a static (`secretRef`) value cannot be revoked upstream: it is removed from every pod that
  holds it, the AgentCredential is marked `Compromised` with its fingerprint, and no pod gets
  it again until the upstream Secret holds a different value.
- a token whose pod has ended (or is unknown here) but that would still verify goes on the
  revocation list until it expires.

Each reported item ends in one `leak` audit line (fingerprint, where it was found, what was
revoked, who reported), Warning Events on the AgentCredential and the pods, and a metric by
category. A string that is not ours is answered as such and audited without the string.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ...api import labels
from ...api.fingerprints import short
from ...api.pods import PodTask, pod_ref
from ...api.projection import Subject
from ...api.times import utcnow
from ...platform.kube import Kube, NotFound, status_of
from ...rules.credentials import CredentialRecord
from ...rules.leaks import Candidate, Compromise, in_remit
from ..audit import AuditTrail
from ..events import EventRecorder
from ..projection.due import BindingDue
from ..projection.reconciler import Reconciler
from ..projection.revoker import LEAKED, QUARANTINED, RevokeOrder, cut_off
from ..status.statusbook import StatusBook
from ..view import ClusterView
from .tracer import Holder, Trace, Tracer

log = logging.getLogger(__name__)

QUARANTINE_LABEL = labels.QUARANTINED_LABEL


@dataclass(frozen=True)
class Reporter:
    """Who reported (a reviewed ServiceAccount), and whether its remit is every namespace."""

    namespace: str
    name: str
    everywhere: bool = False

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass
class LeakResponder:
    tracer: Tracer
    reconciler: Reconciler
    kube: Kube
    view: ClusterView
    book: StatusBook
    audit: AuditTrail
    events: EventRecorder

    def visible(self, trace: Trace, candidate: Candidate, reporter: Reporter) -> Trace:
        """What this reporter may learn and act on: what lies within its remit (the rest is
        answered unknown, as a value nobody holds is, revealing nothing)."""
        holders = tuple(h for h in trace.holders if in_remit(reporter.namespace, reporter.everywhere, h.namespace))
        if holders or reporter.everywhere or (not trace.holders and trace.verdict != "unknown"):
            return Trace(trace.verdict, trace.fingerprint, holders, trace.why)
        # A tenant's reporter: the same words whether the value is held elsewhere or nowhere,
        # and they say the rule, not the answer.
        what = (
            "no live or remembered value has this fingerprint or token id"
            if candidate.by_reference
            else "agentcred issued no value with this fingerprint that it still knows of"
        )
        why = (
            f"{what} in namespace {reporter.namespace}: a reporter sees only its own namespace's values "
            "(reporters that act in every namespace are listed apart, as cluster reporters)"
        )
        return Trace("unknown", trace.fingerprint, why=why)

    def trace(self, candidate: Candidate, reporter: Reporter) -> Trace:
        trace = self.visible(self.tracer.trace(candidate), candidate, reporter)
        self.audit.record(
            "trace",
            verdict=trace.verdict,
            fingerprint=trace.fingerprint,
            reporter=reporter.username,
            holders=[_who(h) for h in trace.holders] or None,
        )
        return trace

    async def report(self, candidate: Candidate, reporter: Reporter) -> dict[str, Any]:
        """Contain one reported value; the answer for the reporter."""
        trace = self.visible(self.tracer.trace(candidate), candidate, reporter)
        revoked: list[Holder] = []
        reissue: set[tuple[str, str]] = set()
        followed: dict[str, str] = {}  # credential -> what the pod gets next
        for holder in trace.holders:
            if holder.state in ("expired", "revoked"):
                continue
            try:
                done, next_step = await self._contain(holder, trace)
            except Exception as error:  # one holder failing must not spare the others
                log.warning(
                    "leaked value not contained in %s/%s (%s)",
                    holder.namespace,
                    holder.credential,
                    status_of(error) or type(error).__name__,
                )
                continue
            if done:
                revoked.append(holder)
                followed[f"{holder.namespace}/{holder.credential}"] = next_step
                if next_step == "reissued" and holder.key:
                    reissue.add((holder.key, holder.credential))
        if reissue:
            # The fresh value must carry an `iat` past the cut-off, or the revocation covers it.
            await asyncio.sleep(max((cut_off(utcnow()) - utcnow()).total_seconds(), 0.0))
            await asyncio.gather(
                *(self.reconciler.reconcile(key, renew_now=frozenset({name})) for key, name in sorted(reissue))
            )
        outcome = _outcome(trace, revoked)
        self._tell(trace, candidate, reporter, revoked, followed, outcome)
        return {
            **trace.to_json(),
            "label": "true_positive" if trace.verdict == "ours" else "false_positive",
            "type": candidate.type,
            "outcome": outcome,
            "revoked": len(revoked),
            "next": sorted(set(followed.values())),
        }

    async def _contain(self, holder: Holder, trace: Trace) -> tuple[bool, str]:
        """Revoke one holder's copy; (revoked?, what the pod gets next)."""
        record = self.view.credential(holder.namespace, holder.credential)
        on_leak = record.spec.on_leak if record is not None and record.spec is not None else "reissue"
        static = holder.kind == "secretRef" or (holder.kind == "gateway" and holder.token_id is None)
        if static and record is not None and holder.fingerprint:
            await self._mark_compromised(record, holder.fingerprint)
        if holder.kind == "gateway" and holder.token_id is None:
            # Handed to gateways only: refused to every gateway from now until rotated upstream.
            return record is not None, "compromised"
        state = self.reconciler.store.get(holder.key) if holder.key else None
        task = self.view.pod(holder.key) if holder.key else None
        alive = state is not None and holder.credential in state.values and task is not None and not task.end_reason
        if not alive:
            if holder.kind not in ("minted", "exchanged", "gateway") or not holder.pod_uid:
                return False, "none"
            # Its pod has ended (or is not ours to write to): the token would still verify.
            subject = Subject(holder.namespace, holder.pod, holder.pod_uid, holder.job)
            await self.reconciler.revoker.revoke(
                subject, [RevokeOrder(holder.credential, None, LEAKED)], _nothing, tell_pod=False
            )
            return True, "none"
        assert holder.key is not None and state is not None and task is not None
        if on_leak == "quarantine":
            count = await self.reconciler.revoke_value(holder.key, holder.credential, QUARANTINED)
            await self._quarantine(task, holder)
            return count > 0, "quarantined"
        if static:
            # Removed (no tombstone): the pod gets the credential again once it is rotated upstream.
            count = await self.reconciler.revoke_value(holder.key, holder.credential, LEAKED, tombstone=False)
            self.reconciler.scheduler.schedule(BindingDue(holder.key), utcnow())
            return count > 0, "compromised"
        # Revoked on the list now (the value and every token exchanged from it); the Secret keeps
        # the revoked value a moment until the fresh one replaces it, so the agent's file never goes.
        subject = Subject.of_task(task)
        await self.reconciler.revoker.revoke(
            subject, [RevokeOrder(holder.credential, state.values[holder.credential], LEAKED)], _nothing
        )
        return True, "reissued"

    async def _mark_compromised(self, record: CredentialRecord, fingerprint: str) -> None:
        spec = record.spec
        assert spec is not None and spec.source.secret_ref is not None
        upstream = await self.kube.find_secret(record.namespace, spec.source.secret_ref.name)
        version = (upstream or {}).get("metadata", {}).get("resourceVersion")
        self.book.compromise(record, Compromise(fingerprint, version, utcnow()))

    async def _quarantine(self, task: PodTask, holder: Holder) -> None:
        try:
            await self.kube.patch_pod(task.namespace, task.name, {"metadata": {"labels": {QUARANTINE_LABEL: "true"}}})
        except NotFound:
            return
        except Exception as error:
            log.warning("pod %s/%s not labelled quarantined (%s)", task.namespace, task.name, status_of(error) or error)
        self.events.post(
            pod_ref(task.namespace, task.name, task.uid),
            "Warning",
            "Quarantined",
            f"{holder.credential} was reported leaked: revoked, and no new value follows "
            f"(spec.onLeak: quarantine); labelled {QUARANTINE_LABEL}=true",
        )

    def _tell(
        self,
        trace: Trace,
        candidate: Candidate,
        reporter: Reporter,
        revoked: list[Holder],
        followed: dict[str, str],
        outcome: str,
    ) -> None:
        first = trace.holders[0] if trace.holders else None
        self.audit.record(
            "leak",
            outcome=outcome,
            verdict=trace.verdict,
            fingerprint=trace.fingerprint,
            credential=first.credential if first else None,
            namespace=first.namespace if first else None,
            category=first.category if first else None,
            owner=first.owner if first else None,
            reporter=reporter.username,
            reportedFrom=candidate.origin() or None,
            revoked=[_who(h) for h in revoked] or None,
            next=followed or None,
        )
        display = short(trace.fingerprint) if trace.fingerprint else "?"
        for (namespace, credential), holders in _by_credential(revoked).items():
            record = self.view.credential(namespace, credential)
            pods = ", ".join(sorted({h.pod or "?" for h in holders}))
            if record is not None:
                self.events.post(
                    record.owner_ref,
                    "Warning",
                    "LeakReported",
                    f"a value of {credential} (fingerprint {display}) was reported leaked by {reporter.username}: "
                    f"revoked in pod(s) {pods}; next: {followed.get(f'{namespace}/{credential}', 'none')}",
                )
            for holder in holders:
                task = self.view.pod(holder.key) if holder.key else None
                if task is not None and task.uid == holder.pod_uid:
                    self.events.post(
                        pod_ref(task.namespace, task.name, task.uid),
                        "Warning",
                        "CredentialLeaked",
                        f"{credential} (fingerprint {display}) was reported leaked and is revoked; "
                        f"next: {followed.get(f'{namespace}/{credential}', 'none')}",
                    )


async def _nothing() -> None:
    """The Secret is left as it is (the fresh value replaces the leaked one right after)."""


def _who(holder: Holder) -> dict[str, Any]:
    return {
        "namespace": holder.namespace,
        "credential": holder.credential,
        "kind": holder.kind,
        "state": holder.state,
        "pod": holder.pod,
        "podUID": holder.pod_uid,
        "job": holder.job,
        "tokenId": holder.token_id,
    }


def _by_credential(holders: list[Holder]) -> dict[tuple[str, str], list[Holder]]:
    grouped: dict[tuple[str, str], list[Holder]] = {}
    for holder in holders:
        grouped.setdefault((holder.namespace, holder.credential), []).append(holder)
    return grouped


def _outcome(trace: Trace, revoked: list[Holder]) -> str:
    if trace.verdict != "ours":
        return trace.verdict
    if revoked:
        return "revoked"
    return "expired" if all(h.state == "expired" for h in trace.holders) else "already-revoked"
