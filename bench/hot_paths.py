"""A hot path measured beside its floor: the shape every such stage returns, and the callers
that drive it.

A stage (gateway decisions; DPoP issuance and CSI publishing plug in the same way) returns
`{"paths": [point(...), ...], ...}`: for each path, agentcred's figures and the floor's (the
same request without agentcred's work: no authorization, a plain bearer token, a plain
volume), each at one or more concurrencies. The report renders every stage's paths in one
table ("agentcred / floor" per path and concurrency) and `bench/plots.py` in one picture.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .harness import summary_ms

FLOOR = "floor"
AGENTCRED = "agentcred"

Call = Callable[[int], Awaitable[str]]  # caller index -> "ok", or what went wrong


async def run_callers(callers: int, seconds: float, call: Call) -> dict[str, Any]:
    """`callers` concurrent loops of `call(i)` for `seconds`; round trips of the calls that
    answered "ok", and how many answered otherwise (by answer)."""
    latencies: list[float] = []
    failed: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            outcome = await call(i)
            if outcome == "ok":
                latencies.append(time.perf_counter() - started)
            else:
                failed[outcome] = failed.get(outcome, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(callers)))
    elapsed = time.perf_counter() - began
    return {
        "callers": callers,
        "per_second": len(latencies) / elapsed,
        "latency_ms": summary_ms(latencies),
        "failed": failed,
    }


def point(path: str, who: str, measured: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One measured point of a path: `who` is AGENTCRED, FLOOR, or a peer's name."""
    return {"path": path, "who": who, **measured, **extra}
