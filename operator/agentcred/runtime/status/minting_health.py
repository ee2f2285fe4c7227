"""Health checks of minting services (`source.webhook.healthCheck: true`).

Every replica probes (each one admits pods, so each must know): at once when such a
credential appears or changes, then every `interval`. A change of answer re-judges the
credential, so its Ready condition follows the service without waiting for a pod.
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
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                due_only = True
            except TimeoutError:
                due_only = False
            self._wake.clear()
            try:
                await self.check(due_only)
            except Exception:  # the loop must outlive one bad round
                log.exception("minting-service health checks failed")

    async def check(self, new_only: bool = False) -> None:
        """Probe every credential with a health check (or only new and changed ones)."""
        records = [r for r in self.view.credentials() if checked(r)]
        if new_only:
            records = [r for r in records if self._seen.get(r.key) != r.generation]
        answers = await asyncio.gather(*(self.probe(record) for record in records))
        changed = []
        for record, answer in zip(records, answers, strict=True):
            self._seen[record.key] = record.generation
            if self._problems.get(record.key) != answer:
                self._problems[record.key] = answer
                changed.append(record)
        live = {r.key for r in self.view.credentials()}
        for key in [key for key in self._seen if key not in live]:
            self._seen.pop(key, None)
            self._problems.pop(key, None)
        if changed:
            await self.on_change(changed)
