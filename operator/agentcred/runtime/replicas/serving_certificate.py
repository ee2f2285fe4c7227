"""The serving certificate of the admission webhook and the HTTPS endpoints.

One certificate is shared by every replica through a Secret in the operator's namespace
(created by whichever replica starts first); the leader renews it 30 days ahead, keeping
the old CA trusted, and a replica still serving an old one asks to be restarted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...platform import pki
from ...platform.kube import Kube, status_of

log = logging.getLogger(__name__)

CERT_VALIDITY = dt.timedelta(days=365)
RENEW_WITHIN = dt.timedelta(days=30)
RESTART_WITHIN = dt.timedelta(days=7)


@dataclass(frozen=True)
class ServingCertificate:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path) -> tuple[Path, Path]:
        cert, key = directory / "tls.crt", directory / "tls.key"
        cert.write_bytes(self.cert_pem + self.ca_pem)
        pki.write_private(key, self.key_pem)
        return cert, key


def serving_names(service: str, namespace: str) -> tuple[str, ...]:
    return (
        "localhost",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def new_serving_certificate(
    service: str, namespace: str, previous_ca: bytes = b"", validity: dt.timedelta = CERT_VALIDITY
) -> ServingCertificate:
    """A new CA and serving certificate. The bundle keeps the previous CA, so replicas
    still serving the old certificate stay trusted until they restart."""
    ca = pki.new_ca(f"agentcred-webhook-ca.{namespace}", validity=validity)
    leaf = pki.issue(
        ca,
        f"{service}.{namespace}.svc",
        dns_names=serving_names(service, namespace),
        ip_addresses=("127.0.0.1",),
        server=True,
        validity=validity,
    )
    return ServingCertificate(ca.cert_pem + pki.first_certificate(previous_ca), leaf.cert_pem, leaf.key_pem)


def _secret_body(
    namespace: str, name: str, cert: ServingCertificate, existing: dict[str, Any] | None
) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    # Labels only on a Secret we create; one the chart made keeps the chart's (Helm sees no drift),
    # and its version, so a stale write fails.
    metadata: dict[str, Any] = (
        dict(existing["metadata"])
        if existing is not None
        else {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "agentcred"}}
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": (existing or {}).get("type", "kubernetes.io/tls"),
        "metadata": metadata,
        "data": {"ca.crt": b64(cert.ca_pem), "tls.crt": b64(cert.cert_pem), "tls.key": b64(cert.key_pem)},
    }


def _from_secret(body: dict[str, Any] | None) -> ServingCertificate | None:
    data = (body or {}).get("data") or {}
    if not all(k in data for k in ("ca.crt", "tls.crt", "tls.key")):
        return None  # absent, or pre-created empty by the Helm chart
    return ServingCertificate(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))


async def _renew(
    kube: Kube, namespace: str, service: str, name: str, existing: dict[str, Any] | None
) -> ServingCertificate:
    """Write a new certificate into the shared Secret; if another replica was faster, use its."""
    current = _from_secret(existing)
    fresh = new_serving_certificate(service, namespace, previous_ca=current.ca_pem if current else b"")
    written = await kube.write_shared_secret(
        namespace, _secret_body(namespace, name, fresh, existing), replace=existing is not None
    )
    won = _from_secret(written)
    assert won is not None
    return won


async def shared_serving_certificate(
    kube: Kube, namespace: str, service: str, name: str, managed: bool = True, poll: float = 5.0
) -> ServingCertificate:
    """The replicas' common certificate: read it, or create or renew it if this replica is
    first. When it is not ours to manage (cert-manager issues it), wait until it is there."""
    while True:
        existing = await kube.find_secret(namespace, name)
        current = _from_secret(existing)
        if not managed:
            if current is not None:
                return current
            log.info("waiting for Secret %s/%s (ca.crt, tls.crt, tls.key) from its issuer", namespace, name)
            await asyncio.sleep(poll)
            continue
        if current is not None and not pki.expires_within(current.cert_pem, RENEW_WITHIN):
            return current
        return await _renew(kube, namespace, service, name, existing)


def certificate_actions(
    shared: ServingCertificate, serving: ServingCertificate, leading: bool, now: dt.datetime
) -> tuple[bool, bool]:
    """(renew the shared certificate, restart to load it): the leader renews 30 days ahead;
    a replica still serving an older certificate asks to be restarted 7 days before it expires."""
    renew = leading and pki.expires_within(shared.cert_pem, RENEW_WITHIN, now)
    restart = shared.cert_pem != serving.cert_pem and pki.expires_within(serving.cert_pem, RESTART_WITHIN, now)
    return renew, restart


class CertificateMonitor:
    """Keeps the serving certificate from expiring under a long-running operator: the leader
    renews a managed one; every replica asks to be restarted when a newer one is waiting."""

    name = "serving certificate"
    needs_leader = False

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        service: str,
        secret: str,
        serving: ServingCertificate,
        leading: Callable[[], bool],
        publish: Callable[[bytes], Awaitable[None]],
        interval: float = 3600.0,
        managed: bool = True,
    ) -> None:
        self.kube, self.namespace, self.service, self.secret = kube, namespace, service, secret
        self.managed = managed
        self.serving, self.leading, self.publish, self.interval = serving, leading, publish, interval
        self.problem: str | None = None  # set: /healthz fails, so the kubelet restarts us

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(dt.datetime.now(dt.timezone.utc))
            except Exception as error:
                log.warning("could not check the serving certificate: %s", status_of(error) or error)

    async def check(self, now: dt.datetime) -> None:
        existing = await self.kube.find_secret(self.namespace, self.secret)
        shared = _from_secret(existing)
        if shared is None:
            return
        renew, _ = certificate_actions(shared, self.serving, self.leading() and self.managed, now)
        if renew:
            shared = await _renew(self.kube, self.namespace, self.service, self.secret, existing)
            await self.publish(shared.ca_pem)
            log.info("renewed the webhook serving certificate; replicas pick it up as they restart")
        _, restart = certificate_actions(shared, self.serving, self.leading(), now)
        if restart:
            self.problem = (
                "the serving certificate expires within 7 days and a renewed one is ready: restart to load it"
            )


def private_directory() -> Path:
    """Where the key files go: a private temp dir (an emptyDir when read-only rootfs)."""
    return Path(tempfile.mkdtemp(prefix="agentcred-tls-", dir=os.environ.get("AGENTCRED_TMPDIR")))
