"""`agentcred dev up` starts a real node by default: two checkouts' clusters run side by side
without colliding (cgroups, bridge and subnet, sockets, ports), a Job runs as a container and
completes on each, and `dev down` leaves no process, mount, cgroup, bridge or link behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcred.devcluster.binaries import ensure_binaries, ensure_node_binaries
from agentcred.devcluster.node import CONTAINER_LOG_LINKS, _cgroup_folders, _mounts_under
from clusterkit import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.node]

JOB = """
apiVersion: batch/v1
kind: Job
metadata: {{name: hello, namespace: default}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      containers:
        - name: hello
          image: {image}
          imagePullPolicy: Never
          args: [watch, -exit-after, 2s, /etc/hostname]
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


def test_two_checkouts_run_real_nodes_side_by_side_and_dev_down_leaves_nothing(node_cluster, tmp_path: Path) -> None:
    # node_cluster: the host can run a node (else skipped), and the binaries are built.
    assets = tmp_path / "assets"
    assets.mkdir()
    for name, path in {**ensure_binaries(), **ensure_node_binaries()}.items():
        (assets / name).symlink_to(path)
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(assets), "AGENTCRED_CACHE": str(tmp_path / "cache")}
    env["PYTHONPATH"] = str(REPO / "operator")
    env.pop("KUBECONFIG", None)

    def agentcred(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agentcred", *args], capture_output=True, text=True, env=env, timeout=300
        )

    states = {}
    try:
        for name in ("alpha", "beta"):
            up = agentcred("dev", "up", "--name", name)
            assert up.returncode == 0, up.stderr
            assert "building" not in up.stderr
            assert "kubelet registered, Node Ready" in up.stderr and "a real node" in up.stderr
            states[name] = json.loads((tmp_path / "cache" / "dev" / name / "state.json").read_text())
        alpha, beta = (states[name]["node"] for name in ("alpha", "beta"))
        for key in ("node_id", "cgroup_root", "run_link", "folder"):
            assert alpha[key] != beta[key], key
        assert alpha["network"]["bridge"] != beta["network"]["bridge"]
        assert alpha["network"]["subnet"] != beta["network"]["subnet"]
        for state in states.values():
            kubectl = [str(assets / "kubectl"), "--kubeconfig", state["kubeconfig"]]
            job = JOB.format(image=state["node"]["images"]["probe"])
            applied = subprocess.run([*kubectl, "apply", "-f", "-"], input=job, capture_output=True, text=True)
            assert applied.returncode == 0, applied.stderr
        for name, state in states.items():
            kubectl = [str(assets / "kubectl"), "--kubeconfig", state["kubeconfig"]]
            waited = subprocess.run(
                [*kubectl, "wait", "--for=condition=Complete", "job/hello", "--timeout=180s"],
                capture_output=True,
                text=True,
            )
            assert waited.returncode == 0, f"{name}: {waited.stderr}"
            logs = subprocess.run([*kubectl, "logs", "job/hello"], capture_output=True, text=True)
            assert '"path":"/etc/hostname"' in logs.stdout, logs.stdout + logs.stderr
    finally:
        downs = {name: agentcred("dev", "down", "--name", name) for name in states}
    for down in downs.values():
        assert down.returncode == 0, down.stderr
        assert "every mount, cgroup and bridge of its node removed" in down.stderr
    for state in states.values():
        node = state["node"]
        assert not any(_alive(pid) for pid in [*state["pids"].values(), *node["pids"].values()])
        assert not _mounts_under(node["folder"]), "a mount outlived `dev down`"
        assert not _cgroup_folders(node["cgroup_root"]), "a cgroup outlived `dev down`"
        assert not Path(node["run_link"]).exists() and not Path(node["folder"]).exists()
        bridge = subprocess.run(["ip", "link", "show", node["network"]["bridge"]], capture_output=True)
        assert bridge.returncode != 0, "the bridge outlived `dev down`"
        # What the kubelet wrote to its fixed folder for their containers went too (the folder
        # itself stays while node_cluster's node runs).
        if CONTAINER_LOG_LINKS.is_dir():
            links = [os.readlink(entry) for entry in CONTAINER_LOG_LINKS.iterdir() if entry.is_symlink()]
            assert not [link for link in links if link.startswith(node["folder"])]
