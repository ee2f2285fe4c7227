"""One tenant's burst of ended pods does not hold back another tenant's revocation, on the real
control plane and operator.

Tenant A has a user who may only create and delete pods in its namespace. It runs a few hundred
agent pods (each given its value), then deletes them all at once; tenant B's pod ends just
after. The operator handles ended pods first, but in one line: B's pod was revoked only once
every one of A's had been. Each line is now taken a namespace at a time.

Figures (run with -s): B's revocation latency alone and behind A's burst, and when A's backlog
was drained; only their order is asserted.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client

from agentcred.api import labels
from agents import (
    audit_lines,
    create_credential,
    pod_template,
    read_secret,
    secret_name_of,
    service_account,
    start_agent,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from identities import narrow_user

SCOPE = {"tools": ["*"], "actions": ["read"], "resources": ["repo:acme/*"]}
BURST = 300
PODS_ONLY = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "deletecollection"]}]


def _managed(cluster: Cluster, namespace: str) -> int:
    return len(cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items)


def _revoked_at(operator: OperatorProcess, uid: str) -> dt.datetime | None:
    lines = audit_lines(operator, "revoke", podUID=uid)
    return dt.datetime.fromisoformat(lines[0]["ts"].replace("Z", "+00:00")) if lines else None


def _end(cluster: Cluster, kubelet: object, namespace: str, pod: dict) -> tuple[dt.datetime, float]:
    """End the pod's task: when, and the seconds until its Secret was gone."""
    name = secret_name_of(pod)
    ended, started = dt.datetime.now(dt.timezone.utc), time.monotonic()
    kubelet.succeed(namespace, pod["metadata"]["name"])  # type: ignore[attr-defined]
    wait_for(lambda: read_secret(cluster, namespace, name) is None, timeout=120, interval=0.02, what="B's value gone")
    return ended, time.monotonic() - started


@pytest.mark.timeout(900)
def test_a_tenants_burst_of_deletes_does_not_hold_back_anothers_revocation(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str, tmp_path: Path
) -> None:
    flooder = namespace
    victim = cluster.create_namespace("victim")
    try:
        for tenant in (flooder, victim):
            service_account(cluster, tenant)
            create_credential(cluster, tenant, scope=SCOPE)
        pods_only = client.CoreV1Api(narrow_user(cluster, flooder, "pods-only", PODS_ONLY, tmp_path))
        calm, flooded = start_agent(cluster, victim, "calm"), start_agent(cluster, victim, "flooded")

        def create(index: int) -> None:
            body = pod_template("research-llm")
            body["metadata"]["name"] = f"flood-{index}"
            pods_only.create_namespaced_pod(flooder, body, _preload_content=False)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(BURST)))
        wait_for(lambda: _managed(cluster, flooder) == BURST, timeout=300, interval=1, what=f"{BURST} pods issued")
        flood_uids = [p.metadata.uid for p in cluster.core.list_namespaced_pod(flooder).items]

        _, alone = _end(cluster, kubelet, victim, calm)
        # The burst: every one of A's pods deleted in one request, then B's pod ends.
        deleting = time.monotonic()
        pods_only.delete_collection_namespaced_pod(flooder, grace_period_seconds=0, _preload_content=False)
        deleted_in = time.monotonic() - deleting
        b_ended, behind = _end(cluster, kubelet, victim, flooded)
        wait_for(lambda: _managed(cluster, flooder) == 0, timeout=300, interval=0.5, what="A's values revoked")
        wait_for(
            lambda: all(_revoked_at(operator, uid) for uid in flood_uids), timeout=60, what="a revoke line per pod"
        )
        flooded_revoked = _revoked_at(operator, flooded["metadata"]["uid"])
        flood_revoked = sorted(r for uid in flood_uids if (r := _revoked_at(operator, uid)) is not None)
        assert flooded_revoked is not None
        backlog = [r for r in flood_revoked if r > b_ended]  # A's still to revoke when B's pod ended
        after_b = sum(1 for r in backlog if r > flooded_revoked)
        drained = (flood_revoked[-1] - b_ended).total_seconds()
        print(
            f"\nB's revocation alone: {alone * 1000:.0f} ms; behind A's burst of {BURST} deletes "
            f"(deletecollection {deleted_in:.1f} s): {behind * 1000:.0f} ms, with {len(backlog)} of A's pods "
            f"still to revoke when B's ended, drained {drained:.1f} s after it; {after_b} of them revoked after B's"
        )
        assert backlog, "A's burst was revoked before B's pod ended: no backlog, the test proved nothing"
        assert after_b > 0, (
            f"B's pod waited behind all {len(backlog)} of A's pods still in line (alone {alone:.2f} s, "
            f"behind the burst {behind:.2f} s)"
        )
    finally:
        cluster.delete_namespace(victim)
