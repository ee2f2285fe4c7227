"""The shipped Grafana dashboard only queries metrics the operator exports."""

import json
import re

from agentcred.platform import metrics
from clusterkit import REPO

DASHBOARD = REPO / "charts" / "agentcred" / "dashboards" / "agentcred.json"


def test_every_query_uses_an_exported_metric() -> None:
    exported = {m.name for m in metrics.REGISTRY.collect()}
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"agentcred_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            for name in names:
                base = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert name in exported or base in exported, (panel["title"], name)
