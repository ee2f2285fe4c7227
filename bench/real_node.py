"""A control plane and a real node of their own (kubelet, containerd, runc), with agentcred
installed and the operator running, for the stages that measure what a container sees (`csi`,
`kubelet-delay`): brought up and torn down one way, the operator's log shown when a stage
fails, what the node left behind reported. And what those stages make there and read back: a
namespace with the ServiceAccount `agent` and Ready AgentCredentials, agent pods running the
probe (which looks at its mounted files and prints a JSON line when a value appears, changes
or goes, on the host's clock), and the probe's lines.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from agentcred.api import labels, model
from agentcred.devcluster.controlplane import ControlPlane
from agentcred.devcluster.install import install_agentcred
from agentcred.devcluster.local_operator import LocalOperator
from agentcred.devcluster.node import DEV_SYNC_FREQUENCY, NodeState, RealNode, volume_refresh_delay
from agentcred.devcluster.polling import wait_for


@dataclass(frozen=True)
class OnRealNode:
    """What a stage gets to work with while the node is up."""

    node: RealNode
    state: NodeState
    api: client.ApiClient
    operator: LocalOperator

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


@contextmanager
def real_node(prefix: str, sync_frequency: str = DEV_SYNC_FREQUENCY) -> Iterator[OnRealNode]:
    """A control plane, a real node whose kubelet syncs every `sync_frequency`, agentcred
    installed and its operator running (its volume refresh matched to the kubelet's); all of it
    stopped and its folder removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    node = RealNode(workdir, sync_frequency=sync_frequency)
    plane: ControlPlane | None = None
    operator: LocalOperator | None = None
    try:
        plane = ControlPlane(workdir=workdir, **node.prepare().plane_options)
        plane.start()
        state = node.start(plane.server, plane.kubeconfig)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = LocalOperator(
            plane.kubeconfig,
            workdir / "operator",
            detached=False,
            volume_refresh_delay=volume_refresh_delay(sync_frequency),
        )
        operator.start(timeout=300)
        yield OnRealNode(node, state, api, operator)
    except BaseException:
        if operator is not None:
            print(operator.log_tail(40), file=sys.stderr)
        raise
    finally:
        if operator is not None:
            operator.stop()
        left = node.stop()
        if plane is not None:
            plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            print(f"the node left behind: {left}", file=sys.stderr)


def mount(credential: str) -> str:
    """Where a credential's files are mounted in the agent's container."""
    return f"/var/run/agentcred/{credential}"


def token(credential: str) -> str:
    """The file the probe watches for a credential's value."""
    return f"{mount(credential)}/token"


def make_namespace(api: client.ApiClient, namespace: str, projections: dict[str, dict[str, Any]]) -> None:
    """The namespace, its ServiceAccount `agent` and one jwt AgentCredential per entry of
    `projections` (its name -> its projection), each with ttl 1h (nothing renews by itself)
    and waited for until Ready."""
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.list_namespaced_service_account(namespace).items, timeout=60, what="default SA")
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent"}})
    custom = client.CustomObjectsApi(api)
    for name, projection in projections.items():
        spec = {
            "owner": "bench@example.com",
            "category": "model",
            "subjects": {"serviceAccounts": ["agent"]},
            "source": {"jwt": {"audiences": ["https://bench.internal"]}},
            "ttl": "1h",
            "projection": projection,
        }
        body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": name}, "spec": spec}
        custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, body)

        def ready(name: str = name) -> bool:
            got = custom.get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, name)
            conditions = (got.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for(ready, timeout=60, what=f"{name} Ready")


def probe_pod(name: str, image: str, credentials: list[str], probe_args: list[str]) -> dict[str, Any]:
    """An agent pod opting in to `credentials`, its container running the probe with `probe_args`."""
    return {
        "metadata": {
            "name": name,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: ",".join(credentials)},
        },
        "spec": {
            "serviceAccountName": "agent",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {"name": "agent", "image": image, "imagePullPolicy": "Never", "args": ["watch", *probe_args]}
            ],
        },
    }


def probe_lines(core: client.CoreV1Api, namespace: str, pod: str) -> list[dict[str, Any]]:
    """What the pod's probe printed so far: one event per value that appeared, changed or went."""
    text = core.read_namespaced_pod_log(pod, namespace)
    return [json.loads(line) for line in (text or "").splitlines() if line.startswith("{")]
