"""Every example in examples/ is accepted by the API server as written (server-side dry run)."""

from pathlib import Path

import pytest
import yaml

from clusterkit import REPO, Cluster, ensure_namespace

pytestmark = pytest.mark.cluster

EXAMPLES = sorted([*(REPO / "examples").glob("*.yaml"), *(REPO / "examples").glob("*/*.yaml")])


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO / "examples")) for p in EXAMPLES])
def test_example_is_valid(cluster: Cluster, path: Path) -> None:
    ensure_namespace(cluster, "agents")
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] != "Namespace"]
    assert documents
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(documents), check=False)
    assert result.returncode == 0, result.stderr
