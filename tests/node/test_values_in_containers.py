"""On a real node: the value agentcred writes is what the container reads, with the mode asked;
a pod waits on its scheduling gate until its value exists; a refused pod never starts a
container; a value is revoked when the task ends (Job complete, pod deleted) and is then gone
from the node as well as from the API."""

import time

import pytest

from agents import create_credential as _create_credential
from agents import read_secret, secret_gone, secret_name_of, service_account, value_of
from clusterkit import wait_for
from minting_service import MintingService
from nodekit import (
    MOUNT,
    TOKEN,
    NodeCluster,
    create_agent_job,
    create_agent_pod,
    fingerprint,
    pod_gone,
    running,
    seen,
    seen_file,
    wait_seen,
)

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def create_credential(cluster: NodeCluster, namespace: str, **overrides: object) -> dict:
    overrides.setdefault("projection", {"mountPath": MOUNT})
    return _create_credential(cluster, namespace, **overrides)


def test_the_container_reads_the_value_with_the_mode_asked(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    create_credential(node_cluster, ns, projection={"mountPath": MOUNT, "fileMode": 0o440})
    # Not root: the file is readable through the pod's fsGroup, as 0440 intends.
    create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT, fs_group=2000)
    pod = running(node_cluster, ns, "agent")
    assert pod["spec"]["nodeName"] == node_cluster.node_name
    secret = read_secret(node_cluster, ns, secret_name_of(pod))
    value = value_of(secret, "research-llm")
    events = wait_seen(node_cluster, ns, "agent", TOKEN)
    assert events[0]["mode"] == "0440"
    assert events[0]["sha256"] == fingerprint(value), "the container read another value than the Secret holds"
    assert events[0]["size"] == len(value)
    expires = seen_file(seen(node_cluster, ns, "agent"), f"{MOUNT}/expires-at")
    assert expires and expires[0]["mode"] == "0440"
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == MOUNT)
    assert mount["readOnly"] is True
    assert node_cluster.volume_mounts_of(pod["metadata"]["uid"]), "no volume mounted on the node"


def test_a_pod_waits_on_its_gate_until_its_value_exists(node_cluster, node_operator, node_namespace) -> None:
    """The minting service fails at first: the pod is admitted but stays gated, unscheduled,
    with no container on the node; once a value is minted it runs and reads it at once."""
    ns = node_namespace
    service_account(node_cluster, ns)
    minting = MintingService().start()
    try:
        create_credential(
            node_cluster, ns, source={"webhook": {"url": minting.url, "caBundle": minting.ca_pem, "timeout": "5s"}}
        )
        minting.mode = "error"
        pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
        uid = pod.metadata.uid
        wait_for(lambda: minting.calls > 0, timeout=30, what="a first minting attempt")
        held_until = time.monotonic() + 10
        while time.monotonic() < held_until:  # the real scheduler is running all along
            current = node_cluster.core.read_namespaced_pod("agent", ns)
            assert current.spec.scheduling_gates, "the gate was lifted without a value"
            assert not current.spec.node_name and not current.status.container_statuses
            assert not node_cluster.containers_of(uid), "a container exists for a gated pod"
            time.sleep(1)
        scheduled = next(c for c in current.status.conditions if c.type == "PodScheduled")
        assert (scheduled.status, scheduled.reason) == ("False", "SchedulingGated")
        minting.mode = "ok"
        running(node_cluster, ns, "agent")
        admitted = node_cluster.api_client.sanitize_for_serialization(current)
        secret = read_secret(node_cluster, ns, secret_name_of(admitted))
        events = wait_seen(node_cluster, ns, "agent", TOKEN)
        # The first thing the container saw was the value (it existed before it started).
        assert events[0]["sha256"] == fingerprint(value_of(secret, "research-llm"))
    finally:
        minting.stop()


