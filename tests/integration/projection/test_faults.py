"""Faults: the operator killed at random points, the API server restarted, etcd stalled,
the webhook unreachable. Afterwards every live pod has its values, every ended task has
none, no Secret is orphaned, and the audit log shows every revocation."""

import json
import random
import threading
import time

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agents import audit_lines, create_credential, create_job, create_pod, read_secret, service_account, value_of
from clusterkit import Cluster, OperatorProcess, wait_for


def _managed(cluster: Cluster, namespace: str) -> dict[str, dict]:
    secrets = cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items
    return {s.metadata.name: cluster.api_client.sanitize_for_serialization(s) for s in secrets}


def _converged(cluster: Cluster, namespace: str, expected_pods: int) -> bool:
    """Running pods hold every value they asked for; nothing else holds a Secret."""
    pods = cluster.core.list_namespaced_pod(namespace).items
    if len(pods) < expected_pods or any(p.status.phase == "Pending" for p in pods):
        return False
    secrets = _managed(cluster, namespace)
    owners = set()
    for pod in pods:
        name = labels.secret_name(pod.metadata.annotations[labels.BINDING_ANNOTATION])
        if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
            if name not in secrets or value_of(secrets[name], "research-llm") is None:
                return False
            owners.add(name)
    return set(secrets) == owners


class Recorder:
    """Which pods ever had a value, seen from outside the operator."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.had_value: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, namespace), daemon=True)
        self._thread.start()

    def _run(self, cluster: Cluster, namespace: str) -> None:
        while not self._stop.is_set():
            for secret in _managed(cluster, namespace).values():
                if value_of(secret, "research-llm") is not None:
                    self.had_value.add(secret["metadata"]["labels"][labels.POD_UID_LABEL])
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_operator_killed_at_random_points_during_issuing_and_revoking(
    cluster: Cluster, own_operator: OperatorProcess, kubelet, namespace: str
) -> None:
    rng = random.Random(20261128)
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    recorder = Recorder(cluster, namespace)
    finished: set[str] = set()
    for wave in range(3):
        for i in range(15):
            create_job(cluster, namespace, f"w{wave}-{i}", "research-llm")
        time.sleep(rng.uniform(0.3, 1.5))
        own_operator.kill()
        running = [p for p in cluster.core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]
        for pod in rng.sample(running, k=len(running) // 2):  # tasks end while nobody watches
            (kubelet.succeed if rng.random() < 0.7 else kubelet.fail)(namespace, pod.metadata.name)
            finished.add(pod.metadata.uid)
        own_operator.start()
        time.sleep(rng.uniform(0.2, 1.0))
        running = [p for p in cluster.core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]
        for pod in rng.sample(running, k=len(running) // 3):  # and while it runs
            kubelet.succeed(namespace, pod.metadata.name)
            finished.add(pod.metadata.uid)

    wait_for(lambda: _converged(cluster, namespace, 45), timeout=120, interval=0.5, what="convergence")
    recorder.stop()
    own_operator.assert_alive()

    def revoked() -> set[str]:
        return {line["podUID"] for line in audit_lines(own_operator, "revoke", namespace=namespace)}

    lost = lambda: (finished & recorder.had_value) - revoked()  # noqa: E731
    wait_for(lambda: not lost(), timeout=15, what="a revoke line for every finished task that had a value")
    issued = {line["podUID"] for line in audit_lines(own_operator, "issue", namespace=namespace)}
    assert recorder.had_value <= issued, "a value was issued without an audit line"


def _jobs(cluster: Cluster, namespace: str, prefix: str, numbers: range) -> None:
    for i in numbers:
        create_job(cluster, namespace, f"{prefix}-{i}", "research-llm")


def _local_agents(cluster: Cluster, namespace: str, what: str) -> None:
    if cluster.plane is None:
        pytest.skip(f"{what} needs the local control plane")
    service_account(cluster, namespace)
    create_credential(cluster, namespace)


def test_api_server_restart_mid_burst(cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str) -> None:
    _local_agents(cluster, namespace, "restarting the API server")
    _jobs(cluster, namespace, "a", range(20))
    cluster.plane.restart("kube-apiserver", down_for=2.0)
    _jobs(cluster, namespace, "a", range(20, 30))
    wait_for(lambda: _converged(cluster, namespace, 30), timeout=120, interval=0.5, what="convergence after restart")
    for pod in [p for p in cluster.core.list_namespaced_pod(namespace).items if p.status.phase == "Running"][:10]:
        kubelet.succeed(namespace, pod.metadata.name)
    wait_for(lambda: _converged(cluster, namespace, 30), timeout=60, interval=0.5, what="revocations after restart")
    operator.assert_alive()


def test_etcd_stalled_briefly(cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str) -> None:
    _local_agents(cluster, namespace, "stalling etcd")
    _jobs(cluster, namespace, "e", range(10))
    stall = threading.Thread(target=cluster.plane.freeze, args=("etcd", 4.0))
    stall.start()
    time.sleep(0.5)
    created_during = []
    for i in range(10, 15):
        try:
            create_job(cluster, namespace, f"e-{i}", "research-llm")
            created_during.append(i)
        except ApiException:
            pass  # the API server may time out while etcd is frozen: that is the point
    stall.join()
    for i in sorted(set(range(10, 15)) - set(created_during)):
        try:
            create_job(cluster, namespace, f"e-{i}", "research-llm")
        except ApiException as error:
            if error.status != 409:  # a create that timed out for us may have happened anyway
                raise
    wait_for(lambda: _converged(cluster, namespace, 15), timeout=120, interval=0.5, what="convergence after the stall")
    operator.assert_alive()


def test_webhook_unreachable_fails_closed_for_opted_in_pods_only(
    cluster: Cluster, own_operator: OperatorProcess, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    own_operator.stop()
    try:
        with pytest.raises(ApiException) as refused:
            create_pod(cluster, namespace, "opted-in", "research-llm")
        message = json.loads(refused.value.body)["message"]
        assert "agentcred.dev" in message and "failed calling webhook" in message, message
        plain = cluster.core.create_namespaced_pod(
            namespace, {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        )
        assert plain.metadata.name == "plain"
    finally:
        own_operator.start()
    create_pod(cluster, namespace, "opted-in", "research-llm")
    secret = wait_for(
        lambda: read_secret(
            cluster,
            namespace,
            labels.secret_name(
                cluster.core.read_namespaced_pod("opted-in", namespace).metadata.annotations[labels.BINDING_ANNOTATION]
            ),
        ),
        what="issued once the operator is back",
    )
    assert value_of(secret, "research-llm") is not None
