"""Health checks of minting services (`source.webhook.healthCheck: true`).

Every replica probes (each one admits pods, so each must know): at once when such a
credential appears or changes, then every `interval`. A change of answer re-judges the
credential, so its Ready condition follows the service without waiting for a pod.

Each credential's probe runs on its own: a service that hangs until the call's timeout (up to
30 s) holds back its own credential's next probe, never another's. Probed in rounds, every
credential waited for the slowest probe of the round: one tenant's hanging service delayed
another tenant's recovery by the whole timeout, its pods refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ...rules.credentials import CredentialRecord, SourceProblem
from ..view import ClusterView

log = logging.getLogger(__name__)

Key = tuple[str, str]
Problem = SourceProblem


def checked(record: CredentialRecord) -> bool:
    webhook = record.spec.source.webhook if record.spec else None
    return webhook is not None and bool(webhook.health_check)


class MintingHealth:
    name = "minting-service health checks"
    needs_leader = False

    def __init__(
        self,
        probe: Callable[[CredentialRecord], Awaitable[Problem | None]],
        view: ClusterView,
        on_change: Callable[[list[CredentialRecord]], Awaitable[None]],
        interval: float = 30.0,
    ) -> None:
        self.probe, self.view, self.on_change, self.interval = probe, view, on_change, interval
        self._problems: dict[Key, Problem | None] = {}
        self._seen: dict[Key, int] = {}  # generation last probed
        self._probing: dict[Key, asyncio.Task[None]] = {}  # at most one probe per credential
        self._wake = asyncio.Event()

    def problem(self, namespace: str, name: str) -> Problem | None:
        """The last probe's failure; None when healthy or not probed yet (a new credential is
        probed at once, see `seen`)."""
        return self._problems.get((namespace, name))

    def seen(self, record: CredentialRecord) -> None:
        """A credential event: probe now if it is new or changed."""
        if checked(record) and self._seen.get(record.key) != record.generation:
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                    due_only = True
                except TimeoutError:
                    due_only = False
                self._wake.clear()
                try:
                    self.check(due_only)
                except Exception:  # the loop must outlive one bad round
                    log.exception("minting-service health checks failed")
        finally:
            for task in list(self._probing.values()):
                task.cancel()

    def check(self, new_only: bool = False) -> list[asyncio.Task[None]]:
        """Start a probe of every credential with a health check (or only of new and changed
        ones) whose previous probe has finished; the probes started."""
        records = [r for r in self.view.credentials() if checked(r)]
        live = {r.key for r in records}
        for key in [key for key in self._seen if key not in live]:
            self._seen.pop(key, None)
            self._problems.pop(key, None)
        started = []
        for record in records:
            if record.key in self._probing or (new_only and self._seen.get(record.key) == record.generation):
                continue
            task = asyncio.create_task(self._probe(record), name=f"health check {record.namespace}/{record.name}")
            self._probing[record.key] = task
            started.append(task)
        return started

    async def _probe(self, record: CredentialRecord) -> None:
        try:
            answer = await self.probe(record)
            current = next((r for r in self.view.credentials() if r.key == record.key and checked(r)), None)
            if current is None:
                return  # deleted, or no longer checked, while it was probed
            if current.generation != record.generation:
                self._wake.set()  # changed meanwhile: probe the new spec next
            self._seen[record.key] = record.generation
            if self._problems.get(record.key) != answer:
                self._problems[record.key] = answer
                await self.on_change([record])
        except Exception:  # one credential's probe must never stop the others'
            log.exception("health check of %s/%s failed", record.namespace, record.name)
        finally:
            self._probing.pop(record.key, None)
