"""Opted-in pods, followed with the operator's own list and watch, kept in memory as tasks.

One paged list at start (and again whenever a watch can no longer resume), then one watch
from the list's resourceVersion. Each event updates the index at once and is handed to the
pod handler on a worker per pod: one pod's events are handled one at a time (those that
arrive while one is handled collapse into the latest), different pods' concurrently.

Events are handled by a fixed number of workers (`WORKERS`), pods whose task ended first:
a revocation never waits behind a burst of issues, and a new leader's ten thousand listed pods
are not ten thousand coroutines at once (each holding its frames, its lock and its place in
the connection pool's queue). Each line is taken a namespace at a time, in turn: one tenant's
burst (a thousand pods deleted at once) is not a queue another tenant's revocation waits at the
back of.

Only what the operator reads of a pod is kept: its task (`api.pods.PodTask`) if the webhook
admitted it, else a note that it was seen. An update that leaves the task as it was (a
status the kubelet writes, a condition, a container's state) is not handed on: nothing the
operator reads changed. Pods gone while no watch was open (found missing from a new list)
are handed on as deleted, with the task they last had. An admitted pod whose seal stops
holding keeps its task, opted out (its values go).

Why not a Kopf index: Kopf gives every object it lists a worker and a readiness toggle, and
each listed object wakes every waiting worker, so listing N pods costs O(N^2) (5 s with 1,000
live pods, 75 s with 4,000); and its per-event machinery (causes, progress and diff-base
bookkeeping) cost more CPU per pod event than the operator's own work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from ...api.pods import PodTask
from ...platform.kube import Gone, Kube, status_of

log = logging.getLogger(__name__)

PODS = "/api/v1/pods"
# What a pod event carries: its type ("ADDED", "MODIFIED", "DELETED", or None when listed),
# the pod as the API server sent it, and its task if the webhook admitted it.
Handler = Callable[[str | None, dict[str, Any], PodTask | None], Awaitable[None]]
Admitted = Callable[[dict[str, Any], bool], PodTask | None]
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Pods handled at once: twice the API client's pooled connections, so each has a request in
# flight while as many more do their in-process work.
WORKERS = 64
# Pods per page of a list: a page is decoded whole (a pod with its managedFields is some 40 KB
# of Python objects), and 500 of them were 21 MB of a new leader's start-up, most of it kept
# as fragmentation after the page was gone.
LIST_PAGE = 100


class PodIndex:
    """Admitted pods by projection key ("namespace/binding") and by (namespace, name); and
    every pod seen, admitted or not, by UID."""

    def __init__(self) -> None:
        self._seen: dict[str, PodTask | None] = {}  # by UID; None: not admitted
        self._names: dict[str, tuple[str, str]] = {}  # UID -> (namespace, name)
        self._by_key: dict[str, dict[str, PodTask]] = {}
        self._by_name: dict[tuple[str, str], PodTask] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def tasks(self, key: str) -> list[PodTask]:
        """The admitted pods naming this binding (more than one: a copied admission)."""
        return list(self._by_key.get(key, {}).values())

    def by_name(self, namespace: str, name: str) -> PodTask | None:
        return self._by_name.get((namespace, name))

    def keys(self) -> list[str]:
        return list(self._by_key)

    def uids(self) -> Iterator[str]:
        return iter(list(self._seen))

    def seen(self, uid: str) -> bool:
        return uid in self._seen

    def last(self, uid: str) -> PodTask | None:
        return self._seen.get(uid)

    def name_of(self, uid: str) -> tuple[str, str] | None:
        return self._names.get(uid)

    def put(self, uid: str, namespace: str, name: str, task: PodTask | None) -> None:
        self.drop(uid)
        self._seen[uid] = task
        self._names[uid] = (namespace, name)
        if task is not None:
            self._by_key.setdefault(task.key, {})[uid] = task
            self._by_name[(task.namespace, task.name)] = task

    def drop(self, uid: str) -> None:
        previous = self._seen.pop(uid, None)
        self._names.pop(uid, None)
        if previous is None:
            return
        same_key = self._by_key.get(previous.key)
        if same_key is not None:
            same_key.pop(uid, None)
            if not same_key:
                del self._by_key[previous.key]
        if (named := self._by_name.get((previous.namespace, previous.name))) is not None and named.uid == uid:
            del self._by_name[(previous.namespace, previous.name)]


def _altered(previous: PodTask, body: dict[str, Any], deleted: bool) -> PodTask:
    """An admitted pod whose seal no longer holds: its sealed annotations were edited (only
    possible where the pod guard is not installed). It is still the pod that was given values,
    now opted out: they are revoked at once. Forgotten instead, it went unrevoked when its
    task ended, its value verifying until its next renewal was due."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return dataclasses.replace(
        previous,
        opted_out=True,
        deleted=deleted or bool(meta.get("deletionTimestamp")),
        phase=status.get("phase") or previous.phase,
    )


