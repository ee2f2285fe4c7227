"""Helpers for the real-node tier: a local control plane with a real node (kubelet, containerd,
runc), pods that run the probe image, and what their containers saw.

The probe (`agentcred/devcluster/probe`) prints one JSON line each time a file under the
folders it watches appears, changes or goes: its mode, size and a SHA-256 fingerprint, with
the container's clock (the host's). Values are compared by fingerprint, never shown.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agentcred.devcluster.node import RealNode, _mounts_under
from clusterkit import Cluster, wait_for

MOUNT = "/var/run/agentcred/research-llm"
TOKEN = f"{MOUNT}/token"


class NodeCluster(Cluster):
    """A Cluster whose pods really run, on `node`."""

    def __init__(self, *args: Any, node: RealNode, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node
        assert node.state is not None
        self.node_name = node.state.name
        self.probe_image = node.state.images["probe"]

    def containers_of(self, pod_uid: str) -> list[str]:
        """The containers containerd holds for a pod (its sandbox included): what runs, asked of
        the runtime itself, not of the API."""
        listed = self.node._ctr("containers", "list", "-q", f'labels."io.kubernetes.pod.uid"=={pod_uid}')
        return listed.stdout.split()

    def volume_mounts_of(self, pod_uid: str) -> list[str]:
        """The mounts the kubelet holds on the host for a pod's volumes (a Secret volume is a tmpfs)."""
        return _mounts_under(str(self.node.kubelet_root / "pods" / pod_uid / "volumes"))


def fingerprint(value: bytes) -> str:
    """What the probe prints for a file's content."""
    return hashlib.sha256(value).hexdigest()[:16]


def probe_container(image: str, *args: str, name: str = "agent") -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "args": list(args)}


def agent_pod_spec(
    image: str, *args: str, sa: str = "research-agent", fs_group: int | None = None, **spec: Any
) -> dict[str, Any]:
    security: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532}
    if fs_group is not None:
        security["fsGroup"] = fs_group
    return {
        "serviceAccountName": sa,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "securityContext": security,
        "containers": [probe_container(image, *args)],
        **spec,
    }


def opted_in(credentials: str) -> dict[str, Any]:
    return {"labels": {labels.INJECT_LABEL: "true"}, "annotations": {labels.CREDENTIALS_ANNOTATION: credentials}}


def create_agent_pod(cluster: NodeCluster, namespace: str, name: str, credentials: str, *args: str, **spec: Any) -> Any:
    spec_ = agent_pod_spec(cluster.probe_image, *args, **spec)
    body = {"metadata": {"name": name, **opted_in(credentials)}, "spec": spec_}
    return cluster.core.create_namespaced_pod(namespace, body)


def create_agent_job(cluster: NodeCluster, namespace: str, name: str, credentials: str, *args: str) -> None:
    template = {"metadata": opted_in(credentials), "spec": agent_pod_spec(cluster.probe_image, *args)}
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}
    body["spec"] = {"backoffLimit": 0, "template": template}
    cluster.batch.create_namespaced_job(namespace, body)


def seen(cluster: Cluster, namespace: str, pod: str, container: str = "agent") -> list[dict[str, Any]]:
    """What the probe in a container has printed so far, as events."""
    try:
        text = cluster.core.read_namespaced_pod_log(pod, namespace, container=container)
    except ApiException as error:
        if error.status in (400, 404, 500, 502, 503):  # not started yet, gone, or its kubelet away
            return []
        raise
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def seen_file(events: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    return [event for event in events if event["path"] == path]


def wait_seen(
    cluster: Cluster, namespace: str, pod: str, path: str, predicate: Any = bool, timeout: float = 60, what: str = ""
) -> list[dict[str, Any]]:
    """Wait until the container has printed events for `path` that satisfy `predicate`."""

    def check() -> list[dict[str, Any]] | None:
        events = seen_file(seen(cluster, namespace, pod), path)
        return events if events and predicate(events) else None

    return wait_for(check, timeout=timeout, interval=0.5, what=what or f"the container of {pod} to see {path}")


def running(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The pod, once it runs on the node."""

    def check() -> dict[str, Any] | None:
        pod = cluster.core.read_namespaced_pod(name, namespace)
        return cluster.api_client.sanitize_for_serialization(pod) if pod.status.phase == "Running" else None

    return wait_for(check, timeout=60, what=f"pod {name} Running on the node")


def pod_phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    try:
        return cluster.core.read_namespaced_pod(name, namespace).status.phase
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def pod_gone(cluster: Cluster, namespace: str, name: str) -> bool:
    return pod_phase(cluster, namespace, name) is None


def until(seconds: float) -> float:
    return time.monotonic() + seconds


def node_folder(cluster: NodeCluster) -> Path:
    return cluster.node.folder


# -- CSI delivery: what agentcred's node plugin holds on the node ---------------------------


def csi_state(cluster: NodeCluster) -> Path:
    return cluster.node.kubelet_root / "plugins" / labels.CSI_DRIVER / "state"


def csi_records(cluster: NodeCluster, pod_uid: str) -> list[dict[str, Any]]:
    """The plugin's records (no values) of the volumes it published for a pod."""
    found = []
    for path in sorted((csi_state(cluster) / "volumes").glob("*.json")):
        record = json.loads(path.read_text())
        if record["pod_uid"] == pod_uid:
            found.append(record)
    return found


def csi_value(cluster: NodeCluster, pod_uid: str, credential: str) -> bytes | None:
    """The value the plugin wrote for a pod's credential, read on the node (never shown)."""
    for record in csi_records(cluster, pod_uid):
        if record["credential"] == credential:
            path = csi_state(cluster) / "mounts" / record["volume_id"] / "token"
            return path.read_bytes() if path.exists() else None
    return None


def etcd_dump(cluster: Cluster) -> list[tuple[bytes, bytes]]:
    """Every key and value in etcd, read through etcd's own v3 API (its JSON gateway: a range
    over the whole key space, as `etcdctl get --prefix ''` reads it)."""
    import base64
    import urllib.request

    url = f"{cluster.plane.etcd_url}/v3/kv/range"
    everything = base64.b64encode(b"\0").decode()
    body = json.dumps({"key": everything, "range_end": everything}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        data = json.loads(answer.read())
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in data.get("kvs", [])]
