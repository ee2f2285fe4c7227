"""Put what agentcred needs into a fresh cluster: the CRD (established) and its namespace."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..crd import build_crd
from .polling import wait_for

OPERATOR_NAMESPACE = "agentcred"


def install_agentcred(api_client: client.ApiClient, namespace: str = OPERATOR_NAMESPACE, timeout: float = 60) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    body = build_crd()
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        body["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)
    wait_for(lambda: any(c.type == "Established" and c.status == "True"
                         for c in extensions.read_custom_resource_definition(name).status.conditions or []),
             timeout=timeout, what=f"CRD {name} established")
    try:
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    except ApiException as error:
        if error.status != 409:
            raise
