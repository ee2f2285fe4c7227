"""A small async face on the official Kubernetes client.

The client is synchronous; calls run on a dedicated thread pool so the Kopf event loop
never blocks, and responses are decoded as plain dicts (no model deserialisation cost).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import metrics, model

# Answers that are part of normal flow (already gone, already exists, stale version).
EXPECTED_STATUSES = {404, 409}
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def make_api_client(pool_size: int = 32) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def status_of(error: BaseException) -> int | None:
    return error.status if isinstance(error, ApiException) else None


class Kube:
    def __init__(self, api_client: client.ApiClient, workers: int = 32) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.auth = client.AuthenticationV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(
                self._pool, lambda: method(*args, _preload_content=False, **kwargs)
            )
        except Exception as error:
            status = status_of(error)
            if status not in EXPECTED_STATUSES:
                metrics.api_error(method.__name__, status)
            raise
        data = response.data
        return json.loads(data) if data else {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- Secrets ---------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self.core.read_namespaced_secret, name, namespace)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.create_namespaced_secret, namespace, body)

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call(
            self.core.patch_namespaced_secret, name, namespace, patch, _content_type=MERGE
        )

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.replace_namespaced_secret, name, namespace, body)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call(self.core.delete_namespaced_secret, name, namespace)

    # -- Pods ------------------------------------------------------------------------

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.patch_namespaced_pod, name, namespace, patch, _content_type=STRATEGIC)

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self.core.read_namespaced_config_map, name, namespace)

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.create_namespaced_config_map, namespace, body)

    async def replace_configmap(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.replace_namespaced_config_map, name, namespace, body)

    # -- Leases ------------------------------------------------------------------------

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self.coordination.read_namespaced_lease, name, namespace)

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.coordination.create_namespaced_lease, namespace, body)

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.coordination.replace_namespaced_lease, name, namespace, body)

    # -- Webhook configuration ---------------------------------------------------------

    async def apply_mutating_webhook(self, body: dict[str, Any]) -> None:
        """Create the configuration, or replace it with this content."""
        name = body["metadata"]["name"]
        api = self.admission
        try:
            current = await self._call(api.read_mutating_webhook_configuration, name)
        except ApiException as error:
            if error.status != 404:
                raise
            await self._call(api.create_mutating_webhook_configuration, body)
            return
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        await self._call(api.replace_mutating_webhook_configuration, name, body)

    async def inject_webhook_ca(self, name: str, ca_pem: bytes) -> None:
        """Set the caBundle of every webhook in a configuration someone else owns."""
        current = await self._call(self.admission.read_mutating_webhook_configuration, name)
        bundle = base64.b64encode(ca_pem).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i, hook in enumerate(current.get("webhooks") or [])
            if hook.get("clientConfig", {}).get("caBundle") != bundle
        ]
        if patch:
            await self._call(self.admission.patch_mutating_webhook_configuration, name, patch,
                             _content_type="application/json-patch+json")

    async def create_event(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self.core.create_namespaced_event, body["metadata"]["namespace"], body)

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """TokenReview: the API server authenticates a token (never logged, never kept)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}
        return (await self._call(self.auth.create_token_review, body)).get("status") or {}

    # -- AgentCredentials --------------------------------------------------------------

    async def patch_credential_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self._call(
            self.custom.patch_namespaced_custom_object_status,
            model.GROUP, model.VERSION, namespace, model.PLURAL, name, {"status": status},
            _content_type=MERGE,
        )
