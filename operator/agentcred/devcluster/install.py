"""Put what agentcred needs into a fresh cluster: the CRDs (established), its namespace, the
opt-in check (so that an opted-in pod made before the operator runs is refused, saying so,
rather than run without credentials), and for local development an AgentCredentialPolicy
that allows everything everywhere."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..api import model
from ..api.crd import build_crd, build_policy_crd
from ..api.webhook_configuration import opt_in_check
from .polling import wait_for

OPERATOR_NAMESPACE = "agentcred"


def permissive_policy(name: str, namespace_selector: dict[str, Any]) -> dict[str, Any]:
    """Every source, audience and minting service, the longest lifetimes: for a cluster on
    loopback only. A real cluster gets the chart's policy, and the admins' own."""
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.POLICY_KIND,
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": namespace_selector,
            "sources": ["jwt", "webhook", "secretRef"],
            "audiences": ["*"],
            "mintingServices": ["https://*:*/*"],
            "maxTTL": "24h",
            "maxLifetime": "720h",
        },
    }


LOCAL_POLICY = permissive_policy("local-development", {})


def apply_crd(api_client: client.ApiClient, body: dict[str, Any], timeout: float = 60) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        body["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in extensions.read_custom_resource_definition(name).status.conditions or []
        ),
        timeout=timeout,
        what=f"CRD {name} established",
    )


def apply_policy(api_client: client.ApiClient, body: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(api_client)
    name = body["metadata"]["name"]
    try:
        custom.create_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL, body)
    except ApiException as error:
        if error.status != 409:
            raise
        current = custom.get_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL, name)
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        custom.replace_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL, name, body)


def apply_admission_object(api_client: client.ApiClient, resources: str, body: dict[str, Any]) -> None:
    """Create or replace a ValidatingAdmissionPolicy or its binding (`resources`: the plural)."""
    admission = client.AdmissionregistrationV1Api(api_client)
    create, read, replace = {
        "validatingadmissionpolicies": (
            admission.create_validating_admission_policy,
            admission.read_validating_admission_policy,
            admission.replace_validating_admission_policy,
        ),
        "validatingadmissionpolicybindings": (
            admission.create_validating_admission_policy_binding,
            admission.read_validating_admission_policy_binding,
            admission.replace_validating_admission_policy_binding,
        ),
    }[resources]
    name = body["metadata"]["name"]
    try:
        create(body)
    except ApiException as error:
        if error.status != 409:
            raise
        current = read(name)
        replace(name, {**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}})


def install_agentcred(
    api_client: client.ApiClient,
    namespace: str = OPERATOR_NAMESPACE,
    timeout: float = 60,
    policy: dict[str, Any] | None = LOCAL_POLICY,
) -> None:
    for body in (build_crd(), build_policy_crd()):
        apply_crd(api_client, body, timeout)
    if policy is not None:
        apply_policy(api_client, policy)
    # The same object `agentcred run` applies when it starts (it then replaces it as it is).
    for resources, body in opt_in_check(operator_namespace=namespace):
        apply_admission_object(api_client, resources, body)
    try:
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    except ApiException as error:
        if error.status != 409:
            raise
