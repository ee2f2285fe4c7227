"""The README's `kubectl auth can-i` table for CSI delivery, asked of the real API server: the
chart's RBAC applied (with `secretDelivery` true and false), then `kubectl auth can-i` as the
operator's ServiceAccount and as the node plugin's, row by row."""

from __future__ import annotations

import re

import pytest
import yaml
from test_chart import render

from clusterkit import REPO, Cluster

pytestmark = pytest.mark.cluster
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}


def readme_rows() -> list[tuple[str, str, str]]:
    section = (REPO / "README.md").read_text().split("## CSI delivery", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((re.sub(r"\s*\(.*\)$", "", cells[0]).strip("`"), cells[1], cells[2]))
    return rows


def can_i(cluster: Cluster, who: str, question: str, namespace_map: dict[str, str]) -> str:
    for name, actual in namespace_map.items():
        question = question.replace(name, actual)
    found = cluster.kubectl("auth", "can-i", *question.split(), f"--as={who}", check=False)
    return found.stdout.strip()


@pytest.mark.parametrize("secret_delivery", [True, False])
def test_the_readme_can_i_table_is_what_the_api_server_answers(cluster: Cluster, secret_delivery: bool) -> None:
    release = f"canitest-{str(secret_delivery).lower()}"
    operator_ns = cluster.create_namespace("canop")
    agents = cluster.create_namespace("canag")
    try:
        documents = render(cluster, f"secretDelivery={str(secret_delivery).lower()}", release=release)
        applied = [d for d in documents if d["kind"] in RBAC_KINDS]
        text = yaml.safe_dump_all(applied).replace("namespace: agentcred-chart", f"namespace: {operator_ns}")
        cluster.kubectl("apply", "-n", operator_ns, "-f", "-", input=text)
        fullname = f"{release}-agentcred"
        operator = f"system:serviceaccount:{operator_ns}:{fullname}"
        plugin = f"system:serviceaccount:{operator_ns}:{fullname}-csi-node"
        names = {"agentcred-signing-keys": f"{fullname}-signing-keys", "-n agentcred": f"-n {operator_ns}"}
        rows = readme_rows()
        assert rows, "no can-i table in the README's CSI delivery section"
        for question, when_true, when_false in rows:
            spaced = question.replace("-n agents", f"-n {agents}")
            asked = can_i(cluster, operator, spaced, names)
            assert asked == (when_true if secret_delivery else when_false), f"{question}: {asked}"
            assert can_i(cluster, plugin, spaced, names) == "no", f"the node plugin may {question}"
        for anything in ("get pods", "list secrets", "create tokenreviews", "get configmaps", "create pods"):
            assert can_i(cluster, plugin, f"{anything} -A", {}) == "no", f"the node plugin may {anything}"
    finally:
        for kind in ("clusterrole", "clusterrolebinding"):
            cluster.kubectl("delete", kind, "-l", f"app.kubernetes.io/instance={release}", check=False)
        cluster.delete_namespace(operator_ns)
        cluster.delete_namespace(agents)
