"""Metrics, health and the inventory, on the real control plane."""

import csv
import io
import json
import subprocess
import sys

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agentcred.client.inventory import metadata_list
from agents import (
    create_credential,
    create_job,
    create_pod,
    job_pod,
    read_secret,
    running_pod,
    secret_gone,
    secret_name_of,
    service_account,
    shared_secret,
    start_agent,
    value_gone,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from samples import EXCEPTION, STATIC_SOURCE, credential


def _value(samples: dict, name: str, **labels_: str) -> float:
    return samples.get((name, tuple(sorted(labels_.items()))), 0.0)


def test_health_endpoints(operator: OperatorProcess) -> None:
    assert operator.health("/healthz") == (200, "ok\n")
    assert operator.health("/readyz") == (200, "ready\n")


def test_metrics_follow_issue_renew_revoke_and_deny(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    before = operator.metrics()
    service_account(cluster, namespace)
    create_credential(
        cluster, namespace, name="deployer", category="deployment", ttl="3s", renewBefore="2s", maxLifetime="1h"
    )
    create_job(cluster, namespace, "release", "deployer")
    pod = job_pod(cluster, namespace, "release")
    with pytest.raises(ApiException):
        create_pod(cluster, namespace, "refused", "deployer", sa="default")

    def renewed() -> bool:
        return _value(operator.metrics(), "agentcred_renewed_total", category="deployment") > _value(
            before, "agentcred_renewed_total", category="deployment"
        )

    wait_for(renewed, timeout=15, what="a renewal counted")
    during = operator.metrics()
    assert (
        _value(during, "agentcred_issued_total", category="deployment")
        == _value(before, "agentcred_issued_total", category="deployment") + 1
    )
    # Gauges are sampled each status interval, counters move with each action.
    wait_for(
        lambda: _value(operator.metrics(), "agentcred_active_projections", category="deployment") >= 1,
        what="the active-projections gauge",
    )
    # The wrong ServiceAccount for an existing credential: its category is known, and counted.
    assert (
        _value(during, "agentcred_denied_total", category="deployment", reason="AdmissionRefused")
        == _value(before, "agentcred_denied_total", category="deployment", reason="AdmissionRefused") + 1
    )
    for histogram in (
        "agentcred_webhook_duration_seconds",
        "agentcred_projection_latency_seconds",
        "agentcred_renewal_lateness_seconds",
    ):
        assert _value(during, f"{histogram}_count") > _value(before, f"{histogram}_count"), histogram

    kubelet.succeed(namespace, pod["metadata"]["name"])
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="revoked")
    wait_for(
        lambda: (
            _value(operator.metrics(), "agentcred_revoked_total", category="deployment", reason="task-succeeded")
            > _value(before, "agentcred_revoked_total", category="deployment", reason="task-succeeded")
        ),
        what="revocation counted",
    )
    after = operator.metrics()
    assert _value(after, "agentcred_revocation_latency_seconds_count") > _value(
        before, "agentcred_revocation_latency_seconds_count"
    )


def test_metric_labels_are_bounded_and_carry_no_names_or_values(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace, "agent-with-a-distinctive-name")
    token = read_secret(cluster, namespace, secret_name_of(pod))["data"][labels.value_key("research-llm")]
    text = operator.health("/metrics")[1]
    assert "agent-with-a-distinctive-name" not in text and namespace not in text and token not in text
    # each from a fixed set (structure: what agentcred_kept_entries counts; caller: whom a TokenReview served)
    allowed = {"category", "reason", "operation", "status", "outcome", "le", "structure", "caller"}
    samples = operator.metrics()
    for name, label_pairs in samples:
        assert name.startswith(("agentcred_", "python_", "process_")) or name.startswith("agentcred"), name
        keys = {k for k, _ in label_pairs}
        assert keys <= allowed, (name, keys)
        category = dict(label_pairs).get("category")
        assert category is None or category in (*model.CATEGORIES, "unknown")
    assert len(samples) < 600, "the number of series grows with the workload"


def test_inventory_reports_every_finding_in_every_format(
    cluster: Cluster, own_operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "v")
    create_credential(cluster, namespace, name="llm", category="model")
    create_credential(cluster, namespace, name="mcp", category="tool", owner="platform tools team")
    create_credential(
        cluster, namespace, name="vectors", category="retrieval", source=STATIC_SOURCE, exception=EXCEPTION
    )
    create_credential(
        cluster,
        namespace,
        name="deployer",
        category="deployment",
        review={"cadence": "30d", "lastReviewed": "2020-01-01", "escalation": "secops@example.com"},
    )
    cluster.custom.create_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        credential(
            name="legacy",
            category="retrieval",
            source=STATIC_SOURCE,
            exception={**EXCEPTION, "expires": "2021-06-30"},
            projection={"mountPath": "/var/run/agentcred/legacy"},
        ),
    )
    create_pod(cluster, namespace, "agent", "llm,vectors")
    wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")

    # An orphan appears while the operator is down (a Secret whose pod never existed).
    own_operator.stop()
    orphan = {
        "metadata": {
            "name": "agentcred-0000000000000000",
            "labels": {
                labels.MANAGED_LABEL: "true",
                labels.BINDING_LABEL: "0000000000000000",
                labels.POD_UID_LABEL: "gone",
                labels.credential_label("llm"): "model",
            },
        },
        "stringData": {"llm.token": "x"},
    }
    cluster.core.create_namespaced_secret(namespace, orphan)
    try:

        def inventory(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "agentcred", "inventory", *args],
                capture_output=True,
                text=True,
                env=cluster.env(),
                timeout=60,
            )

        as_json = inventory("-o", "json")
        assert as_json.returncode == 0, as_json.stderr
        document = json.loads(as_json.stdout)
        mine = {c: [e for e in entries if e["namespace"] == namespace] for c, entries in document["categories"].items()}
        assert [e["name"] for e in mine["model"]] == ["llm"] and mine["model"][0]["active"] == 1
        assert [e["name"] for e in mine["tool"]] == ["mcp"]
        assert sorted(e["name"] for e in mine["retrieval"]) == ["legacy", "vectors"]
        assert [e["name"] for e in mine["deployment"]] == ["deployer"]
        assert {e["name"]: e["exceptionApprovedBy"] for e in document["exceptions"] if e["namespace"] == namespace} == {
            "legacy": "ciso@example.com",
            "vectors": "ciso@example.com",
        }
        findings = {(f["kind"], f["name"]) for f in document["findings"] if f["namespace"] == namespace}
        assert findings == {
            ("expired-exception", "legacy"),
            ("overdue-review", "deployer"),
            ("orphan", "agentcred-0000000000000000"),
            ("no-owner-contact", "mcp"),
        }

        # One namespace, as YAML, in one casing; the cluster named by --kubeconfig alone.
        scoped = subprocess.run(
            [sys.executable, "-m", "agentcred", "inventory", "-n", namespace, "-o", "yaml"]
            + ["--kubeconfig", str(cluster.kubeconfig)],
            capture_output=True,
            text=True,
            env={k: v for k, v in cluster.env().items() if k != "KUBECONFIG"},
            timeout=60,
        )
        assert scoped.returncode == 0, scoped.stderr
        narrowed = yaml.safe_load(scoped.stdout)
        entries = [e for found in narrowed["categories"].values() for e in found]
        assert {e["namespace"] for e in entries} == {namespace} and len(entries) == 5
        assert "lastIssued" in entries[0] and not any("_" in key for e in entries for key in e)

        table = inventory()
        assert table.returncode == 0
        for heading in ("== model", "== tool", "== retrieval", "== deployment", "== static exceptions", "== findings"):
            assert heading in table.stdout
        assert "expired-exception" in table.stdout and "agentcred-0000000000000000" in table.stdout

        rows = list(csv.DictReader(io.StringIO(inventory("-o", "csv").stdout)))
        assert {
            (r["kind"], r["name"]) for r in rows if r["record"] == "finding" and r["namespace"] == namespace
        } == findings
        assert {r["name"] for r in rows if r["record"] == "credential" and r["namespace"] == namespace} == {
            "llm",
            "mcp",
            "vectors",
            "deployer",
            "legacy",
        }

        for kinds, expected in [("orphan", 1), ("expired-exception,overdue-review", 1), ("exception-expiring", 0)]:
            result = inventory("-o", "json", "--fail-on", kinds)
            assert result.returncode == (1 if expected else 0), (kinds, result.stderr)
        assert inventory("--fail-on", "nonsense").returncode == 2
        # The inventory reads metadata only: the API server sends no Secret data at all.
        listed = list(
            metadata_list(cluster.core.list_secret_for_all_namespaces, label_selector=f"{labels.MANAGED_LABEL}=true")
        )
        assert listed and all("data" not in item and "stringData" not in item for item in listed)
    finally:
        own_operator.start()
    # Back up, the operator sweeps the orphan it finds.
    wait_for(lambda: secret_gone(cluster, namespace, "agentcred-0000000000000000"), what="orphan swept at start")
    assert not value_gone(cluster, namespace, secret_name_of(running_pod(cluster, namespace, name="agent")), "llm")
