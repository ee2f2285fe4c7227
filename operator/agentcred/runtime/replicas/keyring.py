"""The shared key ring: loaded (or created by the first replica) at start, followed by every
replica, rotated by the leader on request (`agentcred rotate-key`) and on schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable

from ...api.labels import ROLE_LABEL, ROTATE_ANNOTATION, ROTATED_ANNOTATION
from ...api.times import utcnow
from ...platform.keys import (
    ALGORITHMS,
    KEYRING_KEY,
    KeyRing,
    fingerprint_rotation_due,
    prune,
    rotate,
    rotate_mac,
    rotation_due,
)
from ...platform.kube import Kube, status_of

log = logging.getLogger(__name__)


# The role label says what the Secret is (the inventory skips it); other labels are whoever
# created it's (the chart's, or ours on a Secret we create).
ROLE = {ROLE_LABEL: "keyring"}
CREATED_LABELS = {**ROLE, "app.kubernetes.io/name": "agentcred"}


async def load_keyring(kube: Kube, namespace: str, name: str) -> KeyRing:
    """The shared key ring (signing and MAC keys); the first replica to start (or to find it
    pre-created empty by the Helm chart) generates it."""
    secret = await kube.find_secret(namespace, name)
    now = utcnow()
    if secret is not None and KEYRING_KEY in (secret.get("data") or {}):
        found = KeyRing.from_secret_data(secret["data"])
        ring = found.completed(now)  # a ring written by an older version lacks some keys
        if ring is found:
            if (secret["metadata"].get("labels") or {}).get(ROLE_LABEL) != ROLE[ROLE_LABEL]:
                await kube.patch_secret(namespace, name, {"metadata": {"labels": ROLE}})
            return ring
    else:
        ring = KeyRing.generate(now)
    body = secret or {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
    }
    body["metadata"]["labels"] = {**(body["metadata"].get("labels") or CREATED_LABELS), **ROLE}
    body["data"] = ring.to_secret_data()
    written = await kube.write_shared_secret(namespace, body, replace=secret is not None)
    ring = KeyRing.from_secret_data(written["data"])
    log.info("signing key ring ready (kids %s)", ", ".join(k.kid for k in ring.keys))
    return ring


def _shape(ring: KeyRing) -> tuple[tuple[str, str | None], ...]:
    keys = [(key.kid, key.retired_at) for key in ring.keys] + [(key.id, key.retired_at) for key in ring.macs]
    return tuple((name, retired.isoformat() if retired else None) for name, retired in keys)


def plan_keyring(
    ring: KeyRing, annotations: dict[str, str], now: dt.datetime, interval: dt.timedelta | None
) -> tuple[KeyRing, str | None]:
    """The key ring after requested and scheduled rotations and pruning, and the request handled.
    The fingerprint key rotates with the signing keys; its predecessor stays kept (retired)
    while values it fingerprinted can live, so they can still be traced."""
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
        if wanted in ("all", "fingerprint"):
            ring = rotate_mac(ring, "fingerprint", now)
        handled = str(request["id"])
    for alg in ALGORITHMS:
        if rotation_due(ring, alg, now, interval):
            ring = rotate(ring, alg, now)
    if fingerprint_rotation_due(ring, now, interval):
        ring = rotate_mac(ring, "fingerprint", now)
    return prune(ring, now), handled


async def maintain_keyring_forever(
    kube: Kube,
    namespace: str,
    name: str,
    loaded: KeyRing,
    on_change: Callable[[KeyRing], None],
    interval: dt.timedelta | None,
    leading: Callable[[], bool],
    poll: float = 5.0,
) -> None:
    """Every replica follows the shared key ring (so all sign with, and publish, the same
    keys); the leader also carries out `rotate-key` requests and scheduled rotations.
    The Secret is parsed again only when its keys changed (loading an RSA key costs a tenth of
    a second of CPU: every 5 s, that was a steady share of an idle operator's; and once more
    right after start, the ring `loaded` just parsed)."""
    parsed = (loaded.to_secret_data(), loaded)  # (the Secret's data, the ring it holds)
    while True:
        await asyncio.sleep(poll)
        try:
            secret = await kube.read_secret(namespace, name)
            data = dict(secret.get("data") or {})
            if parsed[0] != data:
                parsed = (data, KeyRing.from_secret_data(data))
            current = parsed[1]
            if not leading():
                on_change(current)
                continue
            annotations = dict(secret["metadata"].get("annotations") or {})
            updated, handled = plan_keyring(current, annotations, utcnow(), interval)
            if _shape(updated) != _shape(current) or handled:
                if handled:
                    annotations[ROTATED_ANNOTATION] = handled
                secret["metadata"]["annotations"] = annotations
                secret["data"] = updated.to_secret_data()
                await kube.replace_secret(namespace, name, secret)  # fails on a stale version
                log.info("signing keys now %s", ", ".join(f"{k.alg}:{k.kid}" for k in updated.keys))
            on_change(updated)
        except Exception as error:
            log.warning(
                "could not refresh the signing key ring (%s); keeping the current one", status_of(error) or error
            )


class SharedKeyRing:
    """The key ring this replica signs and verifies with (call it for the current one), and
    its loop: following the shared Secret, rotating it when leading."""

    name = "key ring"
    needs_leader = False

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        secret: str,
        loaded: KeyRing,
        rotation: dt.timedelta | None,
        leading: Callable[[], bool],
    ) -> None:
        self.kube, self.namespace, self.secret = kube, namespace, secret
        self.current, self.rotation, self.leading = loaded, rotation, leading

    def __call__(self) -> KeyRing:
        return self.current

    async def run(self) -> None:
        await maintain_keyring_forever(
            self.kube, self.namespace, self.secret, self.current, self._set, self.rotation, self.leading
        )

    def _set(self, ring: KeyRing) -> None:
        self.current = ring
