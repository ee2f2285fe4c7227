"""`delivery: csi` through faults on the real node: the plugin, the kubelet and the operator
each restarted while values are live -- the container keeps reading its value, renewals still
arrive, and a restarted operator learns what the node holds instead of issuing afresh -- and a
task's end takes the value and the volume away."""

from __future__ import annotations

import time

import pytest

from agents import audit_lines, create_credential, service_account
from clusterkit import wait_for
from nodekit import MOUNT, TOKEN, NodeCluster, create_agent_job, create_agent_pod, csi_records, running, wait_seen

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def csi_agent(cluster: NodeCluster, namespace: str) -> str:
    """A running pod with a csi value renewed every ~10 s (ttl 20s, renewBefore 10s)."""
    service_account(cluster, namespace)
    create_credential(
        cluster, namespace, projection={"mountPath": MOUNT, "delivery": "csi"}, ttl="20s", renewBefore="10s"
    )
    pod = create_agent_pod(cluster, namespace, "agent", "research-llm", "watch", "-every", "200ms", MOUNT)
    running(cluster, namespace, "agent")
    wait_seen(cluster, namespace, "agent", TOKEN)
    return pod.metadata.uid


def values_seen_since(events: list[dict], moment: float) -> set[str]:
    return {e["sha256"] for e in events if e["t"] >= moment and e.get("sha256")}


def renewal_after(cluster: NodeCluster, namespace: str, moment: float, what: str) -> list[dict]:
    return wait_seen(
        cluster,
        namespace,
        "agent",
        TOKEN,
        lambda events: values_seen_since(events, moment),
        timeout=60,
        what=f"a renewed value in the container after {what}",
    )


def test_plugin_and_kubelet_restarts_keep_the_value_and_renewals(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    csi_agent(node_cluster, ns)
    for component in ("csi-node", "kubelet"):
        restarted = time.time()
        node_cluster.node.restart(component, down_for=2)
        events = renewal_after(node_cluster, ns, restarted, f"the {component} restarted")
        assert not any(e.get("gone") for e in events), (
            f"the value vanished from the container around the {component} restart"
        )
        assert node_cluster.core.read_namespaced_pod("agent", ns).status.phase == "Running"


def test_a_restarted_operator_learns_the_node_and_renews_without_issuing_afresh(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    uid = csi_agent(node_cluster, ns)
    issued_before = len(audit_lines(node_operator, "issue", podUID=uid))
    node_operator.restart()
    restarted = time.time()
    events = renewal_after(node_cluster, ns, restarted, "the operator restarted")
    assert not any(e.get("gone") for e in events)
    assert len(audit_lines(node_operator, "issue", podUID=uid)) == issued_before, "issued afresh after a restart"
    assert audit_lines(node_operator, "renew", podUID=uid)


def test_the_tasks_end_revokes_and_the_volume_goes(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    create_credential(node_cluster, ns, projection={"mountPath": MOUNT, "delivery": "csi"})
    create_agent_job(node_cluster, ns, "task", "research-llm", "watch", "-exit-after", "6s", MOUNT)
    pod = wait_for(
        lambda: next(iter(node_cluster.core.list_namespaced_pod(ns, label_selector="job-name=task").items), None),
        what="the Job's pod",
    )
    uid = pod.metadata.uid
    running(node_cluster, ns, pod.metadata.name)
    wait_seen(node_cluster, ns, pod.metadata.name, TOKEN)
    assert csi_records(node_cluster, uid)
    wait_for(
        lambda: audit_lines(node_operator, "revoke", podUID=uid, reason="task-succeeded"),
        timeout=90,
        what="the value revoked when the Job's pod succeeded",
    )
    wait_for(lambda: not csi_records(node_cluster, uid), timeout=90, what="the volume unpublished by the kubelet")
    wait_for(lambda: not node_cluster.volume_mounts_of(uid), timeout=60, what="the pod's volumes unmounted")
