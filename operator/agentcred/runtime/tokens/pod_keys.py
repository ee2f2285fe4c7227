"""The DPoP keys agentcred made for a pod (the `dpop.jwk` beside each bound value), by their
thumbprints, as the pod's sealed bookkeeping records them: what a pod's identity token must be
presented with when the pod holds a DPoP-bound credential.

The leader knows every pod's bookkeeping (it wrote it). A follower reads the pod's Secret --
its metadata only, never its values -- and checks the seal, so whoever may edit Secrets in the
namespace cannot put their own key on record; the answer is kept a moment, and read again at
once when a proof names a key it does not list (the pod may have been renewed since).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...api import labels
from ...api.pods import PodTask
from ...api.projection import ProjectionState, Verify, parse_projection
from ..store import ProjectionStore

KEPT = 2.0  # seconds a follower keeps a pod's keys before reading them again
MAX_KEPT = 10_000  # pods whose keys are kept at once


@dataclass
class PodKeys:
    store: ProjectionStore
    read: Callable[[str, str], Awaitable[dict[str, Any] | None]]  # a Secret's metadata, or None
    verify: Verify  # the bookkeeping seal
    leading: Callable[[], bool]
    clock: Callable[[], float] = time.monotonic
    _kept: dict[str, tuple[float, tuple[str, ...]]] = field(default_factory=dict)

    async def of(self, task: PodTask, now: dt.datetime, fresh: bool = False) -> tuple[str, ...]:
        """The thumbprints of the keys the pod may hold now (a renewed value's predecessor's
        too, while it lives); `fresh`: not from a follower's recent read."""
        state = self.store.get(task.key) if self.leading() else None
        if state is not None:
            return _keys(state, task, now)
        kept = self._kept.get(task.uid)
        if kept is not None and not fresh and self.clock() - kept[0] < KEPT:
            return kept[1]
        body = await self.read(task.namespace, labels.secret_name(task.binding))
        found = parse_projection(body, self.verify) if body is not None else None
        keys = _keys(found, task, now) if found is not None else ()
        if len(self._kept) >= MAX_KEPT:
            self._kept.clear()
        self._kept[task.uid] = (self.clock(), keys)
        return keys


def _keys(state: ProjectionState, task: PodTask, now: dt.datetime) -> tuple[str, ...]:
    if not state.sealed or state.pod_uid != task.uid:
        return ()  # damaged, forged or another pod's: no key of it counts
    return tuple(key for value in state.values.values() for key in value.pod_keys(now))
