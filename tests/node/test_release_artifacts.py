"""`make dist`: the chart packaged by helm, the operator's image archive (written here, by the
Dockerfile's recipe) and a CycloneDX SBOM of the image's Python environment, which lists
exactly the versions requirements.lock pins."""

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clusterkit import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.node]  # the image is built as root, like the node


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if found:
            pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return pins


def test_make_dist_writes_the_chart_the_image_and_its_sbom(node_cluster, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentcred", "dev", "dist", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    chart = next(tmp_path.glob("agentcred-*.tgz"))
    with tarfile.open(chart) as packaged:
        assert "agentcred/Chart.yaml" in packaged.getnames()
    image = next(tmp_path.glob("agentcred-operator-*.oci.tar"))
    with tarfile.open(image) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["io.containerd.image.name"].startswith("localhost/agentcred/operator:")
    sbom = json.loads(next(tmp_path.glob("agentcred-operator-*.cdx.json")).read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "agentcred"
    installed = {re.sub(r"[-_.]+", "-", c["name"]).lower(): c["version"] for c in sbom["components"]}
    pinned = _pins(REPO / "requirements.lock")
    assert pinned and {name: installed.get(name) for name in pinned} == pinned, "the image differs from the lock"
