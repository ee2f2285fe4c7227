"""The admission webhook's serving certificate and its MutatingWebhookConfiguration.

One certificate is shared by every replica through a Secret in the operator's namespace
(created by whichever replica starts first), and the configuration is narrow: only pods
carrying the opt-in label reach the webhook, and only they fail closed.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import labels, pki
from .kube import Kube, status_of

DEFAULT_CONFIGURATION_NAME = "agentcred.dev"
HANDLER_ID = "agentcred-inject"
TLS_SECRET = "agentcred-webhook-tls"
CERT_VALIDITY = dt.timedelta(days=365)
RENEW_WITHIN = dt.timedelta(days=30)
TIMEOUT_SECONDS = 5


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


def new_serving_certificate(service: str, namespace: str) -> ServingCertificate:
    ca = pki.new_ca(f"agentcred-webhook-ca.{namespace}", validity=CERT_VALIDITY)
    leaf = pki.issue(
        ca, f"{service}.{namespace}.svc", dns_names=serving_names(service, namespace),
        ip_addresses=("127.0.0.1",), server=True, validity=CERT_VALIDITY,
    )
    return ServingCertificate(ca.cert_pem, leaf.cert_pem, leaf.key_pem)


def _secret_body(namespace: str, cert: ServingCertificate) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": TLS_SECRET, "namespace": namespace, "labels": {"app.kubernetes.io/name": "agentcred"}},
        "data": {"ca.crt": b64(cert.ca_pem), "tls.crt": b64(cert.cert_pem), "tls.key": b64(cert.key_pem)},
    }


def _from_secret(body: dict[str, Any]) -> ServingCertificate:
    data = body.get("data") or {}
    return ServingCertificate(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))


async def shared_serving_certificate(kube: Kube, namespace: str, service: str) -> ServingCertificate:
    """The replicas' common certificate: read it, or create it if this replica is first."""
    try:
        existing = await kube.read_secret(namespace, TLS_SECRET)
    except Exception as error:
        if status_of(error) != 404:
            raise
        existing = None
    if existing is not None:
        if all(k in (existing.get("data") or {}) for k in ("ca.crt", "tls.crt", "tls.key")):
            current = _from_secret(existing)
            if not pki.expires_within(current.cert_pem, RENEW_WITHIN):
                return current
        # Empty (pre-created by the Helm chart) or expiring: fill it; a stale version loses.
        fresh = new_serving_certificate(service, namespace)
        body = _secret_body(namespace, fresh)
        body["metadata"] = {**existing["metadata"], "labels": {**(existing["metadata"].get("labels") or {}),
                                                                 **body["metadata"]["labels"]}}
        body["type"] = existing.get("type", body["type"])
        try:
            await kube.replace_secret(namespace, TLS_SECRET, body)
            return fresh
        except Exception as error:
            if status_of(error) != 409:
                raise
            return _from_secret(await kube.read_secret(namespace, TLS_SECRET))  # another replica won
    fresh = new_serving_certificate(service, namespace)
    try:
        await kube.create_secret(namespace, _secret_body(namespace, fresh))
        return fresh
    except Exception as error:
        if status_of(error) != 409:
            raise
        return _from_secret(await kube.read_secret(namespace, TLS_SECRET))  # another replica won


def private_directory() -> Path:
    """Where the key files go: a private temp dir (an emptyDir when read-only rootfs)."""
    return Path(tempfile.mkdtemp(prefix="agentcred-tls-", dir=os.environ.get("AGENTCRED_TMPDIR")))


def configuration(
    ca_pem: bytes,
    *,
    url: str | None = None,
    service: tuple[str, str, int] | None = None,
    operator_namespace: str,
    name: str = DEFAULT_CONFIGURATION_NAME,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: opted-in pods only, fail closed, short timeout."""
    client_config: dict[str, Any] = {"caBundle": base64.b64encode(ca_pem).decode()}
    if url is not None:
        client_config["url"] = f"{url.rstrip('/')}/{HANDLER_ID}"
    elif service is not None:
        name, namespace, port = service
        client_config["service"] = {"name": name, "namespace": namespace, "port": port, "path": f"/{HANDLER_ID}"}
    else:
        raise ValueError("the webhook needs either a URL or a Service to be reached at")
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "agentcred"}},
        "webhooks": [
            {
                "name": "pods.agentcred.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": TIMEOUT_SECONDS,
                "objectSelector": {"matchLabels": {labels.INJECT_LABEL: "true"}},
                # The operator's own pods must never wait on the operator.
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                         "values": ["kube-system", operator_namespace]}
                    ]
                },
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                     "operations": ["CREATE"], "scope": "Namespaced"}
                ],
                "clientConfig": client_config,
            }
        ],
    }
