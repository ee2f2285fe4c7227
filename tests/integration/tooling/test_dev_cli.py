"""`agentcred dev up --stand-in/kubeconfig/down` for a person, with binaries from
KUBEBUILDER_ASSETS: one control plane per checkout (or `--name`), the scheduler/kubelet
stand-in running, so a Job applied with kubectl completes; `dev down` returns once every
process has exited. (`dev up` with its default real node: tests/node/test_dev_node.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcred.devcluster.commands import default_name
from agentcred.devcluster.controlplane import free_port
from clusterkit import REPO, Cluster, wait_for

JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: hello, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: hello, image: example.com/hello:1}]
"""


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
    env["PYTHONPATH"] = str(REPO / "operator")  # this checkout's agentcred, from any working directory
    env.pop("KUBECONFIG", None)
    project, other = tmp_path / "project-a", tmp_path / "project-b"
    for checkout in (project, other):
        (checkout / ".git").mkdir(parents=True)
        (checkout / "src").mkdir()

    def agentcred(*args: str, cwd: Path = project) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agentcred", *args], capture_output=True, text=True, env=env, timeout=180, cwd=cwd
        )

    up = agentcred("dev", "up", "--stand-in", "--complete-after", "1", cwd=project / "src")
    assert up.returncode == 0, up.stderr
    assert "building" not in up.stderr  # KUBEBUILDER_ASSETS was used, nothing was built
    # Where the time goes, step by step.
    for step in ("etcd and kube-apiserver until ready", "CRDs established", "scheduler/kubelet stand-in started"):
        assert step in up.stderr, up.stderr
    kubeconfig = agentcred("dev", "kubeconfig").stdout.strip()
    assert up.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
    name = default_name(project)
    state = json.loads((tmp_path / "cache" / "dev" / name / "state.json").read_text())
    assert set(state["pids"]) == {"etcd", "kube-apiserver", "kube-controller-manager", "kubelet"}

    def kubectl(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(cluster.binaries["kubectl"]), "--kubeconfig", kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=120,
            input=input,
        )

    try:
        listed = kubectl("get", "acred", "-A")
        assert listed.returncode == 0 and "No resources found" in listed.stderr + listed.stdout
        # A plain Job runs and completes on the stand-in, as in the demo.
        assert kubectl("apply", "-f", "-", input=JOB).returncode == 0
        waited = kubectl("wait", "--for=condition=Complete", "job/hello", "--timeout=300s")
        assert waited.returncode == 0, waited.stderr
        again = agentcred("dev", "up")
        assert again.returncode == 0 and "already up" in again.stderr
        _quickstart_waits_for_the_operator_then_gets_its_value(up.stderr, kubeconfig, kubectl, env)
        # Another checkout on the same machine sees none of it, and cannot stop it...
        elsewhere_up = agentcred("dev", "kubeconfig", cwd=other)
        assert elsewhere_up.returncode == 1 and f"up: {name} (pick one with --name)" in elsewhere_up.stderr
        elsewhere = agentcred("dev", "down", cwd=other)
        assert elsewhere.returncode == 0 and "no local control plane" in elsewhere.stderr
        assert all(_alive(pid) for pid in state["pids"].values())
        # ...unless it names it.
        assert agentcred("dev", "kubeconfig", "--name", name, cwd=other).stdout.strip() == kubeconfig
    finally:
        down = agentcred("dev", "down")
    assert down.returncode == 0, down.stderr
    assert "every process exited" in down.stderr
    # `down` said so only once they had: nothing to wait for here.
    assert not any(_alive(pid) for pid in state["pids"].values()), "a control plane process outlived `dev down`"
    assert not Path(state["workdir"]).exists()
    assert agentcred("dev", "kubeconfig").returncode == 1


def _quickstart_waits_for_the_operator_then_gets_its_value(said: str, kubeconfig: str, kubectl, env: dict) -> None:
    """README, Running outside a cluster: after `dev up`, the quickstart's Job cannot make its
    pod until an operator runs (the opt-in check says so, in the Job's Events); `dev up` said
    what to start; once it runs, the Job makes the pod and it gets its value."""
    assert "no operator runs yet" in said and "agentcred run --standalone --namespace agentcred" in said
    assert kubectl("apply", "-f", str(REPO / "examples" / "quickstart.yaml")).returncode == 0

    def failed_create() -> str:
        listed = kubectl("get", "events", "-n", "agents", "--field-selector", "reason=FailedCreate", "-o", "json")
        messages = [e["message"] for e in json.loads(listed.stdout or "{}").get("items", [])]
        return next((m for m in messages if "no agentcred webhook admitted this pod" in m), "")

    assert "Start the operator" in wait_for(failed_create, what="the Job's FailedCreate Event")
    webhook, api, health = free_port(), free_port(), free_port()
    log = open(Path(kubeconfig).parent / "operator.log", "wb")
    operator = subprocess.Popen(
        [sys.executable, "-m", "agentcred", "run", "--standalone", "--namespace", "agentcred"]
        + ["--webhook-url", f"https://127.0.0.1:{webhook}", "--webhook-address", "127.0.0.1"]
        + ["--webhook-port", str(webhook), "--api-address", "127.0.0.1", "--api-port", str(api)]
        + ["--health-address", "127.0.0.1", "--health-port", str(health)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "KUBECONFIG": kubeconfig},
    )
    try:

        def issued() -> bool:
            listed = kubectl(
                "get", "events", "-n", "agents", "--field-selector", "reason=CredentialsIssued", "-o", "name"
            )
            return bool(listed.stdout.strip())

        wait_for(issued, timeout=120, what="the Job's pod issued its credential once the operator runs")
        waited = kubectl("wait", "--for=condition=Complete", "job/research-task", "-n", "agents", "--timeout=300s")
        assert waited.returncode == 0, waited.stderr
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()
