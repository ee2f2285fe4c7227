"""The operator's memory of every managed Secret's bookkeeping (metadata only, no values).

Fed by the Secret watch and by the operator's own writes; a resourceVersion guard keeps a
late watch event from rolling the memory back past a write that already happened.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from .projection import ProjectionState


def _newer(candidate: str | None, known: str | None) -> bool:
    """resourceVersions are opaque, but etcd-backed ones are increasing integers."""
    if known is None or candidate is None:
        return True
    try:
        return int(candidate) >= int(known)
    except ValueError:
        return True


class ProjectionStore:
    def __init__(self) -> None:
        self._states: dict[str, ProjectionState] = {}
        self._deleted_at: dict[str, str | None] = {}  # binding -> last version we deleted
        self._by_credential: dict[tuple[str, str], set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[ProjectionState]:
        return iter(list(self._states.values()))

    def get(self, key: str) -> ProjectionState | None:
        return self._states.get(key)

    def keys_with(self, namespace: str, credential: str) -> set[str]:
        return set(self._by_credential.get((namespace, credential), ()))

    def count_by_category(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for state in self._states.values():
            for value in state.values.values():
                counts[value.category] += 1
        return dict(counts)

    def observe(self, state: ProjectionState) -> None:
        """A Secret as seen by the watch or returned by a write."""
        if state.key in self._deleted_at and not _newer_strict(
            state.resource_version, self._deleted_at[state.key]
        ):
            return  # an echo of a Secret we already deleted
        current = self._states.get(state.key)
        if current is not None and not _newer(state.resource_version, current.resource_version):
            return
        self._deleted_at.pop(state.key, None)
        self._index(current, remove=True)
        self._states[state.key] = state
        self._index(state, remove=False)

    def forget(self, key: str) -> None:
        """The Secret is gone (our delete, the watch's DELETED, or the garbage collector)."""
        current = self._states.pop(key, None)
        self._index(current, remove=True)
        self._deleted_at[key] = current.resource_version if current else None

    def deleted_for_good(self, key: str) -> None:
        """The watch confirmed the deletion: no late event can resurrect it any more."""
        self._deleted_at.pop(key, None)

    def _index(self, state: ProjectionState | None, remove: bool) -> None:
        if state is None:
            return
        for credential in state.values:
            key = (state.namespace, credential)
            if remove:
                self._by_credential[key].discard(state.key)
                if not self._by_credential[key]:
                    del self._by_credential[key]
            else:
                self._by_credential[key].add(state.key)


def _newer_strict(candidate: str | None, known: str | None) -> bool:
    if known is None or candidate is None:
        return False
    try:
        return int(candidate) > int(known)
    except ValueError:
        return False
