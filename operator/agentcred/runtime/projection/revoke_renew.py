"""Requests people make of a credential: `agentcred revoke` and `agentcred renew`.

A request is an annotation on the AgentCredential (see `client.requests`); the leader
carries out each one once, records the outcome in the credential's status (the command
waits for it), and says so in an Event. A new leader finds a request not yet carried out
still pending, and carries it out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...api.projection import Subject
from ...api.reasons import RevocationReason
from ...api.times import format_time, utcnow
from ...platform.kube import Kube
from ...rules.credentials import CredentialRecord
from ..events import EventRecorder
from ..store import ProjectionStore
from .reconciler import Reconciler
from .revoker import RevokeOrder


class Requests:
    def __init__(self, reconciler: Reconciler, store: ProjectionStore, kube: Kube, events: EventRecorder) -> None:
        self.reconciler, self.store, self.kube, self.events = reconciler, store, kube, events
        self._handled: set[str] = set()

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
        # The trigger stays "emergency" (a bounded metric label); the person's words go with it.
        said = " ".join(str(request.get("reason") or "").split())[:256] or None
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
        request_id = str(request.get("id") or "")
        handled = (record.status.get(status_field) or {}).get("id")
        if not request_id or request_id == handled or request_id in self._handled:
            return None
        self._handled.add(request_id)
        return request_id


async def _nothing() -> None:
    """A gateway-only credential: no Secret to change, the revocation list entry is the act."""
