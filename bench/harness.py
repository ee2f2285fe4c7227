"""Shared pieces of the benchmark: a lean API client, watch followers, waits, statistics and
a results file written after every stage (with the load average around it).

The same client (threads, HTTP pool, JSON encoding) drives agentcred, the floor and External
Secrets, so none of them pays for the benchmark's own client more than the others.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client

CLIENT_THREADS = 16


# -- statistics ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def summary_ms(values: Iterable[float]) -> dict[str, float]:
    """n, p50, p99, max and mean of durations in seconds, reported in milliseconds."""
    values = list(values)
    nan = float("nan")
    return {
        "n": len(values),
        "p50": percentile(values, 50) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": max(values) * 1000 if values else nan,
        "mean": statistics.fmean(values) * 1000 if values else nan,
    }


# -- a lean API client --------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status


class Lean:
    """JSON over one urllib3 pool with the kubeconfig's TLS client certificate.

    The generated client spends milliseconds of CPU per call on models and validation; on two
    shared cores that would be charged to whatever is measured, so the hot paths use this.
    """

    RETRIED = (429, 500, 502, 503, 504)

    def __init__(self, configuration: client.Configuration, pool: int = CLIENT_THREADS * 4) -> None:
        self.host = configuration.host.rstrip("/")
        self.headers = {"Accept": "application/json"}
        token = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get("BearerToken")
        if token:
            self.headers["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool,
            block=False,
            cert_reqs="CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            ca_certs=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
        )

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201, 202),
        timeout: float = 60.0,
        attempts: int = 5,
    ) -> bytes:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(attempts):
            try:
                response = self.pool.request(
                    method,
                    self.host + path,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=10, read=timeout),
                    retries=False,
                )
            except (urllib3.exceptions.HTTPError, OSError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status in ok:
                return response.data
            if response.status in self.RETRIED and attempt < attempts - 1:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ApiError(response.status, method, path, response.data)
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.call(method, path, body, **kwargs))
        return decoded

    def exists(self, path: str) -> bool:
        try:
            self.call("GET", path)
            return True
        except ApiError as error:
            if error.status == 404:
                return False
            raise

    def stream(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The events of one watch request, decoded, until the server ends it."""
        response = self.pool.request(
            "GET",
            self.host + path,
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout),
            retries=False,
        )
        try:
            if response.status != 200:
                raise ApiError(response.status, "GET", path, response.read())
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                buffer += chunk
                while True:
                    cut = buffer.find(b"\n")
                    if cut < 0:
                        break
                    line, buffer = buffer[:cut], buffer[cut + 1 :]
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()

    def run_all(self, work: Callable[[Any], Any], items: Iterable[Any], threads: int = CLIENT_THREADS) -> list[Any]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(work, items))


def query(**params: Any) -> str:
    present = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urllib.parse.urlencode(present) if present else ""


# -- following a collection ---------------------------------------------------------------


