"""The operator's memory of every managed Secret's bookkeeping (metadata only, no values).

Filled from a metadata-only listing at start and on election, then kept by the operator's
own writes (one writer: the leader). A write based on a stale picture fails on its
resourceVersion and is retried from a fresh read, so the memory never needs to be exact.

Live values are indexed by keyed fingerprint, token id and pod UID, so a leaked value is
traced in a dictionary lookup whatever the number of live values; values replaced or revoked
are remembered (bounded) until a while after they expire, so a trace can say "superseded"
or "revoked" rather than "unknown".
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..api.projection import IssuedValue, ProjectionState
from ..api.times import utcnow

Holding = tuple[str, str]  # (projection key, credential)
PAST_LIMIT = 100_000
PAST_PER_VALUE = 64
PAST_KEPT = dt.timedelta(hours=1)  # past its expiry, a value is still answered "expired" this long


@dataclass(frozen=True)
class PastValue:
    """A value no pod holds any more, and why."""

    state: ProjectionState  # whose it was (the bookkeeping as it was then)
    value: IssuedValue
    ended: str  # "superseded" or "revoked"
    at: dt.datetime


class ProjectionStore:
    def __init__(self) -> None:
        self._states: dict[str, ProjectionState] = {}
        self._by_credential: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._by_fingerprint: dict[str, set[Holding]] = defaultdict(set)  # a static value: many pods
        self._by_token_id: dict[str, set[Holding]] = defaultdict(set)
        self._by_pod_uid: dict[str, str] = {}
        self._past: OrderedDict[str, list[PastValue]] = OrderedDict()  # by fingerprint and by token id
        self._per_namespace: dict[str, int] = defaultdict(int)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[ProjectionState]:
        return iter(list(self._states.values()))

    def get(self, key: str) -> ProjectionState | None:
        return self._states.get(key)

    def keys_with(self, namespace: str, credential: str) -> set[str]:
        return set(self._by_credential.get((namespace, credential), ()))

    def live_in(self, namespace: str) -> int:
        """Projections (pods' Secrets) in one namespace."""
        return self._per_namespace.get(namespace, 0)

    def key_of_pod(self, pod_uid: str) -> str | None:
        return self._by_pod_uid.get(pod_uid)

    def holding(self, reference: str) -> set[Holding]:
        """Where a live value is, by its fingerprint or its token id."""
        return set(self._by_fingerprint.get(reference, ())) | set(self._by_token_id.get(reference, ()))

    def fingerprints_matching(self, digest: str) -> list[str]:
        """Full fingerprints, live or remembered, whose digest starts with `digest` (what the
        short form shows). A scan, but of strings only: milliseconds at 10,000 values."""
        found = [fp for fp in self._by_fingerprint if fp.rpartition(":")[2].startswith(digest)]
        return found + [ref for ref in self._past if ref.rpartition(":")[2].startswith(digest) and ref not in found]

    def past(self, reference: str) -> list[PastValue]:
        return list(self._past.get(reference, ()))

    def count_by_category(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for state in self._states.values():
            for value in state.values.values():
                counts[value.category] += 1
        return dict(counts)

    def put(self, state: ProjectionState) -> None:
        previous = self._states.get(state.key)
        self._drop(state.key)
        if previous is not None:
            for name, value in previous.values.items():
                now_held = state.values.get(name)
                if now_held is None or now_held.fingerprint != value.fingerprint:
                    self._remember(previous, value, "superseded" if now_held is not None else "revoked")
        self._states[state.key] = state
        self._per_namespace[state.namespace] += 1
        if state.pod_uid:
            self._by_pod_uid[state.pod_uid] = state.key
        for credential, value in state.values.items():
            self._by_credential[(state.namespace, credential)].add(state.key)
            self._by_fingerprint[value.fingerprint].add((state.key, credential))
            if value.token_id:
                self._by_token_id[value.token_id].add((state.key, credential))

    def forget(self, key: str) -> None:
        current = self._states.get(key)
        self._drop(key)
        if current is not None:
            for value in current.values.values():
                self._remember(current, value, "revoked")

    def _drop(self, key: str) -> None:
        current = self._states.pop(key, None)
        if current is None:
            return
        self._per_namespace[current.namespace] -= 1
        if not self._per_namespace[current.namespace]:
            del self._per_namespace[current.namespace]
        if self._by_pod_uid.get(current.pod_uid) == key:
            del self._by_pod_uid[current.pod_uid]
        for credential, value in current.values.items():
            _discard(self._by_credential, (current.namespace, credential), key)
            _discard(self._by_fingerprint, value.fingerprint, (key, credential))
            if value.token_id:
                _discard(self._by_token_id, value.token_id, (key, credential))

    def _remember(self, state: ProjectionState, value: IssuedValue, ended: str) -> None:
        now = utcnow()
        while self._past and len(self._past) >= PAST_LIMIT:
            self._past.popitem(last=False)  # the oldest first
        # Expired long ago: nothing to say about it that its expiry does not.
        for reference in list(itertools.islice(self._past, 8)):  # not list(self._past): a copy of every key
            if all(p.value.expires_at + PAST_KEPT < now for p in self._past[reference]):
                del self._past[reference]
        past = PastValue(state, value, ended, now)
        for reference in filter(None, (value.fingerprint, value.token_id)):
            remembered = self._past.setdefault(reference, [])
            remembered[:] = [*remembered[-(PAST_PER_VALUE - 1) :], past]  # a static value: many pods
            self._past.move_to_end(reference)


def _discard(index: dict[Any, set[Any]], key: object, item: object) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(item)
        if not found:
            del index[key]
