"""The chart installed in the cluster with the operator's image built here (no registry): two
replicas run as the chart's ServiceAccount and pass their probes, the API server calls the
webhook through the Service, one replica leads and another takes over when the leader's pod
is deleted, and an agent Job in a tenant namespace gets its value from the in-cluster operator."""

import subprocess
from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.devcluster.images import operator_image
from agentcred.devcluster.node import volume_refresh_delay
from agents import create_credential as _create_credential
from agents import read_secret, secret_gone, secret_name_of, service_account, value_of
from clusterkit import REPO, operator_paused, wait_for
from nodekit import MOUNT, TOKEN, NodeCluster, create_agent_job, create_agent_pod, fingerprint, running, wait_seen

pytestmark = [pytest.mark.cluster, pytest.mark.node]

RELEASE, NAMESPACE = "agentcred", "agentcred-system"
SELECTOR = "app.kubernetes.io/name=agentcred"


@pytest.fixture(scope="module")
def in_cluster(node_cluster: NodeCluster, node_operator) -> Iterator[str]:
    """The chart installed with the local image; the host's operator steps aside meanwhile."""
    image = operator_image()
    node_cluster.node.import_image(image.archive)
    repository, tag = image.name.rsplit(":", 1)
    helm = [str(node_cluster.binaries["helm"]), "--kubeconfig", str(node_cluster.kubeconfig)]
    with operator_paused(node_operator):
        installed = subprocess.run(
            [*helm, "install", RELEASE, str(REPO / "charts" / "agentcred"), "-n", NAMESPACE, "--create-namespace"]
            + ["--set", "crds.install=false", "--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]
            + ["--set", "image.pullPolicy=Never", "--set", "logFormat=plain"]
            # The node runs agentcred's CSI plugin already (beside its kubelet, with its CSIDriver).
            + ["--set", "csiNode.enabled=false"]
            + ["--set", f"volumeRefreshDelay={volume_refresh_delay(node_cluster.node.sync_frequency)}"]
            + ["--wait", "--timeout", "3m"],
            capture_output=True,
            text=True,
        )
        try:
            assert installed.returncode == 0, installed.stderr + _operator_logs(node_cluster)
            yield image.name
        finally:
            subprocess.run([*helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait"], capture_output=True)
            node_cluster.delete_namespace(NAMESPACE)


def _operator_logs(cluster: NodeCluster) -> str:
    logs = []
    for pod in cluster.core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items:
        try:
            logs.append(cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, tail_lines=30))
        except ApiException as error:
            logs.append(f"{pod.metadata.name}: {error.reason}")
    return "\n".join(logs)


def _ready_operators(cluster: NodeCluster) -> list:
    pods = cluster.core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
    return [
        pod
        for pod in pods
        if not pod.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def _leader(cluster: NodeCluster) -> str | None:
    from kubernetes import client

    leases = client.CoordinationV1Api(cluster.api_client).list_namespaced_lease(NAMESPACE).items
    holders = [lease.spec.holder_identity for lease in leases if lease.metadata.name.endswith("-leader")]
    return holders[0] if holders else None


def test_two_replicas_run_as_the_charts_identity_and_pass_their_probes(node_cluster, in_cluster) -> None:
    pods = wait_for(lambda: len(_ready_operators(node_cluster)) == 2 and _ready_operators(node_cluster))
    for pod in pods:
        assert pod.spec.service_account_name == RELEASE
        assert pod.spec.containers[0].image == in_cluster
        assert pod.spec.node_name == node_cluster.node_name
        status = pod.status.container_statuses[0]
        assert status.ready and status.restart_count == 0, _operator_logs(node_cluster)
    webhook = node_cluster.admission.read_mutating_webhook_configuration(f"{RELEASE}.agentcred.dev").webhooks[0]
    assert webhook.client_config.service.name == RELEASE and webhook.client_config.url is None
    assert webhook.client_config.ca_bundle, "the operator did not inject its CA"
    from kubernetes import client

    budget = client.PolicyV1Api(node_cluster.api_client).read_namespaced_pod_disruption_budget(RELEASE, NAMESPACE)
    assert budget.status.current_healthy == 2


def test_an_agent_job_gets_its_value_from_the_operator_in_the_cluster(node_cluster, in_cluster, node_namespace) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    _create_credential(node_cluster, ns, projection={"mountPath": MOUNT})
    # Admitted through the Service (the webhook adds the gate and the volume), issued by the
    # in-cluster leader, run by the kubelet.
    create_agent_job(node_cluster, ns, "task", "research-llm", "watch", "-exit-after", "5s", MOUNT)
    pod = wait_for(
        lambda: next(iter(node_cluster.core.list_namespaced_pod(ns, label_selector="job-name=task").items), None),
        what="the Job's pod",
    )
    body = running(node_cluster, ns, pod.metadata.name)
    assert any(v["name"].startswith("agentcred-") for v in body["spec"]["volumes"]), "not admitted by the webhook"
    secret_name = secret_name_of(body)
    value = value_of(read_secret(node_cluster, ns, secret_name), "research-llm")
    events = wait_seen(node_cluster, ns, pod.metadata.name, TOKEN)
    assert events[0]["sha256"] == fingerprint(value)
    wait_for(lambda: secret_gone(node_cluster, ns, secret_name), timeout=90, what="revoked when the Job completed")


def test_another_replica_takes_over_when_the_leaders_pod_is_deleted(node_cluster, in_cluster, node_namespace) -> None:
    leader = wait_for(lambda: _leader(node_cluster), what="a leader")
    names = {pod.metadata.name for pod in _ready_operators(node_cluster)}
    assert leader in names, f"the lease holder {leader} is none of the replicas {names}"
    node_cluster.core.delete_namespaced_pod(leader, NAMESPACE)
    successor = wait_for(
        lambda: (holder := _leader(node_cluster)) not in (None, leader) and holder,
        timeout=60,
        what="another replica to take the lease",
    )
    # The standing replica or the Deployment's replacement for the deleted one, whichever asks
    # first after the release: either is a replica of this release, never a stranger.
    pods = node_cluster.core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
    others = {pod.metadata.name for pod in pods} - {leader}
    assert successor in others, f"the lease went to {successor}, none of the replicas {others}"
    # The new leader issues: a new agent pod gets its value.
    ns = node_namespace
    service_account(node_cluster, ns)
    _create_credential(node_cluster, ns, projection={"mountPath": MOUNT})
    create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
    body = running(node_cluster, ns, "agent")
    value = value_of(read_secret(node_cluster, ns, secret_name_of(body)), "research-llm")
    assert wait_seen(node_cluster, ns, "agent", TOKEN)[0]["sha256"] == fingerprint(value)
    # And the Deployment brings the deleted replica back.
    wait_for(lambda: len(_ready_operators(node_cluster)) == 2, timeout=120, what="two ready replicas again")
