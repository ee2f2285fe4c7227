"""Faults on a real node: the kubelet restarted while pods hold values (values stay readable,
renewals still arrive), containerd restarted (containers keep running, new pods start), the
operator killed while a pod's value is being issued (the pod stays gated, nothing half-written
is readable), and a host that cannot run a node (a clear message, never a hang or traceback)."""

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agentcred.api import labels
from agents import claims_of, read_secret, secret_name_of, service_account, value_of
from agents import create_credential as _create_credential
from clusterkit import REPO, wait_for
from minting_service import MintingService
from nodekit import MOUNT, TOKEN, create_agent_pod, fingerprint, running, seen, seen_file, wait_seen

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def test_a_kubelet_restart_keeps_values_readable_and_renewals_arriving(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    _create_credential(node_cluster, ns, ttl="40s", renewBefore="20s", projection={"mountPath": MOUNT})
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
    running(node_cluster, ns, "agent")
    secret_name = secret_name_of(node_cluster.api_client.sanitize_for_serialization(pod))
    first = value_of(read_secret(node_cluster, ns, secret_name), "research-llm")
    wait_seen(node_cluster, ns, "agent", TOKEN)
    node_cluster.node.restart("kubelet", down_for=3)
    # The container ran on, and never lost its file while the kubelet was away.
    assert node_cluster.core.read_namespaced_pod("agent", ns).status.phase == "Running"
    expires = dt.datetime.fromtimestamp(claims_of(first)["exp"], dt.timezone.utc)
    events = wait_seen(
        node_cluster,
        ns,
        "agent",
        TOKEN,
        predicate=lambda events: len({e.get("sha256") for e in events if "sha256" in e}) >= 2,
        timeout=90,
        what="the renewal delivered by the restarted kubelet",
    )
    assert not any(e.get("gone") for e in events), "the value vanished from the container"
    renewed = next(e for e in events if e.get("sha256") not in (None, fingerprint(first)))
    assert dt.datetime.fromtimestamp(renewed["t"], dt.timezone.utc) < expires
    restarts = node_cluster.core.read_namespaced_pod("agent", ns).status.container_statuses[0].restart_count
    assert restarts == 0


def test_a_containerd_restart_leaves_containers_running_and_new_pods_start(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    _create_credential(node_cluster, ns, projection={"mountPath": MOUNT})
    before = create_agent_pod(node_cluster, ns, "before", "research-llm", "watch", MOUNT)
    running(node_cluster, ns, "before")
    wait_seen(node_cluster, ns, "before", TOKEN)
    containers = node_cluster.containers_of(before.metadata.uid)
    node_cluster.node.restart("containerd", down_for=2)
    wait_for(lambda: node_cluster.node.socket.exists(), what="containerd's socket again")
    # The shims kept the containers alive; the kubelet finds them again.
    assert node_cluster.containers_of(before.metadata.uid) == containers
    status = node_cluster.core.read_namespaced_pod("before", ns).status
    assert status.phase == "Running" and status.container_statuses[0].restart_count == 0
    create_agent_pod(node_cluster, ns, "after", "research-llm", "watch", MOUNT)
    body = running(node_cluster, ns, "after")
    value = value_of(read_secret(node_cluster, ns, secret_name_of(body)), "research-llm")
    assert wait_seen(node_cluster, ns, "after", TOKEN)[0]["sha256"] == fingerprint(value)
    # Logs still come through the kubelet from the container started before the restart.
    assert seen_file(seen(node_cluster, ns, "before"), TOKEN)


def test_the_operator_killed_during_issuance_leaves_the_pod_gated_and_nothing_half_written(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    minting = MintingService().start()
    try:
        _create_credential(
            node_cluster,
            ns,
            source={"webhook": {"url": minting.url, "caBundle": minting.ca_pem, "timeout": "10s"}},
            projection={"mountPath": MOUNT},
        )
        minting.mode = "hang"  # the operator is inside the minting call when it dies
        pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
        wait_for(lambda: minting.calls > 0, timeout=30, what="the operator inside a minting call")
        node_operator.kill()
        try:
            time.sleep(5)
            current = node_cluster.core.read_namespaced_pod("agent", ns)
            assert current.spec.scheduling_gates and not current.spec.node_name
            assert not node_cluster.containers_of(pod.metadata.uid)
            admitted = node_cluster.api_client.sanitize_for_serialization(current)
            secret = read_secret(node_cluster, ns, secret_name_of(admitted))
            assert secret is None or value_of(secret, "research-llm") is None, "a value was written half-way"
        finally:
            minting.mode = "ok"
            node_operator.start()
        body = running(node_cluster, ns, "agent")
        value = value_of(read_secret(node_cluster, ns, secret_name_of(body)), "research-llm")
        assert wait_seen(node_cluster, ns, "agent", TOKEN)[0]["sha256"] == fingerprint(value)
        assert (
            body["metadata"]["annotations"][labels.BINDING_ANNOTATION]
            == admitted["metadata"]["annotations"][labels.BINDING_ANNOTATION]
        )
    finally:
        minting.stop()


def test_a_host_that_cannot_run_a_node_is_told_what_is_missing(request: pytest.FixtureRequest) -> None:
    """`dev up` as a user who is not root: what is missing and how to use the stand-in, exit 1,
    no traceback, nothing left behind."""
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not python.exists():
        pytest.skip("needs root and a system python3 to run `dev up` as another user")
    scratch = Path(tempfile.mkdtemp(prefix="agentcred-unprivileged-"))  # pytest's own is root's alone
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    cache = scratch / "cache"
    cache.mkdir()
    os.chmod(scratch, 0o777)
    os.chmod(cache, 0o777)
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {**os.environ, "AGENTCRED_CACHE": str(cache), "HOME": str(scratch)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(site)])
    env.pop("KUBECONFIG", None)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python)]
    if subprocess.run([*nobody, "-c", "import agentcred.cli"], env=env, capture_output=True).returncode:
        pytest.skip("this checkout or its packages are not readable by another user")
    result = subprocess.run(
        [*nobody, "-m", "agentcred", "dev", "up", "--name", "unprivileged"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=scratch,
    )
    assert result.returncode == 1, result.stderr
    assert "this host cannot run a real node" in result.stderr and "needs root" in result.stderr
    assert "agentcred dev up --stand-in" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cache / "dev" / "unprivileged").exists()
