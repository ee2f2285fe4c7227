"""Which pod a binding belongs to, as every replica sees it: decided here and nowhere else.

A pod creator can copy an admitted pod -- its sealed annotations, its volumes, its gate --
within the webhook's reinvocation window, and the copy's seal holds. The binding belongs to
the pod that made it: the first created of the pods naming it (ties: the first seen, which
the watch delivers in creation order).

This memory outlives the pods: once the first pod is gone its binding still belongs to it,
never to a copy. Every replica keeps its own from the pods it watches; a replica started
after the first pod ended sees only the copy. Where the pod's Secret is known (the leader's
store), the owner its sealed bookkeeping names wins: after a restart, a listing delivers
pods by name, not by age.
"""

from __future__ import annotations

import datetime as dt

from ...api.pods import PodTask
from ...api.projection import ProjectionState
from ..store import ProjectionStore

MAX_BINDINGS = 200_000
_LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


class BindingOwners:
    def __init__(self, store: ProjectionStore, limit: int = MAX_BINDINGS) -> None:
        self._store = store  # the sealed Secrets this replica knows
        self._limit = limit
        self._owners: dict[str, tuple[dt.datetime, str]] = {}  # binding key: (created, pod UID)

    def note(self, task: PodTask) -> None:
        """A pod naming its binding: it owns it unless a pod created earlier named it first."""
        current = self._owners.get(task.key)
        created = task.created_at or _LATEST
        if current is not None and current[0] <= created:
            return
        if current is None and len(self._owners) >= self._limit:
            for stale in list(self._owners)[: self._limit // 10]:  # the oldest tenth
                del self._owners[stale]
        self._owners[task.key] = (created, task.uid)

    def owner(self, key: str, state: ProjectionState | None = None) -> str | None:
        """The UID of the pod the binding belongs to: the one its sealed Secret names (`state`,
        else the store's), else the first created of the pods seen naming it."""
        state = state if state is not None else self._store.get(key)
        if state is not None and state.sealed and state.pod_uid:
            return state.pod_uid
        noted = self._owners.get(key)
        return noted[1] if noted is not None else None

    def owns(self, task: PodTask) -> bool:
        """Does the binding the pod names belong to it?"""
        self.note(task)
        return self.owner(task.key) == task.uid
