"""The operator's memory of every managed Secret's bookkeeping (metadata only, no values).

Filled from a metadata-only listing at start and on election, then kept by the operator's
own writes (one writer: the leader). A write based on a stale picture fails on its
resourceVersion and is retried from a fresh read, so the memory never needs to be exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from ..api.projection import ProjectionState


class ProjectionStore:
    def __init__(self) -> None:
        self._states: dict[str, ProjectionState] = {}
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

    def put(self, state: ProjectionState) -> None:
        self.forget(state.key)
        self._states[state.key] = state
        for credential in state.values:
            self._by_credential[(state.namespace, credential)].add(state.key)

    def forget(self, key: str) -> None:
        current = self._states.pop(key, None)
        if current is None:
            return
        for credential in current.values:
            index_key = (current.namespace, credential)
            self._by_credential[index_key].discard(key)
            if not self._by_credential[index_key]:
                del self._by_credential[index_key]
