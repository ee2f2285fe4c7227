"""Fixtures: a real cluster for the session, a namespace per test, the kubelet stand-in.

AGENTCRED_TEST_CLUSTER picks the cluster:
  local (default)  etcd + kube-apiserver + kube-controller-manager on loopback, built from
                   Go modules on first use and cached (see agentcred.devcluster)
  kubeconfig       the existing cluster $KUBECONFIG points at
  kind             a kind cluster through pytest-kind (needs a Docker engine)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from clusterkit import GATEWAY, INTROSPECTOR, REPORTER_ENV, Cluster, OperatorProcess, operator_paused
from witness import Witness

CLUSTER_MODE = os.environ.get("AGENTCRED_TEST_CLUSTER", "local")

# Hypothesis's per-example deadline is a timed assertion: on a loaded machine it fails tests
# that are right. Speed is the benchmark's to measure.
settings.register_profile("agentcred", deadline=None)
settings.load_profile("agentcred")


def _docker_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    import subprocess

    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if CLUSTER_MODE == "kubeconfig":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.fail("AGENTCRED_TEST_CLUSTER=kubeconfig needs KUBECONFIG to name a kubeconfig file")
        found = Cluster(Path(kubeconfig))
        found.install_crd()
        yield found
    elif CLUSTER_MODE == "kind":
        if not _docker_available():
            pytest.skip("AGENTCRED_TEST_CLUSTER=kind needs a running Docker engine, and none answers here")
        kind_cluster = request.getfixturevalue("kind_cluster")
        found = Cluster(Path(kind_cluster.kubeconfig_path))
        found.install_crd()
        yield found
    elif CLUSTER_MODE == "local":
        from agentcred.devcluster.binaries import ensure_binaries
        from agentcred.devcluster.controlplane import ControlPlane

        with ControlPlane() as plane:
            found = Cluster(plane.kubeconfig, binaries=ensure_binaries(), local=True, plane=plane)
            found.install_crd()
            yield found
    else:
        pytest.fail(f"unknown AGENTCRED_TEST_CLUSTER={CLUSTER_MODE!r}: use local, kubeconfig or kind")


@pytest.fixture(scope="session")
def kubelet(cluster: Cluster) -> Iterator[object]:
    """The scheduler-and-kubelet stand-in, on clusters that have no real ones."""
    if not cluster.local:
        pytest.skip("this test drives pod phases by hand, which needs the local control plane")
    from agentcred.devcluster.kubelet import FakeKubelet

    with FakeKubelet(cluster.api_client) as stand_in:
        yield stand_in


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace()
    yield name
    cluster.delete_namespace(name)


@pytest.fixture(scope="session")
def witness(cluster: Cluster) -> Iterator[Witness]:
    """Records every managed value, Event and status of the session, and every operator's log,
    audit log and metrics; when the session ends, fails it if any value shows in any of them
    (whatever order the tests ran in)."""
    recorder = Witness(cluster).start()
    OperatorProcess.on_cleanup = recorder.logs.append
    yield recorder
    recorder.stop()
    leaks = recorder.leaks({})
    if leaks:
        pytest.fail(f"secret values found in: {leaks}", pytrace=False)


def _operator(cluster: Cluster) -> OperatorProcess:
    """The ServiceAccount INTROSPECTOR may introspect tokens, REPORTER_ENV's may report leaks
    (a tenant's and a cluster-wide one), GATEWAY may ask for gateway decisions."""
    return OperatorProcess(
        cluster, "--introspector", "/".join(INTROSPECTOR), "--gateway", "/".join(GATEWAY), env=REPORTER_ENV
    )


@pytest.fixture(scope="session")
def operator(cluster: Cluster, witness: Witness) -> Iterator[OperatorProcess]:
    """One operator process for the session, shared by every test that only uses it. A test
    that stops, kills or restarts an operator takes `own_operator` instead."""
    process = _operator(cluster).start()
    yield process
    process.cleanup()


@pytest.fixture
def own_operator(cluster: Cluster, operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """An operator of the test's own, configured as the session's, to stop, kill or restart at
    will. The session's is paused meanwhile (two standalone operators would both act on the
    same pods) and started again afterwards."""
    with operator_paused(operator):
        process = _operator(cluster).start()
        try:
            yield process
        finally:
            process.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the tail of its operator's log (what it did and why not),
    so a failure in CI can be read without running it again. The log holds no values (the
    witness makes sure of that)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name in ("own_operator", "operator"):
        process = getattr(item, "funcargs", {}).get(name)
        if isinstance(process, OperatorProcess):
            report.sections.append((f"{name} log (last 150 lines)", process.log_tail(150)))
            break


# -- the real-node tier ------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[object]:
    """A second local control plane with a real node (kubelet, kube-scheduler, containerd,
    runc): its pods run as containers. Apart from `cluster`, whose stand-in binds every pod."""
    if CLUSTER_MODE != "local":
        pytest.skip("the real-node tier starts its own local control plane and node")
    import tempfile

    from agentcred.devcluster.binaries import ensure_binaries
    from agentcred.devcluster.controlplane import ControlPlane
    from agentcred.devcluster.node import RealNode, host_problems
    from nodekit import NodeCluster

    problems = host_problems()
    if problems:
        pytest.skip("this host cannot run a real node: " + "; ".join(problems))
    workdir = Path(tempfile.mkdtemp(prefix="agentcred-node-"))
    node = RealNode(workdir)
    plane = None
    left: list[str] = []
    try:
        plane = ControlPlane(workdir=workdir, **node.prepare().plane_options)
        plane.start()
        node.start(plane.server, plane.kubeconfig)
        found = NodeCluster(plane.kubeconfig, binaries=ensure_binaries(), local=True, plane=plane, node=node)
        found.install_crd()
        yield found
    finally:
        left = node.stop()  # first: the node's containers, mounts, cgroups and bridge
        if plane is not None:
            plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"the real node left behind: {left}"


@pytest.fixture(scope="session")
def node_operator(node_cluster: Cluster) -> Iterator[OperatorProcess]:
    """The operator (a process on this host) for the real-node cluster, told how late its
    kubelet may deliver a renewed value."""
    from agentcred.devcluster.node import volume_refresh_delay

    delay = volume_refresh_delay(node_cluster.node.sync_frequency)
    process = OperatorProcess(node_cluster, volume_refresh_delay=delay, env=REPORTER_ENV).start()
    link_csi_plugin(node_cluster, process)
    yield process
    process.cleanup()


def link_csi_plugin(node_cluster: Cluster, operator: OperatorProcess) -> None:
    """Point the node's CSI plugin at this operator (its URL, CA, and a Node-bound token)."""
    from agentcred.devcluster.csi_plugin import link_operator

    node = node_cluster.node
    link_operator(node_cluster.api_client, node.state.name, node.csi_operator_dir, operator.api_url)


@pytest.fixture
def node_namespace(node_cluster: Cluster) -> Iterator[str]:
    name = node_cluster.create_namespace("n")
    yield name
    node_cluster.delete_namespace(name)
