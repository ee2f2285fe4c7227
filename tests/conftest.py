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

from clusterkit import INTROSPECTOR, REPORTER_ENV, Cluster, OperatorProcess
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
    """Records every managed value, Event and status of the session (see test_zz_leaks)."""
    recorder = Witness(cluster).start()
    OperatorProcess.on_cleanup = lambda process: recorder.logs.append(process.logs() + process.audit_text())
    yield recorder
    recorder.stop()


@pytest.fixture(scope="session")
def operator(cluster: Cluster, witness: Witness) -> Iterator[OperatorProcess]:
    """One operator process for the session (tests that restart it use `restart()`); the
    ServiceAccount INTROSPECTOR may introspect tokens, REPORTER_ENV's may report leaks."""
    process = OperatorProcess(cluster, "--introspector", "/".join(INTROSPECTOR), env=REPORTER_ENV).start()
    yield process
    process.cleanup()
