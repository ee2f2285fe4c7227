"""What the operator loads, or creates if it is first, from its own namespace at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any, Callable

from .kube import Conflict, Kube, status_of
from .labels import ROLE_LABEL
from .labels import StateNames
from .revocations import SHARD_LIMIT_BYTES, RevocationList, too_large
from .signing import ALGORITHMS, KEYRING_KEY, KeyRing, prune, rotate, rotation_due

log = logging.getLogger(__name__)


KEYRING_LABELS = {ROLE_LABEL: "keyring", "app.kubernetes.io/name": "agentcred"}


async def load_keyring(kube: Kube, namespace: str, name: str) -> KeyRing:
    """The shared key ring (signing and MAC keys); the first replica to start (or to find it
    pre-created empty by the Helm chart) generates it."""
    secret = await kube.find_secret(namespace, name)
    now = dt.datetime.now(dt.timezone.utc)
    if secret is not None and KEYRING_KEY in (secret.get("data") or {}):
        found = KeyRing.from_secret_data(secret["data"])
        ring = found.with_missing_macs(now)  # a ring written by an older version lacks them
        if ring is found:
            if any((secret["metadata"].get("labels") or {}).get(k) != v for k, v in KEYRING_LABELS.items()):
                await kube.patch_secret(namespace, name, {"metadata": {"labels": KEYRING_LABELS}})
            return ring
    else:
        ring = KeyRing.generate(now)
    body = secret or {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": name, "namespace": namespace}}
    body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}), **KEYRING_LABELS}
    body["data"] = ring.to_secret_data()
    written = await kube.write_shared_secret(namespace, body, replace=secret is not None)
    ring = KeyRing.from_secret_data(written["data"])
    log.info("signing key ring ready (kids %s)", ", ".join(k.kid for k in ring.keys))
    return ring


REVOCATION_LABELS = {ROLE_LABEL: "revocations", "app.kubernetes.io/name": "agentcred"}
REVOCATION_SELECTOR = f"{ROLE_LABEL}=revocations"
UNSAVED_GRACE = dt.timedelta(seconds=10)  # unsaved longer than this: not ready


class RevocationStore:
    """Keeps the revocation list in ConfigMaps: the leader saves changed shards (merging on
    a lost race), followers merge what is saved, so every replica serves the same list."""

    def __init__(self, kube: Kube, namespace: str, revocations: RevocationList, names: StateNames) -> None:
        self.kube, self.namespace, self.revocations, self.names = kube, namespace, revocations, names
        self._versions: dict[int, str] = {}
        self.unsaved_since: dt.datetime | None = None

    def problem(self, now: dt.datetime | None = None) -> str | None:
        """Why this replica should not be ready: revocations it cannot save."""
        now = now or dt.datetime.now(dt.timezone.utc)
        if self.unsaved_since is not None and now - self.unsaved_since > UNSAVED_GRACE:
            return f"revocations not saved since {self.unsaved_since.isoformat(timespec='seconds')}"
        return None

    async def reload(self) -> None:
        for item in await self.kube.list_configmaps(self.namespace, REVOCATION_SELECTOR):
            shard = self.names.shard_number(item["metadata"]["name"])
            if shard is not None and shard < self.revocations.shards:
                self.revocations.merge_shard_data(item.get("data"))
                self._versions[shard] = item["metadata"]["resourceVersion"]

    async def save(self) -> None:
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
            self.unsaved_since = self.unsaved_since or dt.datetime.now(dt.timezone.utc)
        elif not self.revocations.dirty:
            self.unsaved_since = None

    async def _save_shard(self, shard: int) -> None:
        name = self.names.revocation_shard(shard)
        data = self.revocations.shard_data(shard)
        if too_large(data):
            raise ValueError(f"shard {shard} is over {SHARD_LIMIT_BYTES} bytes: raise revocations.shards")
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "namespace": self.namespace, "labels": REVOCATION_LABELS},
                                "data": data}
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

    async def run(self, leading: Callable[[], bool], interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.revocations.prune(dt.datetime.now(dt.timezone.utc))
            try:
                if leading():
                    await self.save()
                else:
                    await self.reload()
            except Exception as error:
                log.warning("revocation list not synchronised (%s)", status_of(error) or error)


ROTATE_ANNOTATION = "agentcred.dev/rotate"  # a request from `agentcred rotate-key`
ROTATED_ANNOTATION = "agentcred.dev/rotated"  # the id of the last request carried out


def _shape(ring: KeyRing) -> tuple[tuple[str, str | None], ...]:
    return tuple((key.kid, key.retired_at.isoformat() if key.retired_at else None) for key in ring.keys)


def plan_keyring(
    ring: KeyRing, annotations: dict[str, str], now: dt.datetime, interval: dt.timedelta | None
) -> tuple[KeyRing, str | None]:
    """The key ring after requested and scheduled rotations and pruning, and the request handled."""
    handled = None
    try:
        request = json.loads(annotations.get(ROTATE_ANNOTATION) or "{}")
    except ValueError:
        request = {}
    if isinstance(request, dict) and request.get("id") and request["id"] != annotations.get(ROTATED_ANNOTATION):
        wanted = request.get("algorithm") or "all"
        for alg in ALGORITHMS:
            if wanted in ("all", alg):
                ring = rotate(ring, alg, now)
        handled = str(request["id"])
    for alg in ALGORITHMS:
        if rotation_due(ring, alg, now, interval):
            ring = rotate(ring, alg, now)
    return prune(ring, now), handled


async def maintain_keyring_forever(
    kube: Kube,
    namespace: str,
    name: str,
    on_change: Callable[[KeyRing], None],
    interval: dt.timedelta | None,
    leading: Callable[[], bool],
    poll: float = 5.0,
) -> None:
    """Every replica follows the shared key ring (so all sign with, and publish, the same
    keys); the leader also carries out `rotate-key` requests and scheduled rotations."""
    while True:
        await asyncio.sleep(poll)
        try:
            secret = await kube.read_secret(namespace, name)
            current = KeyRing.from_secret_data(secret["data"])
            if not leading():
                on_change(current)
                continue
            annotations = dict(secret["metadata"].get("annotations") or {})
            updated, handled = plan_keyring(current, annotations, dt.datetime.now(dt.timezone.utc), interval)
            if _shape(updated) != _shape(current) or handled:
                if handled:
                    annotations[ROTATED_ANNOTATION] = handled
                secret["metadata"]["annotations"] = annotations
                secret["data"] = updated.to_secret_data()
                await kube.replace_secret(namespace, name, secret)  # fails on a stale version
                log.info("signing keys now %s", ", ".join(f"{k.alg}:{k.kid}" for k in updated.keys))
            on_change(updated)
        except Exception as error:
            log.warning("could not refresh the signing key ring (%s); keeping the current one",
                        status_of(error) or error)
