"""What happens when an AgentCredential, or what surrounds it, changes.

A new spec (or the first sight, or a date that expires an exception) re-plans the pods it may
affect; a change around it (a policy, the namespace's labels, a shared upstream Secret) does
so only when its verdict changes; its deletion revokes it everywhere first (the finalizer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ...api import labels
from ...api.labels import FINALIZER
from ...api.times import utcnow
from ...platform.kube import ApiError, Conflict, Kube, NotFound
from ...rules.credentials import CredentialRecord
from ...rules.planning import exception_end
from ..scheduler import Scheduler
from ..status.minting_health import MintingHealth
from ..status.status_writer import StatusWriter
from ..status.statusbook import StatusBook
from ..store import ProjectionStore
from ..view import ClusterView
from .due import CredentialDue
from .reconciler import Reconciler
from .revoke_renew import Requests

log = logging.getLogger(__name__)

VerdictKey = tuple[bool, str, str]


class NotLeader(Exception):
    """This replica is not the leader: the leader will do it."""


class CredentialLifecycle:
    def __init__(
        self,
        kube: Kube,
        reconciler: Reconciler,
        requests: Requests,
        store: ProjectionStore,
        book: StatusBook,
        status: StatusWriter,
        scheduler: Scheduler,
        view: ClusterView,
        minting_health: MintingHealth,
    ) -> None:
        self.kube, self.reconciler, self.requests, self.store, self.book = kube, reconciler, requests, store, book
        self.status, self.scheduler, self.view, self.minting_health = status, scheduler, view, minting_health
        self._generations: dict[tuple[str, str], int] = {}
        self._verdicts: dict[tuple[str, str], VerdictKey] = {}

    async def seen(self, record: CredentialRecord, annotations: Mapping[str, str]) -> None:
        """A credential's event: a deletion is finalized; otherwise its status and the pods it
        may affect follow, the finalizer is put on, and `agentcred revoke`/`renew` requests
        recorded on it are carried out."""
        if record.deleting:
            count = await self.finalize(record)
            if count is not None:
                log.info("revoked %d value(s) of %s/%s before its deletion", count, record.namespace, record.name)
            return
        self.minting_health.seen(record)
        await self.changed(record)
        await self.hold(record)
        for annotation, act in (
            (labels.REVOKE_ANNOTATION, self.requests.revoke),
            (labels.RENEW_ANNOTATION, self.requests.renew),
        ):
            request = _request(annotations, annotation, record)
            if request is not None:
                await act(record, request)

    async def changed(self, record: CredentialRecord, force: bool = False) -> None:
        """A credential was seen: refresh its status; re-plan the pods it may affect."""
        self.book.touch(record.key)
        judged = self.view.credential(record.namespace, record.name)
        if judged is not None:
            self._note_verdict(judged)
        end = exception_end(record)
        if end is not None and end > utcnow():
            self.scheduler.schedule(CredentialDue(record.namespace, record.name), end)
        affected = self.reconciler.waiting_on(record.namespace, record.name)
        # Our own status writes come back as events too; only a new spec (or the first
        # sight, or a date that expired an exception) can change what pods may hold.
        if force or self._generations.get(record.key) != record.generation:
            affected |= self.store.keys_with(record.namespace, record.name)
        self._generations[record.key] = record.generation
        await self.reconciler.reconcile_all(affected)

    async def surroundings_changed(self, records: Iterable[CredentialRecord]) -> None:
        """A policy, a namespace's labels or a shared upstream Secret changed: act on the
        credentials whose verdict changed with it."""
        changed = []
        for record in records:
            try:
                judged = self.view.credential(record.namespace, record.name)
                if judged is not None and self._note_verdict(judged):
                    changed.append(record)
            except Exception:  # one credential must never stop the others' re-judging
                log.exception("AgentCredential %s/%s not judged", record.namespace, record.name)
        for record in changed:
            await self.changed(record, force=True)

    async def hold(self, record: CredentialRecord) -> None:
        """Put the operator's finalizer on a live credential (the leader does), so that its
        deletion waits until every value is revoked."""
        if FINALIZER in record.finalizers or not self.view.leading():
            return
        operations: list[dict[str, Any]] = (
            [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
            if record.finalizers
            else [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
        )
        try:
            await self.kube.patch_credential(record.namespace, record.name, operations)
        except (Conflict, NotFound, ApiError) as error:  # changed meanwhile: its next event tries again
            log.info("finalizer not added to %s/%s yet (%s)", record.namespace, record.name, error.status)

    async def finalize(self, record: CredentialRecord) -> int | None:
        """A credential being deleted: the leader revokes every value, then lets it go. The
        finalizer is ours alone (no progress kept where tenants could write it)."""
        if FINALIZER not in record.finalizers or not self.view.leading():
            return None  # not ours to hold, or the leader will (a new leader, when it takes over)
        count = await self.deleted(record)
        index = record.finalizers.index(FINALIZER)
        await self.kube.patch_credential(
            record.namespace,
            record.name,
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )
        return count

    async def deleted(self, record: CredentialRecord) -> int:
        """Revoke every value of the credential first (the finalizer's work)."""
        if not self.view.leading():
            raise NotLeader()
        count = await self.requests.revoke_everywhere(record, "credential-deleted")
        self.book.forget(record.key)
        self.status.forget(record.key)
        self.requests.forget(record.key)
        self._verdicts.pop(record.key, None)
        self._generations.pop(record.key, None)
        self.scheduler.cancel(CredentialDue(record.namespace, record.name))
        return count

    def _note_verdict(self, judged: CredentialRecord) -> bool:
        """Remember the verdict; True if it differs from the last one seen (first sight: False)."""
        verdict = judged.verdict()
        seen = (verdict.ready, verdict.reason, verdict.message)
        previous = self._verdicts.get(judged.key)
        self._verdicts[judged.key] = seen
        return previous is not None and previous != seen


def _request(annotations: Mapping[str, str], annotation: str, record: CredentialRecord) -> dict[str, Any] | None:
    """A request (`agentcred revoke` / `renew`) recorded on the credential, if well-formed."""
    text = annotations.get(annotation)
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # a tenant writes this annotation: nested too deep is malformed too
        log.warning("ignoring malformed %s annotation on %s/%s", annotation, record.namespace, record.name)
        return None
    return parsed if isinstance(parsed, dict) else None
