"""Tokens revoked before their expiry, by pod: one entry covers every token of a pod.

An entry names a pod UID and a credential (or `*`, every credential of the pod): it revokes
every token issued to that pod for that credential -- the projected value and every token
exchanged from it -- or, with `before`, those issued before a moment (a leaked value is
replaced by a fresh one). So the list grows with revoked pods, never with exchanges, and a
token revoked by one replica is revoked for every replica without anyone remembering its id.
An entry is dropped `EXPIRY_SKEW` after `until`, once every token it covers has expired even
to a verifier that allows for clock skew. A token its holder
revokes (RFC 7009) gets an entry of its own, naming its `jti` too: it covers that token and
every token exchanged from it (they carry their ancestors' ids), nothing else. A pod may hold
at most `MAX_TOKEN_ENTRIES_PER_POD` of those at once (they lapse with their tokens): else one
pod issued 5 tokens a second and revoking each would keep ~1,650 entries in its shard, and a
few such pods would make the shard too large to save.

Verifiers fetch the list with the JWKS, anonymously, so the served list names pods and
credentials only by a hash (`blinded`) a verifier computes from the token it holds: a reader
without a token learns no other tenant's pod UIDs or credential names (pod UIDs are random,
so the hashes cannot be guessed back). The operator keeps the list in a few ConfigMaps (shards,
by pod UID) in its namespace. Replicas only ever add entries and drop expired ones, so
merging two views is their union: a write that lost a race is merged and written again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

REVOCATIONS_KEY = "revoked.json"
DEFAULT_SHARDS = 8
# A ConfigMap holds at most 1 MiB; stay well under it so a shard never fails to save.
SHARD_LIMIT_BYTES = 900 * 1024
ALL_CREDENTIALS = "*"
# Holder revocations (RFC 7009) one pod may have on the list at once: its entries stay within
# a few KiB, as a revoked pod's do.
MAX_TOKEN_ENTRIES_PER_POD = 16
# Entries (and live pods that will each leave one) one namespace may have: past it, its new pods
# wait until entries lapse. Without it one tenant churning short pods -- 3,400 of them with 16
# credentials, seven minutes of a namespace admin's work -- filled shards past what a ConfigMap
# holds: revocations stopped reaching the other replicas, every tenant's.
DEFAULT_BUDGET = 20_000
# Verifiers accept a token this long past its `exp` (clock skew): an entry outlives the
# tokens it covers by as much, or a revoked token would verify again in its last seconds.
EXPIRY_SKEW = dt.timedelta(seconds=30)


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _moment(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)


@dataclass(frozen=True)
class RevocationEntry:
    pod_uid: str
    credential: str  # or ALL_CREDENTIALS
    until: dt.datetime  # every token this covers has expired by then
    before: dt.datetime | None = None  # only tokens issued before this; None: all of them
    token_id: str = ""  # only this token and those exchanged from it; "": every token
    namespace: str = ""  # the pod's (the tenant whose budget it counts against); "" if unknown
    ended: bool = False  # the pod's task ended: nothing left to bar, only tokens to cover

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.pod_uid, self.credential, self.token_id)

    @property
    def bar(self) -> bool:
        """Does it bar a pod that lives on from the credential (not only cover what was issued)?"""
        return self.before is None and not self.token_id and not self.ended

    def covers(self, issued_at: dt.datetime) -> bool:
        return self.before is None or issued_at < self.before

    def merged(self, other: RevocationEntry) -> RevocationEntry:
        """Both at once: the wider cut-off, the later expiry."""
        before = None if self.before is None or other.before is None else max(self.before, other.before)
        return RevocationEntry(
            self.pod_uid,
            self.credential,
            max(self.until, other.until),
            before,
            self.token_id,
            self.namespace or other.namespace,
            self.ended or other.ended,
        )

    def document(self) -> dict[str, Any]:
        """The served form: pod and credential blinded (see `served_key`)."""
        pod, credential = served_key(self.pod_uid, self.credential)
        entry: dict[str, Any] = {"pod": pod, "credential": credential, "exp": _epoch(self.until)}
        if self.before is not None:
            entry["before"] = _epoch(self.before)
        if self.token_id:
            entry["jti"] = self.token_id
        return entry


def blinded(*parts: str) -> str:
    return hashlib.sha256("\0".join(("agentcred-revocation", *parts)).encode()).hexdigest()[:32]


def served_key(pod_uid: str, credential: str) -> tuple[str, str]:
    """How the served list names a pod and one of its credentials (`*` stays `*`)."""
    return blinded(pod_uid), credential if credential == ALL_CREDENTIALS else blinded(pod_uid, credential)


def shard_of(pod_uid: str, shards: int) -> int:
    return int(hashlib.sha256(pod_uid.encode()).hexdigest()[:8], 16) % shards


class RevocationList:
    def __init__(self, shards: int = DEFAULT_SHARDS, budget: int = DEFAULT_BUDGET) -> None:
        self.shards = shards
        self.budget = budget  # entries one namespace may have before its new pods wait
        self._entries: dict[tuple[str, str, str], RevocationEntry] = {}
        self._token_keys: dict[str, set[tuple[str, str, str]]] = {}  # a pod's holder revocations
        # By namespace: the entries the operator made (ended tasks, bars), and those the holders
        # of its pods' tokens made (RFC 7009), counted apart.
        self._by_namespace: dict[str, set[tuple[str, str, str]]] = {}
        self._holders_by_namespace: dict[str, set[tuple[str, str, str]]] = {}
        self.dirty: set[int] = set()  # shards changed since they were last saved

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RevocationEntry]:
        return iter(list(self._entries.values()))

    def add(self, revocation: RevocationEntry) -> None:
        current = self._entries.get(revocation.key)
        merged = revocation if current is None else current.merged(revocation)
        if merged != current:
            self._put(merged)
            self.dirty.add(shard_of(revocation.pod_uid, self.shards))

    def _namespaces(self, key: tuple[str, str, str]) -> dict[str, set[tuple[str, str, str]]]:
        return self._holders_by_namespace if key[2] else self._by_namespace

    def _put(self, entry: RevocationEntry) -> None:
        previous = self._entries.get(entry.key)
        if previous is not None and previous.namespace != entry.namespace:
            _discard(self._namespaces(entry.key), previous.namespace, entry.key)
        self._entries[entry.key] = entry
        if entry.token_id:
            self._token_keys.setdefault(entry.pod_uid, set()).add(entry.key)
        self._namespaces(entry.key).setdefault(entry.namespace, set()).add(entry.key)

    def _drop(self, key: tuple[str, str, str]) -> None:
        entry = self._entries.pop(key, None)
        _discard(self._token_keys, key[0], key)
        if entry is not None:
            _discard(self._namespaces(key), entry.namespace, key)

    def revoke(
        self,
        pod_uid: str,
        credential: str,
        until: dt.datetime,
        before: dt.datetime | None = None,
        namespace: str = "",
        ended: bool = False,
    ) -> None:
        self.add(RevocationEntry(pod_uid, credential, until, before, namespace=namespace, ended=ended))

    def revoke_token(
        self, pod_uid: str, credential: str, token_id: str, until: dt.datetime, namespace: str = ""
    ) -> bool:
        """One token (and those exchanged from it), as its holder asked; False, and nothing
        added, if the pod already has `MAX_TOKEN_ENTRIES_PER_POD` such entries or its namespace
        is at its budget."""
        revocation = RevocationEntry(pod_uid, credential, until, token_id=token_id, namespace=namespace)
        held = self._token_keys.get(pod_uid, set())
        if revocation.key not in held and (
            len(held) >= MAX_TOKEN_ENTRIES_PER_POD or self.over_budget(namespace, holders=True)
        ):
            return False
        self.add(revocation)
        return True

    def held_by(self, namespace: str, holders: bool = False) -> int:
        """Entries of one namespace's pods: those the operator made (ended tasks, bars), or
        with `holders` those the holders of its tokens made (RFC 7009)."""
        return len((self._holders_by_namespace if holders else self._by_namespace).get(namespace, ()))

    def over_budget(self, namespace: str, live: int = 0, holders: bool = False) -> bool:
        """Has the namespace used its budget: its entries, and `live` pods that will each add
        one when their task ends? ("": pods of no known namespace, never held back.) Holder
        revocations count apart: whoever holds a tenant's tokens (a tool server of another
        tenant) can make those, and they must not hold back the tenant's new pods."""
        return bool(namespace) and self.held_by(namespace, holders) + live >= self.budget

    def barring(self) -> list[RevocationEntry]:
        """Entries that bar a pod living on from a credential (see `RevocationEntry.bar`)."""
        return [entry for entry in self._entries.values() if entry.bar]

    def extend(self, entry: RevocationEntry, until: dt.datetime) -> None:
        """Keep an entry until `until` (never shorter than it was)."""
        self.add(dataclasses.replace(entry, until=until))

    def token_room_at(self, pod_uid: str) -> dt.datetime | None:
        """When the first of the pod's holder revocations lapses (None: it has none)."""
        first = min((self._entries[key].until for key in self._token_keys.get(pod_uid, ())), default=None)
        return None if first is None else first + EXPIRY_SKEW

    def covers(self, pod_uid: str, credential: str, issued_at: dt.datetime, token_ids: tuple[str, ...] = ()) -> bool:
        """Is a token issued to this pod for this credential at `issued_at` revoked? `token_ids`:
        the token's own id and those of the tokens it was exchanged from."""
        keys = [(pod_uid, credential, ""), (pod_uid, ALL_CREDENTIALS, "")]
        keys += [(pod_uid, credential, token_id) for token_id in token_ids if token_id]
        return any(entry is not None and entry.covers(issued_at) for entry in map(self._entries.get, keys))

    def bars(self, pod_uid: str, credential: str, now: dt.datetime) -> bool:
        """Is the pod barred from the credential (every token of it revoked, not only those
        issued before some moment)?"""
        return any(
            entry is not None and entry.before is None and entry.until > now
            for entry in (
                self._entries.get((pod_uid, credential, "")),
                self._entries.get((pod_uid, ALL_CREDENTIALS, "")),
            )
        )

    def fresh_after(self, pod_uid: str, credential: str) -> dt.datetime | None:
        """From when a fresh token of the credential for the pod is outside every entry that
        covers the pod by a cut-off (None: no such entry)."""
        cut_offs = [
            entry.before
            for entry in (
                self._entries.get((pod_uid, credential, "")),
                self._entries.get((pod_uid, ALL_CREDENTIALS, "")),
            )
            if entry is not None and entry.before is not None
        ]
        return max(cut_offs, default=None)

    def prune(self, now: dt.datetime) -> None:
        for key, entry in list(self._entries.items()):
            if entry.until + EXPIRY_SKEW <= now:
                self._drop(key)
                self.dirty.add(shard_of(entry.pod_uid, self.shards))

    def document(self) -> dict[str, Any]:
        """The served form, for verifiers."""
        # Sorted as served (by hash): in the order of raw pod UIDs, the list would hint at them.
        entries = (entry.document() for entry in self._entries.values())
        return {"revoked": sorted(entries, key=lambda e: (e["pod"], e["credential"], e.get("jti", "")))}

    # -- persistence: one ConfigMap per shard ------------------------------------------

    def shard_data(self, shard: int) -> dict[str, str]:
        entries = {
            "/".join(part for part in e.key if part): _stored(e)
            for e in self._entries.values()
            if shard_of(e.pod_uid, self.shards) == shard
        }
        return {REVOCATIONS_KEY: json.dumps(entries, separators=(",", ":"), sort_keys=True)}

    def merge_shard_data(self, data: dict[str, str] | None) -> None:
        """Add what a saved shard holds (a union: nothing known here is lost)."""
        raw = json.loads((data or {}).get(REVOCATIONS_KEY) or "{}")
        for key, stored in raw.items():
            until, before, *more = stored  # [until, before] as older replicas wrote it; then namespace, ended
            pod_uid, _, rest = str(key).partition("/")
            credential, _, token_id = rest.partition("/")
            revocation = RevocationEntry(
                pod_uid,
                credential,
                _moment(until),
                _moment(before) if before else None,
                token_id,
                namespace=str(more[0]) if more else "",
                ended=bool(more[1]) if len(more) > 1 else False,
            )
            current = self._entries.get(revocation.key)
            self._put(revocation if current is None else current.merged(revocation))


def _stored(entry: RevocationEntry) -> list[Any]:
    stored: list[Any] = [_epoch(entry.until), _epoch(entry.before) if entry.before else None]
    if entry.namespace or entry.ended:
        stored += [entry.namespace, 1 if entry.ended else 0]
    return stored


def _discard(index: dict[Any, set[Any]], key: Any, item: Any) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(item)
        if not found:
            del index[key]


def too_large(data: dict[str, str]) -> bool:
    return sum(len(value) for value in data.values()) > SHARD_LIMIT_BYTES


def parse_document(document: dict[str, Any]) -> Iterable[RevocationEntry]:
    """Entries from the served document (what verifiers read), skipping malformed ones; they
    name pods and credentials blinded, so look a token up by its `served_key`."""
    for entry in document.get("revoked") or []:
        try:
            yield RevocationEntry(
                str(entry["pod"]),
                str(entry["credential"]),
                _moment(entry["exp"]),
                _moment(entry["before"]) if entry.get("before") is not None else None,
                str(entry.get("jti") or ""),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
