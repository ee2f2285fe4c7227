"""Requests people make of a credential: `agentcred revoke` and `agentcred renew`.

A request is an annotation on the AgentCredential (see `client.requests`); the leader
carries out each one once, records the outcome in the credential's status (the command
waits for it), and says so in an Event. A new leader finds a request not yet carried out
still pending, and carries it out.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from ...api.projection import Subject
from ...api.reasons import RevocationReason
from ...api.times import format_time, utcnow
from ...platform import metrics
from ...platform.kube import Kube
from ...rules.credentials import CredentialRecord
from ..events import EventRecorder
from ..store import ProjectionStore
from .reconciler import Reconciler
from .revoker import RevokeOrder

# What a request id may be: what the CLI writes (a uuid4 hex) and what the status keeps (64
# characters at most). Ids are remembered, so one of any length was memory a tenant could fill.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class Requests:
    def __init__(self, reconciler: Reconciler, store: ProjectionStore, kube: Kube, events: EventRecorder) -> None:
        self.reconciler, self.store, self.kube, self.events = reconciler, store, kube, events
        # The last request carried out per credential and kind, until the status says so:
        # one id each, however many requests a tenant makes.
        self._handled: dict[tuple[str, str, str], str] = {}
        metrics.track("handled-requests", lambda: len(self._handled))

    def forget(self, key: tuple[str, str]) -> None:
        """A credential is gone: its requests with it."""
        for status_field in ("lastRevocation", "lastRenewal"):
            self._handled.pop((*key, status_field), None)

    async def revoke_everywhere(
        self,
        record: CredentialRecord,
        reason: RevocationReason,
        pod_name: str | None = None,
        message: str | None = None,
    ) -> int:
        """Revoke the credential's live values in every pod (or one pod) right now."""
        await self.reconciler.loaded.wait()
        keys = self.store.keys_with(record.namespace, record.name)
        counts = await asyncio.gather(
            *(self.reconciler.revoke_value(key, record.name, reason, pod_name, message=message) for key in keys)
        )
        # Live pods admitted for it gateway-only: nothing in their Secret to revoke, so the
        # revocation list alone bars them (gateways ask it on every call).
        barred = 0
        for task in self.reconciler.view.live_pods(record.namespace):
            if (pod_name and task.name != pod_name) or not task.gateway_only(record.name):
                continue
            order = RevokeOrder(record.name, None, reason, message)
            await self.reconciler.revoker.revoke(Subject.of_task(task), [order], _nothing)
            barred += 1
        return sum(counts) + barred

    async def renew(self, record: CredentialRecord, request: dict[str, Any]) -> dict[str, Any] | None:
        """Replace every live value now (after an upstream key was rotated, say)."""
        request_id = self._new(record, request, "lastRenewal")
        if request_id is None:
            return None
        await self.reconciler.loaded.wait()
        keys = self.store.keys_with(record.namespace, record.name)
        await asyncio.gather(*(self.reconciler.reconcile(key, renew_now=frozenset({record.name})) for key in keys))
        outcome = {"id": request_id, "at": format_time(utcnow()), "renewed": len(keys)}
        await self.kube.patch_credential_status(record.namespace, record.name, {"lastRenewal": outcome})
        self.events.post(record.owner_ref, "Normal", "Renewed", f"renewed {len(keys)} live value(s) of {record.name}")
        return outcome

    async def revoke(self, record: CredentialRecord, request: dict[str, Any]) -> dict[str, Any] | None:
        """An emergency revoke, in one pod or in every pod."""
        request_id = self._new(record, request, "lastRevocation")
        if request_id is None:
            return None
        pod_name = request.get("pod") or None
        if pod_name is not None and not (isinstance(pod_name, str) and POD_NAME.fullmatch(pod_name)):
            self._refuse(record, "revoke", "its pod is not a pod name")
            return None
        # The trigger stays "emergency" (a bounded metric label); the person's words go with it.
        reason = request.get("reason")
        said = " ".join(reason.split())[:256] or None if isinstance(reason, str) else None
        count = await self.revoke_everywhere(record, "emergency", pod_name, said)
        outcome = {"id": request_id, "at": format_time(utcnow()), "pod": pod_name, "revoked": count, "reason": said}
        await self.kube.patch_credential_status(record.namespace, record.name, {"lastRevocation": outcome})
        where = f"pod {pod_name}" if pod_name else "every pod"
        because = f": {said}" if said else ""
        self.events.post(
            record.owner_ref,
            "Warning",
            "EmergencyRevoke",
            f"revoked {count} live value(s) of {record.name} in {where}{because}",
        )
        return outcome

    def _new(self, record: CredentialRecord, request: dict[str, Any], status_field: str) -> str | None:
        """The id of a request not carried out yet, by the leader; else None."""
        if not self.reconciler.view.leading():
            return None  # the leader carries it out; a new leader finds it still pending
        request_id = request.get("id")
        if not request_id:
            return None
        well_formed = isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id) is not None
        # A malformed id is remembered by a short digest, never whole.
        remembered = str(request_id) if well_formed else "refused:" + _digest(request_id)
        key = (*record.key, status_field)
        if remembered in ((record.status.get(status_field) or {}).get("id"), self._handled.get(key)):
            return None
        self._handled[key] = remembered
        if not well_formed:
            what = "revoke" if status_field == "lastRevocation" else "renew"
            self._refuse(record, what, "its id is not 1-64 letters, digits, '.', '_' or '-'")
            return None
        return str(request_id)

    def _refuse(self, record: CredentialRecord, what: str, why: str) -> None:
        self.events.post(
            record.owner_ref, "Warning", "RequestRefused", f"the {what} request on {record.name} is ignored: {why}"
        )


def _digest(value: object) -> str:
    text = value if isinstance(value, str) else type(value).__name__  # a nested value: by its type alone
    return hashlib.sha256(text.encode(errors="replace")).hexdigest()[:16]


async def _nothing() -> None:
    """A gateway-only credential: no Secret to change, the revocation list entry is the act."""
