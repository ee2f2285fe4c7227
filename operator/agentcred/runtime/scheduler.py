"""One scheduler for every expiry: a heap of (due time, key), not a timer per object.

Scheduling a key again replaces its earlier due time. Due keys are handed to a callback
with bounded concurrency; the callback recomputes what to do from state, so a spurious or
late wake-up is harmless. A replaced due time stays in the heap until it surfaces, so the heap
is rebuilt from the live due times once stale entries outnumber them: a tenant editing a
credential with 50 pods 7,500 times left 375,000 stale entries (110 MB) until they came due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable

from ..api.times import utcnow
from ..platform import metrics

log = logging.getLogger(__name__)

Callback = Callable[[Hashable], Awaitable[None]]
STALE_SLACK = 1024  # stale heap entries tolerated beyond the live ones before a rebuild


class Scheduler:
    """Due work runs with bounded concurrency per partition (a namespace): a tenant whose
    work hangs (a minting service that never answers) fills its own slots, never another's."""

    name = "expiry scheduler"
    needs_leader = False

    def __init__(
        self, callback: Callback, concurrency: int = 16, partition: Callable[[Hashable], str] = lambda key: ""
    ) -> None:
        self._callback = callback
        self._partition = partition
        self._heap: list[tuple[dt.datetime, int, Hashable]] = []
        self._due: dict[Hashable, dt.datetime] = {}
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._concurrency = concurrency
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # tasks holding or waiting for each partition's slots
        self._running: set[asyncio.Task[None]] = set()
        metrics.track("scheduled", lambda: len(self._heap))
        metrics.track("scheduled-keys", lambda: len(self._due))

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, key: Hashable, when: dt.datetime) -> None:
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._counter), key))
        if len(self._heap) > 2 * len(self._due) + STALE_SLACK:
            self._compact()
        if self._heap[0][2] == key:
            self._wake.set()

    def _compact(self) -> None:
        """Only the live due times: each key once (amortised, as at most half are dropped)."""
        self._heap = [(when, next(self._counter), key) for key, when in self._due.items()]
        heapq.heapify(self._heap)

    def cancel(self, key: Hashable) -> None:
        self._due.pop(key, None)  # its heap entry is skipped when it surfaces
        if len(self._heap) > 2 * len(self._due) + STALE_SLACK:
            self._compact()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = utcnow()
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self._due.get(key) != when:
                    continue  # rescheduled or cancelled since
                del self._due[key]
                task = asyncio.create_task(self._fire(key))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            delay = (self._heap[0][0] - utcnow()).total_seconds() if self._heap else 3600.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.0))
            except TimeoutError:
                pass

    async def _fire(self, key: Hashable) -> None:
        partition = self._partition(key)
        slots = self._slots.setdefault(partition, asyncio.Semaphore(self._concurrency))
        self._users[partition] = self._users.get(partition, 0) + 1
        try:
            async with slots:
                await self._callback(key)
        except Exception:
            log.exception("scheduled work for %s failed", key)
        finally:
            self._users[partition] -= 1
            if not self._users[partition]:  # idle: forget it, namespaces come and go
                del self._users[partition], self._slots[partition]
