"""AgentCredential status: one writer, batched, from the operator's own counts.

Issuing a value to a thousand pods must not mean a thousand writes to one object, so the
other parts note what happened in the StatusBook and this writer patches each changed
credential's status at most once per interval, only the fields that differ, and posts an
Event when Ready changes. When the date turns, every credential is judged again (reviews and
exceptions expire by the day).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from ...api.times import next_midnight, utcnow
from ...platform import metrics
from ...platform.kube import Kube, status_of
from ...platform.revocations import RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.status import status_patch
from ..events import EventRecorder
from ..store import ProjectionStore
from ..view import ClusterView
from .statusbook import StatusBook

log = logging.getLogger(__name__)


class StatusWriter:
    """The leader's loop that writes what the status book says changed, in batches."""

    name = "status writer"
    needs_leader = True

    def __init__(
        self,
        kube: Kube,
        book: StatusBook,
        store: ProjectionStore,
        events: EventRecorder,
        revocations: RevocationList,
        view: ClusterView,
        *,
        interval: float = 1.0,
    ) -> None:
        self.kube, self.book, self.store, self.events, self.revocations = kube, book, store, events, revocations
        self.view, self.interval = view, interval
        self._written: dict[tuple[str, str], dict[str, Any]] = {}

    def forget(self, key: tuple[str, str]) -> None:
        self._written.pop(key, None)

    async def run(self) -> None:
        turn = next_midnight(utcnow())
        while True:
            await asyncio.sleep(self.interval)
            if utcnow() >= turn:
                for record in self.view.credentials():
                    self.book.touch(record.key)
                turn = next_midnight(utcnow())
            await self.flush()

    async def flush(self) -> None:
        metrics.set_active(self.store.count_by_category())
        metrics.revocation_list.set(len(self.revocations))
        metrics.events_dropped.set(self.events.dropped)
        dirty, self.book.dirty = self.book.dirty, set()
        now = utcnow()
        for namespace, name in dirty:
            try:
                await self._write(namespace, name, now)
            except Exception:  # one credential must never stop the others' status
                log.exception("status of %s/%s not computed", namespace, name)
        metrics.status_writer_passes.inc()

    async def _write(self, namespace: str, name: str, now: dt.datetime) -> None:
        record = self.view.credential(namespace, name)
        if record is None:
            return
        active, next_expiry = self.store.held(namespace, name)
        desired = self.book.desired(record, active, next_expiry, now)
        known = {**record.status, **self._written.get(record.key, {})}
        changes = status_patch(known, desired)
        if not changes:
            return
        try:
            await self.kube.patch_credential_status(namespace, name, changes)
        except Exception as error:
            if status_of(error) == 422:
                # The schema refuses it and always will: trying again every interval only
                # knocks at the API server. The next change of the credential tries afresh.
                log.error("status of %s/%s refused by the CRD's schema (%s); not retried", namespace, name, error)
                return
            log.warning("status of %s/%s not written (%s); will retry", namespace, name, status_of(error) or error)
            self.book.dirty.add(record.key)
            return
        self._written[record.key] = {**self._written.get(record.key, {}), **changes}
        self._post_ready_transition(record, known, desired)

    def _post_ready_transition(self, record: CredentialRecord, known: dict[str, Any], desired: dict[str, Any]) -> None:
        def ready(status: dict[str, Any]) -> dict[str, Any] | None:
            return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)

        before, after = ready(known), ready(desired)
        if after and (before is None or before.get("status") != after.get("status")):
            self.events.post(
                record.owner_ref,
                "Normal" if after["status"] == "True" else "Warning",
                after["reason"],
                after["message"],
            )
