"""The revocation list kept in ConfigMaps: the leader saves changed shards (merging on a
lost race), followers save what they added themselves (a token its holder revoked at that
replica), and every replica -- the leader too -- merges what is saved, so every replica
serves the same list; a replica that cannot save it is not ready.

The leader says how current the saved list is: `saved_through`, the start of its last save
round that left nothing unsaved, goes on the Lease with each renewal. A follower that sees it
grow old -- the leader cannot save (a shard too large, the API server refusing), or the
follower cannot reload -- is no longer sure which values are revoked, and its token service
refuses to issue (`unsure`) rather than hand out tokens for a pod the leader revoked: with a
shard too large to save, a follower went on issuing tokens verifiers accepted."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from ...api.labels import ROLE_LABEL, StateNames
from ...api.times import format_time, parse_time, utcnow
from ...platform import metrics
from ...platform.kube import Conflict, Kube, namespaced, status_of
from ...platform.revocations import SHARD_LIMIT_BYTES, RevocationList, too_large

log = logging.getLogger(__name__)

REVOCATION_LABELS = {ROLE_LABEL: "revocations", "app.kubernetes.io/name": "agentcred"}
REVOCATION_SELECTOR = f"{ROLE_LABEL}=revocations"
UNSAVED_GRACE = dt.timedelta(seconds=10)  # unsaved longer than this: not ready
SAVED_ANNOTATION = "agentcred.dev/revocations-saved"  # on the Lease: the leader's `saved_through`


class RevocationStore:
    def __init__(self, kube: Kube, namespace: str, revocations: RevocationList, names: StateNames) -> None:
        self.kube, self.namespace, self.revocations, self.names = kube, namespace, revocations, names
        self._versions: dict[int, str] = {}
        self.unsaved_since: dt.datetime | None = None
        self.saved_through: dt.datetime | None = None  # every revocation made before it is saved
        self.reloaded_at: dt.datetime | None = None  # the start of the last complete reload

    def problem(self, now: dt.datetime | None = None) -> str | None:
        """Why this replica should not be ready: revocations it cannot save."""
        now = now or utcnow()
        if self.unsaved_since is not None and now - self.unsaved_since > UNSAVED_GRACE:
            return f"revocations not saved since {format_time(self.unsaved_since)}"
        return None

    def notes(self) -> dict[str, str]:
        """What the leader puts on the Lease with each renewal."""
        return {SAVED_ANNOTATION: format_time(self.saved_through)} if self.saved_through else {}

    def unsure(self, leader_notes: dict[str, str], stale: dt.timedelta, now: dt.datetime | None = None) -> str | None:
        """Why a follower cannot be sure its list holds every revocation, or None. `leader_notes`:
        what the leader last put on the Lease (no mark: it says nothing, as older versions do)."""
        now = now or utcnow()
        try:
            leader_saved = parse_time(leader_notes[SAVED_ANNOTATION]) if SAVED_ANNOTATION in leader_notes else None
        except ValueError:
            leader_saved = None
        if self.reloaded_at is None or now - self.reloaded_at > stale:
            return "the shared revocation list could not be read lately"
        if leader_saved is not None and now - leader_saved > stale:
            return f"the leader has not saved the revocation list since {format_time(leader_saved)}"
        return None

    async def reload(self) -> None:
        """Merge every shard saved since this replica last wrote or read it. The shards' versions
        come first (metadata only); a shard is read and merged only if its version is not the
        one this replica wrote or merged last: reading and parsing every shard every second
        cost each replica more the more pods had ended in the last hours."""
        began = utcnow()
        async for items in self.kube.metadata_pages(
            namespaced("v1", self.namespace, "configmaps"), REVOCATION_SELECTOR
        ):
            for item in items:
                meta = item.get("metadata") or {}
                shard = self.names.shard_number(str(meta.get("name") or ""))
                if shard is None or shard >= self.revocations.shards:
                    continue
                if meta.get("resourceVersion") and self._versions.get(shard) == meta["resourceVersion"]:
                    continue  # what this replica wrote or merged last: nothing new in it
                current = await self.kube.read_configmap(self.namespace, meta["name"])
                self.revocations.merge_shard_data(current.get("data"))
                self._versions[shard] = current["metadata"]["resourceVersion"]
        self.reloaded_at = began

    async def save(self) -> None:
        began = utcnow()
        failed = False
        for shard in sorted(self.revocations.dirty):
            self.revocations.dirty.discard(shard)
            try:
                await self._save_shard(shard)
            except Exception as error:
                self.revocations.dirty.add(shard)
                failed = True
                log.warning("revocation list shard %d not saved (%s); will retry", shard, status_of(error) or error)
        if failed:
            self.unsaved_since = self.unsaved_since or utcnow()
        elif not self.revocations.dirty:
            self.unsaved_since = None
            self.saved_through = began

    async def _save_shard(self, shard: int) -> None:
        name = self.names.revocation_shard(shard)
        data = self.revocations.shard_data(shard)
        if too_large(data):
            raise ValueError(f"shard {shard} is over {SHARD_LIMIT_BYTES} bytes: raise revocations.shards")
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace, "labels": REVOCATION_LABELS},
            "data": data,
        }
        version = self._versions.get(shard)
        try:
            if version is None:
                written = await self.kube.create_configmap(self.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = version
                written = await self.kube.replace_configmap(self.namespace, name, body)
        except Conflict:
            # Someone else wrote it (another replica, or the chart created it empty): merge
            # what they wrote and save the union next round.
            current = await self.kube.read_configmap(self.namespace, name)
            self.revocations.merge_shard_data(current.get("data"))
            self._versions[shard] = current["metadata"]["resourceVersion"]
            self.revocations.dirty.add(shard)
            return
        self._versions[shard] = written["metadata"]["resourceVersion"]

    async def run(
        self,
        leading: Callable[[], bool],
        interval: float = 1.0,
        hold: Callable[[dt.datetime], object] = lambda now: None,
    ) -> None:
        """`hold(now)`: the leader's chance to lengthen entries before they are saved."""
        while True:
            await asyncio.sleep(interval)
            now = utcnow()
            self.revocations.prune(now)
            try:
                if leading():
                    hold(now)
                if leading() or self.revocations.dirty:
                    await self.save()
                # The leader too: a follower saves what its token service revoked, and the
                # leader would otherwise never read it back (its own saves rarely conflict).
                await self.reload()
                metrics.revocation_list_passes.inc()
            except Exception as error:
                log.warning("revocation list not synchronised (%s)", status_of(error) or error)
