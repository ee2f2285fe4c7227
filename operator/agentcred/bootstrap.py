"""What the operator loads, or creates if it is first, from its own namespace at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Callable

from .kube import Kube, status_of
from .labels import ROLE_LABEL
from .revocations import REVOCATIONS_CONFIGMAP, RevocationList
from .signing import ALGORITHMS, KEYRING_KEY, KEYRING_SECRET, KeyRing, prune, rotate, rotation_due

log = logging.getLogger(__name__)


KEYRING_LABELS = {ROLE_LABEL: "keyring", "app.kubernetes.io/name": "agentcred"}


async def load_keyring(kube: Kube, namespace: str) -> KeyRing:
    """The shared key ring; the first replica to start (or to find it pre-created empty by
    the Helm chart) generates it."""
    secret = await kube.find_secret(namespace, KEYRING_SECRET)
    if secret is not None and KEYRING_KEY in (secret.get("data") or {}):
        if any((secret["metadata"].get("labels") or {}).get(k) != v for k, v in KEYRING_LABELS.items()):
            await kube.patch_secret(namespace, KEYRING_SECRET, {"metadata": {"labels": KEYRING_LABELS}})
        return KeyRing.from_secret_data(secret["data"])
    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    body = secret or {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": KEYRING_SECRET, "namespace": namespace}}
    body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}), **KEYRING_LABELS}
    body["data"] = ring.to_secret_data()
    written = await kube.write_shared_secret(namespace, body, replace=secret is not None)
    ring = KeyRing.from_secret_data(written["data"])
    log.info("signing key ring ready (kids %s)", ", ".join(k.kid for k in ring.keys))
    return ring


async def load_revocations(kube: Kube, namespace: str) -> RevocationList:
    revocations = RevocationList()
    try:
        revocations.load_configmap_data((await kube.read_configmap(namespace, REVOCATIONS_CONFIGMAP)).get("data"))
    except Exception as error:
        if status_of(error) != 404:
            raise
    return revocations


async def sync_revocations_forever(kube: Kube, namespace: str, revocations: RevocationList,
                                   leading: Callable[[], bool], interval: float = 2.0) -> None:
    """The leader persists the list; followers reload it, so every replica serves it."""
    while True:
        await asyncio.sleep(interval)
        revocations.prune(dt.datetime.now(dt.timezone.utc))
        if not leading():
            try:
                revocations.load_configmap_data((await kube.read_configmap(namespace, REVOCATIONS_CONFIGMAP)).get("data"))
            except Exception as error:
                if status_of(error) != 404:
                    log.warning("could not reload the revocation list (%s)", status_of(error) or error)
            continue
        if not revocations.dirty:
            continue
        revocations.dirty = False
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": REVOCATIONS_CONFIGMAP, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "agentcred"}},
            "data": revocations.to_configmap_data(),
        }
        try:
            try:
                await kube.replace_configmap(namespace, REVOCATIONS_CONFIGMAP, body)
            except Exception as error:
                if status_of(error) != 404:
                    raise
                await kube.create_configmap(namespace, body)
        except Exception as error:
            revocations.dirty = True
            log.warning("revocation list not persisted (%s); will retry", status_of(error) or error)


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
            secret = await kube.read_secret(namespace, KEYRING_SECRET)
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
                await kube.replace_secret(namespace, KEYRING_SECRET, secret)  # fails on a stale version
                log.info("signing keys now %s", ", ".join(f"{k.alg}:{k.kid}" for k in updated.keys))
            on_change(updated)
        except Exception as error:
            log.warning("could not refresh the signing key ring (%s); keeping the current one",
                        status_of(error) or error)