def _slim(body: dict[str, Any]) -> dict[str, Any]:
    """What the handler reads of an admitted pod's object (its task holds the rest). Listed
    at start-up, every pod waits for the handling to begin: whole, 10,000 of them were most of
    a new leader's memory (430 MB against 180 MB for the replica that had projected them)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    kept = {key: meta[key] for key in ("namespace", "name", "uid", "deletionTimestamp") if key in meta}
    return {"metadata": kept, "spec": {"serviceAccountName": spec.get("serviceAccountName")}}


class _Turns:
    """Pods waiting in one line, taken one namespace at a time in turn (first in, first out
    within a namespace)."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[str]] = {}  # by namespace
        self._turns: deque[str] = deque()  # the namespaces with pods waiting, next turn first

    def __bool__(self) -> bool:
        return bool(self._turns)

    def append(self, namespace: str, uid: str) -> None:
        line = self._lines.get(namespace)
        if line is None:
            line = self._lines[namespace] = deque()
            self._turns.append(namespace)
        line.append(uid)

    def popleft(self) -> str:
        namespace = self._turns.popleft()
        line = self._lines[namespace]
        uid = line.popleft()
        if line:
            self._turns.append(namespace)
        else:
            del self._lines[namespace]
        return uid


class PodWatch:
    """Lists and watches the pods matching `selector`, keeps `index`, and hands events on.

    `listed` is set once the first list is in the index; events of that list are handed on
    (as type None) only once `handling` is set, so nothing acts on a half-known world."""

    name = "pod watch"
    needs_leader = False

    def __init__(
        self,
        kube: Kube,
        selector: str,
        admitted: Admitted,
        handler: Handler,
        *,
        handling: asyncio.Event,
        namespaces: Sequence[str] = (),
        index: PodIndex | None = None,
    ) -> None:
        self.kube, self.selector, self.admitted, self.handler = kube, selector, admitted, handler
        # Every namespace (one list and watch), or each of `namespaces` (namespace-scoped: the
        # only places this operator may list pods).
        self.namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.index = index if index is not None else PodIndex()
        self.listed = asyncio.Event()
        self._unlisted = set(self.namespaces)
        self.handling = handling
        self._pending: dict[str, tuple[str | None, dict[str, Any], PodTask | None]] = {}
        # Pods waiting for a worker, ended ones apart, each line a namespace at a time; a pod's
        # entry in `_queued` says which line it is in (True: ended), so an entry left behind in
        # the other is skipped.
        self._ended = _Turns()
        self._others = _Turns()
        self._queued: dict[str, bool] = {}
        self._active: set[str] = set()
        self._lined_up = asyncio.Semaphore(0)  # one release per entry put in a line: wakes one worker

    async def run(self) -> None:
        workers = [asyncio.create_task(self._work(), name=f"pod worker {n}") for n in range(WORKERS)]
        try:
            await asyncio.gather(*(self._follow(namespace) for namespace in self.namespaces))
        finally:
            for worker in workers:
                worker.cancel()

    async def _follow(self, namespace: str | None) -> None:
        path = PODS if namespace is None else f"/api/v1/namespaces/{namespace}/pods"
        version = ""
        failures = 0
        while True:
            try:
                if not version:
                    version = await self._list(path, namespace)
                async for event in self.kube.watch(path, self.selector, version):
                    version = self.observe(event) or version
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Gone:
                version = ""  # too old to resume from: list again
            except Exception as error:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("watching pods failed (%s); again in %.1fs", status_of(error) or error, delay)
                await asyncio.sleep(delay)

    async def _list(self, path: str, namespace: str | None) -> str:
        """List every pod at `path`; what changed since the index last saw it is handed on."""
        first = namespace in self._unlisted
        listed: set[str] = set()
        version = ""
        async for items, page_version in self.kube.list_pages(path, self.selector, page=LIST_PAGE):
            version = page_version  # the same on every page of one list
            for body in items:
                uid = str((body.get("metadata") or {}).get("uid") or "")
                listed.add(uid)
                self._update(None if first else "MODIFIED", body, uid)
        for uid in self.index.uids():
            named = self.index.name_of(uid)
            inside = namespace is None or (named is not None and named[0] == namespace)
            if inside and uid not in listed:  # deleted while no watch was open
                self._vanished(uid)
        if first:
            log.info("listed %d opted-in pod(s)%s", len(listed), f" in {namespace}" if namespace else "")
            self._unlisted.discard(namespace)
            if not self._unlisted:
                self.listed.set()
            await self.handling.wait()
            for uid in list(self._pending):
                self._start(uid)
        return version

    def observe(self, event: dict[str, Any]) -> str | None:
        """One watch event into the index (and on to the handler); its resourceVersion."""
        kind, body = event.get("type"), event.get("object") or {}
        meta = body.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._update(str(kind), body, str(meta.get("uid") or ""))
        return meta.get("resourceVersion")

    def _update(self, kind: str | None, body: dict[str, Any], uid: str) -> None:
        meta = body.get("metadata") or {}
        deleted = kind == "DELETED"
        task = self.admitted(body, deleted)
        if task is None and (previous := self.index.last(uid)) is not None:
            task = _altered(previous, body, deleted)
        if kind == "MODIFIED" and self.index.seen(uid) and self.index.last(uid) == task:
            return  # nothing the operator reads of this pod changed
        if deleted:
            self.index.drop(uid)
        else:
            self.index.put(uid, str(meta.get("namespace") or ""), str(meta.get("name") or ""), task)
        self._hand_on(uid, kind, body, task)

    def _vanished(self, uid: str) -> None:
        last, named = self.index.last(uid), self.index.name_of(uid)
        namespace, name = named or ("", "")
        self.index.drop(uid)
        body = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
        self._hand_on(uid, "DELETED", body, dataclasses.replace(last, deleted=True) if last else None)

    def _hand_on(self, uid: str, kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
        self._pending[uid] = (kind, body if task is None else _slim(body), task)
        if self.handling.is_set():
            self._start(uid)

    def _start(self, uid: str) -> None:
        if uid in self._active:
            return  # its worker takes the new event next
        kind, body, task = self._pending[uid]
        namespace = str((body.get("metadata") or {}).get("namespace") or "")
        ended = kind == "DELETED" or (task is not None and task.end_reason is not None)
        line = self._queued.get(uid)
        if ended and line is not True:
            self._ended.append(namespace, uid)
        elif line is None:
            self._others.append(namespace, uid)
        else:
            return
        self._queued[uid] = ended or bool(line)
        self._lined_up.release()

    def _next(self) -> str | None:
        for ended, line in ((True, self._ended), (False, self._others)):
            while line:
                uid = line.popleft()
                if self._queued.get(uid) is ended:
                    del self._queued[uid]
                    return uid
        return None

    async def _work(self) -> None:
        while True:
            await self._lined_up.acquire()
            if (uid := self._next()) is None:
                continue  # an entry left behind when its pod moved to the ended line
            self._active.add(uid)
            try:
                while (item := self._pending.pop(uid, None)) is not None:
                    try:
                        await self.handler(*item)
                    except Exception:
                        log.exception("handling an event of pod %s failed", uid)
            finally:
                self._active.discard(uid)
