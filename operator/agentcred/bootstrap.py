"""What the operator loads, or creates if it is first, from its own namespace at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from .kube import Kube, status_of
from .revocations import REVOCATIONS_CONFIGMAP, RevocationList
from .signing import KEYRING_SECRET, KeyRing

log = logging.getLogger(__name__)


async def load_keyring(kube: Kube, namespace: str) -> KeyRing:
    try:
        return KeyRing.from_secret_data((await kube.read_secret(namespace, KEYRING_SECRET))["data"])
    except Exception as error:
        if status_of(error) != 404:
            raise
    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": KEYRING_SECRET, "namespace": namespace, "labels": {"app.kubernetes.io/name": "agentcred"}},
        "data": ring.to_secret_data(),
    }
    try:
        await kube.create_secret(namespace, body)
        log.info("created the signing key ring (kids %s)", ", ".join(k.kid for k in ring.keys))
        return ring
    except Exception as error:
        if status_of(error) != 409:
            raise
    return KeyRing.from_secret_data((await kube.read_secret(namespace, KEYRING_SECRET))["data"])


async def load_revocations(kube: Kube, namespace: str) -> RevocationList:
    revocations = RevocationList()
    try:
        revocations.load_configmap_data((await kube.read_configmap(namespace, REVOCATIONS_CONFIGMAP)).get("data"))
    except Exception as error:
        if status_of(error) != 404:
            raise
    return revocations


async def persist_revocations_forever(kube: Kube, namespace: str, revocations: RevocationList,
                                      interval: float = 2.0) -> None:
    while True:
        await asyncio.sleep(interval)
        revocations.prune(dt.datetime.now(dt.timezone.utc))
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
