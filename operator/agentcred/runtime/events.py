"""Kubernetes Events, posted from a bounded queue so no hot path waits on them.

Kopf's own event posting only works inside its per-object tasks; the renewal scheduler and
the status writer run outside those, so the operator posts its Events itself.

Above a rate, similar Events are folded, as Kubernetes' own event correlator does: of the
Events of one namespace with one type and reason, the first `FOLD_BURST` of a `FOLD_WINDOW`
are posted one by one, and the rest of that window become one Event (on the last object,
saying how many and naming the first few). A burst of 1,000 pods then costs the API server
a few Event writes instead of 2,000, and the audit log still holds one line per act.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..api.reasons import EventReason
from ..api.times import format_time, utcnow
from ..platform.kube import Kube

log = logging.getLogger(__name__)

COMPONENT = "agentcred"
MAX_MESSAGE = 1024
FOLD_BURST = 10  # similar Events posted one by one in a window
FOLD_WINDOW = 10.0  # seconds
FOLD_NAMED = 5  # objects a folded Event names


@dataclass(frozen=True)
class PendingEvent:
    involved: dict[str, Any]
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Folded:
    """Similar Events held back in the current window (one namespace, type and reason)."""

    count: int = 0
    named: list[str] = field(default_factory=list)
    last: PendingEvent | None = None

    def add(self, event: PendingEvent) -> None:
        self.count += 1
        if len(self.named) < FOLD_NAMED:
            self.named.append(str(event.involved.get("name") or ""))
        self.last = event

    def event(self, window: float) -> PendingEvent:
        assert self.last is not None
        names = ", ".join(self.named) + (", ..." if self.count > len(self.named) else "")
        kind = str(self.last.involved.get("kind") or "object").lower()
        said = (
            f"{self.count} similar Events in {window:.0f}s folded into this one ({kind}s {names}; "
            f"the audit log has each); the last: {self.last.message}"
        )
        return PendingEvent(self.last.involved, self.last.type, self.last.reason, said)


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

    def __init__(
        self,
        kube: Kube,
        capacity: int = 10000,
        *,
        burst: int = FOLD_BURST,
        window: float = FOLD_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._queue: asyncio.Queue[PendingEvent] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0
        self.burst, self.window, self._clock = burst, window, clock
        self._windows: dict[tuple[str, str, str], tuple[float, int]] = {}  # when it began, Events posted
        self._folded: dict[tuple[str, str, str], Folded] = {}

    def post(
        self, involved: dict[str, Any], type: Literal["Normal", "Warning"], reason: EventReason, message: str
    ) -> None:
        event = PendingEvent(involved, type, reason, message)
        key = (str(involved.get("namespace") or ""), type, reason)
        now = self._clock()
        began, posted = self._windows.get(key, (now, 0))
        if now - began >= self.window:
            began, posted = now, 0
        if posted >= self.burst:
            self._folded.setdefault(key, Folded()).add(event)
            return
        self._windows[key] = (began, posted + 1)
        self._enqueue(event)

    def _enqueue(self, event: PendingEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # protect the API server rather than queue without bound

    def fold(self) -> None:
        """Post what was folded, one Event per kind, and forget windows that have passed."""
        folded, self._folded = self._folded, {}
        for held in folded.values():
            self._enqueue(held.event(self.window))
        now = self._clock()
        self._windows = {key: kept for key, kept in self._windows.items() if now - kept[0] < self.window}

    async def run(self, concurrency: int = 4) -> None:
        await asyncio.gather(self._folding(), *(self._poster() for _ in range(concurrency)))

    async def _folding(self) -> None:
        while True:
            await asyncio.sleep(self.window)
            self.fold()

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
