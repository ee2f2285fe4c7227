"""Identifiers seen once: DPoP proofs' `jti`, workload assertions' `jti`. Each is remembered
until a use of it could no longer be accepted anyway (a proof's iat window, an assertion's
expiry), bounded per holder (one agent pod), per group when the caller names one (the pod's
namespace: one tenant), and in total.

Full is a refusal, never an eviction: forgetting a live entry early would let that very
replay through. One pod that fills its share is refused until its own entries lapse; the
others are not touched. One tenant's pods that fill their namespace's share are refused
likewise; without that share, enough pods of one tenant filled the total and every other
tenant was refused. The memory is this replica's: see SECURITY.md for what that means
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
    per_group: int | None = None  # None: no share per group
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)
    _expiries: list[tuple[float, str, str, str]] = field(default_factory=list)
    _groups: dict[str, int] = field(default_factory=dict)
    _count: int = 0

    def use(self, holder: str, identifier: str, until: float, now: float, group: str = "") -> Seen:
        """Record `identifier` used by `holder` (of `group`), remembered until `until`: fresh the
        first time, replayed after, full when there is no room to remember it (refuse the use)."""
        self._forget(now)
        identifier = identifier[:MAX_ID]
        mine = self._seen.get(holder)
        if mine is not None and identifier in mine:
            return "replayed"
        if self._count >= self.total or (mine is not None and len(mine) >= self.per_holder):
            return "full"
        if self.per_group is not None and self._groups.get(group, 0) >= self.per_group:
            return "full"
        if mine is None:
            mine = self._seen[holder] = {}
        mine[identifier] = until
        self._count += 1
        self._groups[group] = self._groups.get(group, 0) + 1
        heapq.heappush(self._expiries, (until, holder, identifier, group))
        return "fresh"

    def __len__(self) -> int:
        return self._count

    def _forget(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, holder, identifier, group = heapq.heappop(self._expiries)
            mine = self._seen.get(holder)
            if mine is None or identifier not in mine:
                continue
            del mine[identifier]
            self._count -= 1
            if not mine:
                del self._seen[holder]
            left = self._groups[group] - 1
            if left:
                self._groups[group] = left
            else:
                del self._groups[group]
