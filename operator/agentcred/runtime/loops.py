"""Every long-running part has one shape, and one place starts and stops them all.

A `Loop` has a name, says whether it needs the lead, and runs until cancelled. `Loops`
starts the ones that run on every replica at once and the leader-only ones when this
replica is elected, and cancels those again when it loses the lead (in the manner of
controller-runtime's manager and its leader-election runnables), so no part asks
"am I leading?" only to decide whether to run at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Loop(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_leader(self) -> bool: ...

    async def run(self) -> None: ...


@dataclass(frozen=True)
class LoopOf:
    """A loop made of a coroutine function, for parts whose loop is one function."""

    name: str
    body: Callable[[], Coroutine[Any, Any, None]]
    needs_leader: bool = False

    async def run(self) -> None:
        await self.body()


class Loops:
    def __init__(self, loops: Iterable[Loop]) -> None:
        self._loops = list(loops)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The running loops' tasks (health reports a loop that ended)."""
        return list(self._tasks.values())

    def start(self, leading: bool) -> None:
        """Start what runs on every replica, and -- when this replica leads -- the rest."""
        for loop in self._loops:
            if not loop.needs_leader or leading:
                self._start(loop)

    def elected(self) -> None:
        for loop in self._loops:
            if loop.needs_leader:
                self._start(loop)

    async def deposed(self) -> None:
        await self._cancel([loop.name for loop in self._loops if loop.needs_leader])

    async def stop(self) -> None:
        await self._cancel(list(self._tasks))

    def _start(self, loop: Loop) -> None:
        running = self._tasks.get(loop.name)
        if running is None or running.done():
            self._tasks[loop.name] = asyncio.create_task(loop.run(), name=loop.name)

    async def _cancel(self, names: list[str]) -> None:
        tasks = [task for name in names if (task := self._tasks.pop(name, None)) is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
