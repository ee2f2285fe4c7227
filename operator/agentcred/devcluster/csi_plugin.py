"""agentcred's CSI node plugin on the local node: its CSIDriver, its ServiceAccount, its link to the operator.

The real node runs the plugin as a process beside the kubelet (`agentcred csi-node`), as the
chart runs it as a DaemonSet. What the kubelet would project into the plugin's pod is written
here instead, into the node's `csi-operator` folder: the operator's URL, its CA (from the
`<instance>-ca-bundle` ConfigMap) and a token of the plugin's ServiceAccount for audience
`agentcred`, bound to the Node object (so the operator knows which node's pods the plugin may
be answered for), re-requested before it expires.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api import labels

# The CSIDriver agentcred needs (the chart's templates/csi-driver.yaml is the same object).
CSI_DRIVER_SPEC: dict[str, Any] = {
    "attachRequired": False,  # nothing to attach: a tmpfs per volume
    "podInfoOnMount": True,  # the kubelet names the pod: namespace, name, UID, ServiceAccount
    "volumeLifecycleModes": ["Ephemeral"],  # inline volumes only, one pod each
    # The kubelet requests a token of the pod's ServiceAccount for the operator's audience and
    # passes it at publish: the operator reviews it (bound to the pod's UID).
    "tokenRequests": [{"audience": labels.SERVICE_ACCOUNT_AUDIENCE}],
    # The plugin renews and revokes values itself, told by the operator: no periodic republish.
    "requiresRepublish": False,
    # The plugin sets the files' group to the pod's fsGroup (VOLUME_MOUNT_GROUP), at every write.
    "fsGroupPolicy": "File",
}
TOKEN_SECONDS = 24 * 3600


def csi_driver_object() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": labels.CSI_DRIVER, "labels": {"app.kubernetes.io/name": "agentcred"}},
        "spec": CSI_DRIVER_SPEC,
    }


def install_csi_driver(api_client: Any, namespace: str = "agentcred") -> None:
    """The CSIDriver object and the plugin's ServiceAccount (in the operator's namespace)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    storage, core = client.StorageV1Api(api_client), client.CoreV1Api(api_client)
    account = {"metadata": {"name": labels.CSI_NODE_SERVICE_ACCOUNT}, "automountServiceAccountToken": False}
    for create, args in (
        (storage.create_csi_driver, (csi_driver_object(),)),
        (core.create_namespace, ({"metadata": {"name": namespace}},)),
        (core.create_namespaced_service_account, (namespace, account)),
    ):
        try:
            create(*args)
        except ApiException as error:
            if error.status != 409:
                raise


def link_operator(
    api_client: Any, node_name: str, folder: Path, url: str, namespace: str = "agentcred", instance: str = "agentcred"
) -> None:
    """Write what the plugin reads to reach the operator at `url`: the URL, the operator's CA
    (once it has published it) and a fresh Node-bound token of the plugin's ServiceAccount."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    node = core.read_node(node_name)
    request = {
        "spec": {
            "audiences": [labels.SERVICE_ACCOUNT_AUDIENCE],
            "expirationSeconds": TOKEN_SECONDS,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node.metadata.uid},
        }
    }
    answer = core.create_namespaced_service_account_token(labels.CSI_NODE_SERVICE_ACCOUNT, namespace, request)
    bundle = core.read_namespaced_config_map(f"{instance}-ca-bundle", namespace)
    _write(folder / "ca.crt", bundle.data["ca.crt"])
    _write(folder / "url", url)
    _write(folder / "token", answer.status.token)


def _write(path: Path, text: str) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(text)
    os.chmod(partial, 0o600)
    partial.replace(path)