class Follower:
    """Follows one collection (list, then watch, re-listing when the watch expires) and records
    client-side times per key: first seen, first time each mark held, every change of `data`,
    and deletion. Times are time.monotonic() when the event was read."""

    def __init__(
        self,
        lean: Lean,
        collection: str,
        key: Callable[[dict[str, Any]], str | None],
        *,
        selector: str = "",
        marks: dict[str, Callable[[dict[str, Any]], bool]] | None = None,
        writes: bool = False,
    ) -> None:
        self.lean = lean
        self.collection = collection
        self.key = key
        self.selector = selector
        self.marks = marks or {}
        self.track_writes = writes
        self.seen: dict[str, float] = {}
        self.marked: dict[str, dict[str, float]] = {name: {} for name in self.marks}
        self.deleted: dict[str, float] = {}
        self.writes: dict[str, list[float]] = {}
        self._data_hash: dict[str, int] = {}
        self._live: set[str] = set()
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow {collection}", daemon=True)
        self.error: BaseException | None = None
        self.events = 0

    def __enter__(self) -> Follower:
        self._thread.start()
        if not self._listed.wait(60):
            raise TimeoutError(f"could not list {self.collection}: {self.error}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    def _observe(self, kind: str, obj: dict[str, Any], now: float) -> None:
        key = self.key(obj)
        if key is None:
            return
        if kind == "DELETED":
            self.deleted.setdefault(key, now)
            self._live.discard(key)
            return
        self._live.add(key)
        self.seen.setdefault(key, now)
        for name, holds in self.marks.items():
            if key not in self.marked[name] and holds(obj):
                self.marked[name][key] = now
        if self.track_writes:
            data = obj.get("data") or {}
            digest = hash(tuple(sorted(data.items())))
            if self._data_hash.get(key) != digest:
                self._data_hash[key] = digest
                self.writes.setdefault(key, []).append(now)

    def _list(self) -> str:
        now = time.monotonic()
        present: set[str] = set()
        token = ""
        while True:
            page = self.lean.json(
                "GET", self.collection + query(labelSelector=self.selector, limit=500, **{"continue": token})
            )
            for item in page.get("items") or []:
                self._observe("ADDED", item, now)
                key = self.key(item)
                if key is not None:
                    present.add(key)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        for gone in self._live - present:  # deleted while we were not watching
            self.deleted.setdefault(gone, now)
        self._live &= present
        return str(page["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                    self._listed.set()
                path = self.collection + query(
                    watch=1,
                    resourceVersion=version,
                    allowWatchBookmarks="true",
                    timeoutSeconds=300,
                    labelSelector=self.selector,
                )
                for event in self.lean.stream(path, timeout=330):
                    now = time.monotonic()
                    self.events += 1
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = ""
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._observe(str(kind), obj, now)
                    if self._stop.is_set():
                        return
            except Exception as error:  # the watch must outlive a dropped connection
                self.error = error
                if isinstance(error, ApiError) and error.status == 410:
                    version = ""
                if not self._stop.is_set():
                    time.sleep(0.2)


def overruns(
    writes: dict[str, list[float]], period: float, *, since: float, until: float
) -> tuple[list[float], list[float]]:
    """How much later than `period` after its previous write each object was written again,
    for writes after `since`; and, for objects not written again by `until` though due, how
    overdue they are then (a lower bound on that refresh's lateness, so stalls are counted)."""
    late, overdue = [], []
    for times in writes.values():
        late += [max(0.0, b - a - period) for a, b in zip(times, times[1:], strict=False) if b >= since]
        if times and until - times[-1] > period and until - times[-1] - period > 0:
            overdue.append(until - times[-1] - period)
    return late, overdue


# -- waiting ------------------------------------------------------------------------------


def wait_count(
    count: Callable[[], int],
    target: int,
    what: str,
    *,
    stall: float = 120.0,
    ceiling: float | None = None,
    interval: float = 0.2,
) -> float:
    """Wait until count() >= target; fail when it stops moving for `stall` seconds or the whole
    wait passes `ceiling`. Returns the seconds waited. A big burst is never cut short by a
    fixed timeout, and a stuck one fails in bounded time."""
    started = last_move = time.monotonic()
    last = count()
    while last < target:
        now = time.monotonic()
        if now - last_move > stall:
            raise TimeoutError(f"{what}: stuck at {last}/{target} for {stall:.0f} s")
        if ceiling is not None and now - started > ceiling:
            raise TimeoutError(f"{what}: {last}/{target} after {ceiling:.0f} s")
        time.sleep(interval)
        current = count()
        if current != last:
            last, last_move = current, time.monotonic()
    return time.monotonic() - started


def wait_gone(lean: Lean, path: str, what: str, *, ceiling: float) -> float:
    started = time.monotonic()
    while lean.exists(path):
        if time.monotonic() - started > ceiling:
            raise TimeoutError(f"{what} still present after {ceiling:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


# -- results ------------------------------------------------------------------------------


class PartialResult(Exception):
    """A stage measured something, then failed (cleaning up, say): keep both."""

    def __init__(self, value: dict[str, Any], error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.value = value


class Results:
    """This run's results, written to disk (atomically) after every stage, so a later failure
    never discards what was measured before it."""

    def __init__(self, path: Path, run: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"run": run, "errors": {}}
        self.started = time.monotonic()
        self.write()

    def record(self, name: str, value: Any) -> None:
        self.data[name] = value
        self.write()

    def fail(self, name: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.data["errors"][name] = text
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(temporary, self.path)

    def stage(self, name: str, work: Callable[[], Any]) -> Any:
        """Run one stage: record its result, or its error, and go on either way."""
        print(f"[{time.monotonic() - self.started:6.0f} s] {name} ...", flush=True)
        began = time.monotonic()
        load_before = os.getloadavg()
        try:
            value = work()
        except PartialResult as partial:
            print(f"[{time.monotonic() - self.started:6.0f} s] {name} measured, then FAILED: {partial}", flush=True)
            self.record(name, {**partial.value, "stage_seconds": round(time.monotonic() - began, 1)})
            self.fail(name, partial)
            return partial.value
        except Exception as error:  # one broken stage must not cost the others
            traceback.print_exc()
            print(f"[{time.monotonic() - self.started:6.0f} s] {name} FAILED: {error}", flush=True)
            self.fail(name, error)
            return None
        if value is not None:
            if isinstance(value, dict):
                # Other work on the machine shares the cores: every figure carries the load beside it.
                load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
                value = {**value, "stage_seconds": round(time.monotonic() - began, 1), "load_average": load}
            self.record(name, value)
        return value
