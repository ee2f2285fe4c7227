"""People without admin rights, as API clients: what the attack tests act as.

Each is a ServiceAccount of one namespace, bound only to what it is named for, reaching the
API server with a TokenRequest token (never the admin's client certificate).
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config

from agentcred.api import model
from agents import service_account
from clusterkit import Cluster, token_kubeconfig

PODS_ONLY = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "patch", "update", "delete"]}
]
CREDENTIALS = [{"apiGroups": [model.GROUP], "resources": [model.PLURAL], "verbs": ["*"]}]


def _bind(cluster: Cluster, namespace: str, name: str, kind: str, role: str) -> None:
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{name}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )


def _client(cluster: Cluster, namespace: str, name: str, tmp_path: Path) -> client.ApiClient:
    kubeconfig = token_kubeconfig(cluster, namespace, name, tmp_path / f"{namespace}-{name}.kubeconfig")
    return config.new_client_from_config(config_file=str(kubeconfig))


def narrow_user(cluster: Cluster, namespace: str, name: str, rules: list[dict], tmp_path: Path) -> client.ApiClient:
    """Only `rules`, in `namespace`."""
    service_account(cluster, namespace, name)
    cluster.rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    _bind(cluster, namespace, name, "Role", name)
    return _client(cluster, namespace, name, tmp_path)


def namespace_admin(cluster: Cluster, namespace: str, tmp_path: Path, name: str = "tenant-admin") -> client.ApiClient:
    """Everything in `namespace` (the built-in `admin` role, Secrets included, plus
    AgentCredentials), nothing outside it."""
    service_account(cluster, namespace, name)
    _bind(cluster, namespace, name, "ClusterRole", "admin")
    cluster.rbac.create_namespaced_role(namespace, {"metadata": {"name": f"{name}-credentials"}, "rules": CREDENTIALS})
    _bind(cluster, namespace, name, "Role", f"{name}-credentials")
    return _client(cluster, namespace, name, tmp_path)
