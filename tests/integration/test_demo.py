"""The README's first command works: the demo tells the whole story and cleans up after itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import REPO

pytestmark = pytest.mark.cluster


def test_demo_runs_end_to_end(cluster, tmp_path: Path) -> None:  # the fixture ensures the binaries exist
    if not cluster.local:
        pytest.skip("the demo starts its own local control plane")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}  # everything the demo and its operator create goes here
    result = subprocess.run(
        [sys.executable, "-m", "agentcred", "demo"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
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
    assert list(scratch.iterdir()) == [], "the demo left files behind"
