"""Identifiers seen once: DPoP proofs' `jti`, workload assertions' `jti`. Each is remembered
until a use of it could no longer be accepted anyway (a proof's iat window, an assertion's
expiry), bounded per holder (one agent pod) and in total.

Full is a refusal, never an eviction: forgetting a live entry early would let that very
replay through. One pod that fills its share is refused until its own entries lapse; the
others are not touched. The memory is this replica's: see SECURITY.md for what that means
with several replicas.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

Seen = Literal["fresh", "replayed", "full"]
MAX_ID = 256  # characters of an identifier kept (longer ones are hashed by the caller or refused)


@dataclass
class ReplayCache:
    per_holder: int = 8192
    total: int = 131072
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)
    _expiries: list[tuple[float, str, str]] = field(default_factory=list)
    _count: int = 0

    def use(self, holder: str, identifier: str, until: float, now: float) -> Seen:
        """Record `identifier` used by `holder`, remembered until `until`: fresh the first time,
        replayed after, full when there is no room to remember it (refuse the use)."""
        self._forget(now)
        identifier = identifier[:MAX_ID]
        mine = self._seen.get(holder)
        if mine is not None and identifier in mine:
            return "replayed"
        if self._count >= self.total or (mine is not None and len(mine) >= self.per_holder):
            return "full"
        if mine is None:
            mine = self._seen[holder] = {}
        mine[identifier] = until
        self._count += 1
        heapq.heappush(self._expiries, (until, holder, identifier))
        return "fresh"

    def __len__(self) -> int:
        return self._count

    def _forget(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, holder, identifier = heapq.heappop(self._expiries)
            mine = self._seen.get(holder)
            if mine is None or identifier not in mine:
                continue
            del mine[identifier]
            self._count -= 1
            if not mine:
                del self._seen[holder]
