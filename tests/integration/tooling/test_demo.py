"""The README's first command works: the demo tells the whole story on a real node (the agent
runs as a container and prints the fingerprint of what it read) and cleans up after itself,
in plain text when piped; with --keep it leaves its cluster and node up for `dev down` to stop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import REPO


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _agentcred(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentcred", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.node
def test_demo_runs_end_to_end(cluster, tmp_path: Path) -> None:  # the fixture ensures the binaries exist
    if not cluster.local:
        pytest.skip("the demo starts its own local control plane")
    _needs_a_node()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}  # everything the demo and its operator create goes here
    result = _agentcred(env, "demo")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in (
        "local control plane up",
        "held by a scheduling gate",
        "Job research-task Complete",
        '"action": "issue"',
        '"action": "revoke"',
        '"reason": "task-succeeded"',
        "done: stopping",
    ):
        assert step in out, step
    assert 'sub        "system:serviceaccount:agents:research-agent"' in out
    # The agent ran as a container on the real node and read exactly the Secret's value.
    assert "then ran on node" in out and "agent: done, exit 0" in out
    read = out.split("agent: read /var/run/agentcred/research-llm/token (mode 0444, ")[1].split("\n")[0]
    fingerprint = read.split("sha256 fingerprint ")[1]
    assert f"the Secret's value had sha256 fingerprint {fingerprint}: the agent read exactly that" in out
    assert "\033[" not in out, "escape codes in piped output"
    assert list(scratch.iterdir()) == [], "the demo left files behind"


def _needs_a_node() -> None:
    from agentcred.devcluster.node import host_problems

    if host_problems():
        pytest.skip("this host cannot run a real node: " + "; ".join(host_problems()))


def _assets(cluster, tmp_path: Path) -> Path:
    """KUBEBUILDER_ASSETS with every binary already built: nothing is built again."""
    from agentcred.devcluster.binaries import ensure_node_binaries

    assets = tmp_path / "assets"
    assets.mkdir()
    for name, path in {**cluster.binaries, **ensure_node_binaries()}.items():
        (assets / name).symlink_to(path)
    return assets


@pytest.mark.node
def test_demo_keep_leaves_its_cluster_for_dev_down(cluster, tmp_path: Path) -> None:
    if not cluster.local:
        pytest.skip("the demo starts its own local control plane")
    _needs_a_node()
    env = {**os.environ, "AGENTCRED_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    env.pop("KUBECONFIG", None)
    env["KUBEBUILDER_ASSETS"] = str(_assets(cluster, tmp_path))
    result = _agentcred(env, "demo", "--keep")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    kubeconfig = result.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
    state = json.loads((tmp_path / "cache" / "dev" / "demo" / "state.json").read_text())
    try:
        assert "agentcred dev down --name demo" in result.stdout and kubeconfig == state["kubeconfig"]
        assert {"operator", "kube-apiserver"} <= set(state["pids"])
        assert {"kubelet", "containerd", "kube-scheduler"} <= set(state["node"]["pids"])
        listed = subprocess.run(
            [str(cluster.binaries["kubectl"]), "--kubeconfig", kubeconfig, "get", "acred", "-n", "agents"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and "research-llm" in listed.stdout, listed.stderr
    finally:
        down = _agentcred(env, "dev", "down", "--name", "demo")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in [*state["pids"].values(), *state["node"]["pids"].values()])
    assert not Path(state["node"]["run_link"]).exists()


def test_demo_mcp_prints_the_transcript_the_example_readme_shows(cluster, tmp_path: Path) -> None:
    """examples/mcp in one command: the README there shows what the agent prints."""
    if not cluster.local:
        pytest.skip("the demo starts its own local control plane")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "NO_COLOR": "1"}
    readme = (REPO / "examples" / "mcp" / "README.md").read_text()
    assert "agentcred demo --mcp" in readme
    transcript = readme.split("The agent prints:\n\n```\n", 1)[1].split("```", 1)[0].strip().splitlines()
    result = _agentcred(env, "demo", "--mcp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = result.stdout.splitlines()
    assert all(line in printed for line in transcript), result.stdout[-3000:]
    assert '"action": "deny", "reason": "invalid_scope"' in result.stdout
    assert list(scratch.iterdir()) == [], "the demo left files behind"
