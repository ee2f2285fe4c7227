"""`agentcred revoke --evict`: evict the pods whose values were revoked, with the caller's own
rights (`create pods/eviction`), for when the agent itself is the threat.

The operator never deletes or evicts pods (its ServiceAccount may not); the person running the
command decides, and the API server checks their rights and the PodDisruptionBudgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..api import labels


@dataclass(frozen=True)
class Eviction:
    pod: str
    evicted: bool
    detail: str  # why not, when not


def holders(api_client: client.ApiClient, namespace: str, credential: str, pod: str | None = None) -> list[str]:
    """The live opted-in pods of the namespace that ask for `credential` (or just `pod`)."""
    core = client.CoreV1Api(api_client)
    selector = f"{labels.INJECT_LABEL}=true"
    found = []
    for item in core.list_namespaced_pod(namespace, label_selector=selector).items:
        asked = (item.metadata.annotations or {}).get(labels.CREDENTIALS_ANNOTATION) or ""
        if credential not in {name.strip() for name in asked.split(",")}:
            continue
        if (pod and item.metadata.name != pod) or item.metadata.deletion_timestamp:
            continue
        if item.status and item.status.phase in ("Succeeded", "Failed"):
            continue
        found.append(item.metadata.name)
    return sorted(found)


def evict(api_client: client.ApiClient, namespace: str, pods: list[str]) -> list[Eviction]:
    core = client.CoreV1Api(api_client)
    outcomes = []
    for name in pods:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        try:
            core.create_namespaced_pod_eviction(name, namespace, body)
            outcomes.append(Eviction(name, True, ""))
        except ApiException as error:
            outcomes.append(Eviction(name, False, _why(error, namespace)))
    return outcomes


def _why(error: ApiException, namespace: str) -> str:
    if error.status == 403:
        return f"you may not evict pods in namespace {namespace} (needs create on pods/eviction)"
    if error.status == 429:
        return "a PodDisruptionBudget does not allow it now; delete the pod if it must go"
    if error.status == 404:
        return "it is already gone"
    return f"the API server answered {error.status} {error.reason}"
