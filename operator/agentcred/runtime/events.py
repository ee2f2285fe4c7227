"""Kubernetes Events, posted from a bounded queue so no hot path waits on them.

Kopf's own event posting only works inside its per-object tasks; the renewal scheduler and
the status writer run outside those, so the operator posts its Events itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..api.reasons import EventReason
from ..api.times import format_time, utcnow
from ..platform.kube import Kube

log = logging.getLogger(__name__)

COMPONENT = "agentcred"
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class PendingEvent:
    involved: dict[str, Any]
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def event_body(event: PendingEvent, now: dt.datetime) -> dict[str, Any]:
    stamp = format_time(now)
    involved = event.involved
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name'][:200]}.", "namespace": involved["namespace"]},
        "involvedObject": {
            k: involved[k] for k in ("apiVersion", "kind", "name", "namespace", "uid") if involved.get(k)
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Posts Events from a bounded queue, on its own loop: a flood never blocks the caller."""

    name = "event poster"
    needs_leader = False

    def __init__(self, kube: Kube, capacity: int = 10000) -> None:
        self._kube = kube
        self._queue: asyncio.Queue[PendingEvent] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0

    def post(
        self, involved: dict[str, Any], type: Literal["Normal", "Warning"], reason: EventReason, message: str
    ) -> None:
        try:
            self._queue.put_nowait(PendingEvent(involved, type, reason, message))
        except asyncio.QueueFull:
            self.dropped += 1  # protect the API server rather than queue without bound

    async def run(self, concurrency: int = 4) -> None:
        await asyncio.gather(*(self._poster() for _ in range(concurrency)))

    async def _poster(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                body = event_body(event, utcnow())
                await self._kube.create_event(body)
            except Exception as error:  # an Event is best effort; the audit log is the record
                log.debug("could not post event %s: %s", event.reason, error)
            finally:
                self._queue.task_done()