def test_a_refused_pod_never_starts_a_container(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    service_account(node_cluster, ns, "intruder")
    create_credential(node_cluster, ns)
    # Refused at admission: no pod at all.
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        create_agent_pod(node_cluster, ns, "intruder", "research-llm", "watch", MOUNT, sa="intruder")
    assert refused.value.status in (400, 403)
    assert "intruder" in refused.value.body and "research-llm" in refused.value.body
    assert pod_gone(node_cluster, ns, "intruder")
    # Admitted, but the minting service refuses to mint: the pod never leaves its gate.
    minting = MintingService().start()
    try:
        create_credential_name = "refused-llm"
        _create_credential(
            node_cluster,
            ns,
            name=create_credential_name,
            source={"webhook": {"url": minting.url, "caBundle": minting.ca_pem, "timeout": "5s"}},
        )
        minting.mode = "refuse"
        pod = create_agent_pod(node_cluster, ns, "agent", create_credential_name, "watch", "/var/run/agentcred")
        wait_for(lambda: minting.calls > 0, timeout=30, what="a minting attempt")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = node_cluster.core.read_namespaced_pod("agent", ns)
            assert current.spec.scheduling_gates and not current.spec.node_name
            assert not current.status.container_statuses
            assert not node_cluster.containers_of(pod.metadata.uid)
            time.sleep(1)
    finally:
        minting.stop()


def test_revoked_when_the_job_completes_and_gone_from_the_node(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    create_credential(node_cluster, ns)
    create_agent_job(node_cluster, ns, "task", "research-llm", "watch", "-exit-after", "6s", MOUNT)
    pod = wait_for(
        lambda: next(iter(node_cluster.core.list_namespaced_pod(ns, label_selector="job-name=task").items), None),
        what="the Job's pod",
    )
    name, uid = pod.metadata.name, pod.metadata.uid
    running(node_cluster, ns, name)
    secret_name = secret_name_of(node_cluster.api_client.sanitize_for_serialization(pod))
    value = value_of(read_secret(node_cluster, ns, secret_name), "research-llm")
    wait_seen(node_cluster, ns, name, TOKEN)
    wait_for(
        lambda: any(
            c.type == "Complete" and c.status == "True"
            for c in node_cluster.batch.read_namespaced_job("task", ns).status.conditions or []
        ),
        timeout=90,
        what="the Job to complete through the real kubelet and Job controller",
    )
    finished = node_cluster.core.read_namespaced_pod(name, ns)
    assert finished.status.phase == "Succeeded"
    assert finished.status.container_statuses[0].state.terminated.exit_code == 0
    wait_for(lambda: secret_gone(node_cluster, ns, secret_name), timeout=30, what="the value revoked")
    # The container saw the value for its whole run, and never another one.
    assert {e["sha256"] for e in seen_file(seen(node_cluster, ns, name), TOKEN)} == {fingerprint(value)}
    # On the node: the kubelet unmounted the pod's volumes, nothing of the value is left.
    wait_for(lambda: not node_cluster.volume_mounts_of(uid), timeout=60, what="the pod's volumes unmounted")
    volumes = node_cluster.node.kubelet_root / "pods" / uid / "volumes"
    assert not any(path.is_file() for path in volumes.rglob("token")) if volumes.exists() else True


def test_revoked_when_the_pod_is_deleted_and_its_containers_gone(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    create_credential(node_cluster, ns)
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
    uid = pod.metadata.uid
    running(node_cluster, ns, "agent")
    secret_name = secret_name_of(node_cluster.api_client.sanitize_for_serialization(pod))
    wait_seen(node_cluster, ns, "agent", TOKEN)
    assert node_cluster.containers_of(uid)
    node_cluster.core.delete_namespaced_pod("agent", ns)
    wait_for(lambda: secret_gone(node_cluster, ns, secret_name), timeout=30, what="the value revoked")
    wait_for(lambda: pod_gone(node_cluster, ns, "agent"), timeout=60, what="the pod gone")
    wait_for(lambda: not node_cluster.containers_of(uid), timeout=60, what="its containers gone from containerd")
    wait_for(lambda: not node_cluster.volume_mounts_of(uid), timeout=60, what="its volumes unmounted")
