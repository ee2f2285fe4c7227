"""Leader election on a coordination.k8s.io Lease, so that one replica acts at a time.

Every replica watches, keeps its indices warm and serves the admission webhook and the
HTTPS endpoints; only the leader writes (issues, renews, revokes, writes status, rotates
keys). A leader renews the Lease every `renew` seconds; a follower takes over when the
Lease has not been renewed for `duration` seconds, then re-plans every projection from
the cluster's state, so a revocation the old leader did not finish still happens.

A leader leads only while its last renewal is recent by its own monotonic clock (`duration`
less `renew` from when that renewal began): a leader frozen (SIGSTOP, a suspended VM, a long
GC) and resumed after another took over used to act on everything it had missed before its
next renewal told it otherwise -- a second `revoke` line for a value already revoked, calls
to minting services -- because nothing had told it yet that its Lease had lapsed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from ...api.times import format_time, parse_time, utcnow
from ...platform.kube import Kube, status_of

log = logging.getLogger(__name__)


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def _micro(moment: dt.datetime) -> str:
    return format_time(moment, "microseconds")  # the Lease's MicroTime


def _parse(text: str | None) -> dt.datetime | None:
    return parse_time(text) if text else None


def lease_is_free(spec: dict[str, Any], me: str, now: dt.datetime) -> bool:
    """Ours already, never held, released, or not renewed within its duration."""
    holder = spec.get("holderIdentity")
    if not holder or holder == me:
        return True
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or renewed + dt.timedelta(seconds=duration) < now


class Leadership:
    """One of the operator's loops (on every replica): holds or watches the Lease, and says
    when this replica is elected (`on_elected`, run as its own task: taking over may wait for
    the indices, the Lease must not) and when it loses the lead (`on_deposed`, awaited)."""

    name = "leader election"
    needs_leader = False

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        on_elected: Callable[[], Coroutine[Any, Any, None]],
        on_deposed: Callable[[], Coroutine[Any, Any, None]],
        *,
        lease: str = "agentcred-leader",
        me: str | None = None,
        duration: int = 15,
        renew: float = 5.0,
        notes: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.kube, self.namespace, self.lease = kube, namespace, lease
        # What the leader tells the followers with each renewal (annotations on the Lease),
        # and what a follower last read there.
        self.notes = notes
        self.leader_notes: dict[str, str] = {}
        self.me = me or identity()
        self.duration, self.renew = duration, renew
        self.on_elected, self.on_deposed = on_elected, on_deposed
        self._elected = False
        self._valid_until = 0.0  # time.monotonic() until which the last renewal holds
        self._takeover: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._elected and time.monotonic() < self._valid_until

    async def run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                leading = await self._try()
            except Exception as error:
                log.warning("leader election: %s", status_of(error) or error)
                leading = False
            lapsed = self._elected and time.monotonic() >= self._valid_until
            if leading:
                # Another replica takes over `duration` after the renewal time written, by its
                # clock: stop a `renew` short of that, counted from before the write.
                self._valid_until = began + max(self.duration - self.renew, self.renew)
            if leading and lapsed:
                # Still ours, but for a while this replica did not lead and dropped what came
                # due: take over again, as a new leader would.
                log.warning("%s renewed its lapsed lead; re-planning", self.me)
                self._takeover = asyncio.create_task(self.on_elected(), name="take over")
            elif leading and not self._elected:
                self._elected = True
                log.info("%s is now the leader", self.me)
                # Not awaited: taking over may wait for the indices, the Lease must not.
                self._takeover = asyncio.create_task(self.on_elected(), name="take over")
            elif not leading and self._elected:
                self._elected = False
                log.warning("%s lost the lead; pausing writes", self.me)
                if self._takeover is not None:
                    self._takeover.cancel()
                await self.on_deposed()
            await asyncio.sleep(self.renew)

    async def _try(self) -> bool:
        now = utcnow()
        try:
            lease = await self.kube.read_lease(self.namespace, self.lease)
        except Exception as error:
            if status_of(error) != 404:
                raise
            await self.kube.create_lease(self.namespace, self._body(None, now, transitions=0))
            return True
        spec = lease.get("spec") or {}
        if not lease_is_free(spec, self.me, now):
            found = (lease.get("metadata") or {}).get("annotations")
            self.leader_notes = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
            return False
        taking_over = spec.get("holderIdentity") != self.me
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)
        body = self._body(
            lease["metadata"]["resourceVersion"],
            now,
            transitions,
            acquired=now if taking_over else _parse(spec.get("acquireTime")) or now,
        )
        try:
            await self.kube.replace_lease(self.namespace, self.lease, body)  # fails if someone was faster
        except Exception as error:
            if status_of(error) == 409:
                return False
            raise
        return True

    async def release(self) -> None:
        """Hand over at once on a clean shutdown instead of waiting for the Lease to lapse."""
        if not self.is_leader:
            return
        self._elected = False
        try:
            lease = await self.kube.read_lease(self.namespace, self.lease)
            if (lease.get("spec") or {}).get("holderIdentity") == self.me:
                lease["spec"]["holderIdentity"] = None
                await self.kube.replace_lease(self.namespace, self.lease, lease)
        except Exception as error:
            log.warning("could not release the lease: %s", status_of(error) or error)

    def _body(
        self, resource_version: str | None, now: dt.datetime, transitions: int, acquired: dt.datetime | None = None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.lease,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/name": "agentcred"},
        }
        notes = self.notes()
        if notes:
            metadata["annotations"] = notes
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.me,
                "leaseDurationSeconds": self.duration,
                "acquireTime": _micro(acquired or now),
                "renewTime": _micro(now),
                "leaseTransitions": transitions,
            },
        }
