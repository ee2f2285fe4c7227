"""Which pod a binding belongs to, as every replica sees it.

A pod creator can copy an admitted pod -- its sealed annotations, its volumes, its gate --
within the webhook's reinvocation window, and the copy's seal holds. The binding belongs to
the pod that made it: the first created of the pods naming it (ties: the first seen, which
the watch delivers in creation order). This memory outlives the pods, so once the first pod
is gone its binding still belongs to it, never to a copy. Every replica keeps its own from
the pods it watches; a replica started after the first pod ended sees only the copy. Where
the pod's Secret is known (the leader's store), the owner its sealed bookkeeping names wins:
after a restart, a listing delivers pods by name, not by age.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ...api.pods import PodTask

MAX_BINDINGS = 200_000
_LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


class BindingOwners:
    def __init__(self, limit: int = MAX_BINDINGS, sealed: Callable[[str], str | None] = lambda key: None) -> None:
        self._limit = limit
        self._sealed = sealed  # the pod UID a binding's sealed Secret names, if known here
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

    def owns(self, task: PodTask) -> bool:
        """Does the binding the pod names belong to it?"""
        self.note(task)
        return (self._sealed(task.key) or self._owners[task.key][1]) == task.uid
