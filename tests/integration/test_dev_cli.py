"""`agentcred dev up/kubeconfig/down` for a person, with binaries from KUBEBUILDER_ASSETS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import Cluster

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_dev_up_kubeconfig_down(cluster: Cluster, tmp_path: Path) -> None:
    if not cluster.local:
        pytest.skip("needs the locally built binaries")
    assets = tmp_path / "assets"
    assets.mkdir()
    for name, path in cluster.binaries.items():
        (assets / name).symlink_to(path)
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(assets), "AGENTCRED_CACHE": str(tmp_path / "cache")}
    env.pop("KUBECONFIG", None)

    def agentcred(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agentcred", *args], capture_output=True, text=True, env=env, timeout=180
        )

    up = agentcred("dev", "up")
    assert up.returncode == 0, up.stderr
    assert "building" not in up.stderr  # KUBEBUILDER_ASSETS was used, nothing was built
    kubeconfig = agentcred("dev", "kubeconfig").stdout.strip()
    assert up.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
    state = json.loads((tmp_path / "cache" / "dev" / "state.json").read_text())
    try:
        listed = subprocess.run(
            [str(cluster.binaries["kubectl"]), "--kubeconfig", kubeconfig, "get", "acred", "-A"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and "No resources found" in listed.stderr + listed.stdout
        again = agentcred("dev", "up")
        assert again.returncode == 0 and "already up" in again.stderr
    finally:
        down = agentcred("dev", "down")
    assert down.returncode == 0
    assert not any(_alive(pid) for pid in state["pids"].values()), "a control plane process outlived `dev down`"
    assert not Path(state["workdir"]).exists()
    assert agentcred("dev", "kubeconfig").returncode == 1
