"""Where the serving certificate's CA is published, whenever it changes.

Verifiers and the API server must trust the operator's CA: it goes into the `<instance>-ca-bundle`
ConfigMap (never next to the private key), into each pod's Secret as it is next written (the
reconciler reads `pem`), and -- as configured -- into the MutatingWebhookConfiguration the
operator manages (with the pod guard and the opt-in check beside it) or only into the caBundle of the one the chart
installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...api import labels
from ...api.webhook_configuration import WebhookMode, configuration, opt_in_check, pod_guard
from ...platform.kube import Kube, NotFound


@dataclass(frozen=True)
class WebhookTarget:
    mode: WebhookMode
    configuration: str  # the MutatingWebhookConfiguration's name
    service: str  # the Service in front of the webhook (used when `url` is not set)
    url: str | None = None
    namespaces: Sequence[str] = ()  # namespace-scoped mode: admit pods only there


class CaBundle:
    def __init__(self, kube: Kube, namespace: str, configmap: str, webhook: WebhookTarget) -> None:
        self.kube, self.namespace, self.configmap, self.webhook = kube, namespace, configmap, webhook
        self.pem = b""  # the CA, once published

    async def publish(self, ca_pem: bytes) -> None:
        self.pem = ca_pem
        await self._write_configmap(ca_pem)
        webhook = self.webhook
        if webhook.mode == "manage":
            service = None if webhook.url else (webhook.service, self.namespace, 443)
            await self.kube.apply_cluster_object(
                "mutatingwebhookconfigurations",
                configuration(
                    ca_pem,
                    url=webhook.url,
                    service=service,
                    operator_namespace=self.namespace,
                    name=webhook.configuration,
                    namespaces=webhook.namespaces,
                ),
            )
            guards = pod_guard(webhook.configuration, webhook.namespaces) + opt_in_check(
                webhook.configuration, self.namespace, webhook.namespaces
            )
            for resources, body in guards:
                await self.kube.apply_cluster_object(resources, body)
        elif webhook.mode == "inject-ca":
            await self.kube.inject_webhook_ca(webhook.configuration, ca_pem)

    async def _write_configmap(self, ca_pem: bytes) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.configmap,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "agentcred"},
            },
            "data": {labels.CA_KEY: ca_pem.decode()},
        }
        try:  # the chart creates it empty (the operator may only read and update it)
            current = await self.kube.read_configmap(self.namespace, self.configmap)
        except NotFound:
            await self.kube.create_configmap(self.namespace, body)
            return
        if (current.get("data") or {}).get(labels.CA_KEY) != body["data"][labels.CA_KEY]:
            current["data"] = body["data"]
            await self.kube.replace_configmap(self.namespace, self.configmap, current)
