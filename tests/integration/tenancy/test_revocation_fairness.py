"""One tenant's burst of ended pods does not put another tenant's revocation at the back of the
line, on the real control plane and operator.

Tenant A has a user who may only create and delete pods in its namespace. It runs a few hundred
agent pods (each given its value) and deletes them at once; tenant B's pod ends just after. As
the operator keeps up with A's deletes (the API server takes them no faster than it revokes)
there is no line at all. When the operator is behind (stalled a moment, as a loaded replica or
a new leader is), A's ended pods form a line, and B's pod was revoked only once every one of
A's had been: the ended line was one queue for every tenant. Each line is now taken a namespace
at a time, in turn.

Figures (run with -s): B's revocation latency alone, right after A's burst, and behind A's line;
only the order is asserted.
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
BURST = 150
PODS_ONLY = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]}]


def _managed(cluster: Cluster, namespace: str) -> int:
    return len(cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items)


def _revoked_at(operator: OperatorProcess) -> dict[str, dt.datetime]:
    """When each pod's first revoke line was written, by pod UID."""
    found: dict[str, dt.datetime] = {}
    for line in audit_lines(operator, "revoke"):
        found.setdefault(line["podUID"], dt.datetime.fromisoformat(line["ts"].replace("Z", "+00:00")))
    return found


def _end(kubelet: object, namespace: str, pod: dict) -> dt.datetime:
    """End the pod's task (the kubelet writes Succeeded); when."""
    ended = dt.datetime.now(dt.timezone.utc)
    kubelet.succeed(namespace, pod["metadata"]["name"])  # type: ignore[attr-defined]
    return ended


def _gone(cluster: Cluster, namespace: str, pod: dict) -> float:
    """Seconds until the pod's Secret is gone."""
    name, started = secret_name_of(pod), time.monotonic()
    wait_for(lambda: read_secret(cluster, namespace, name) is None, timeout=120, interval=0.02, what="B's value gone")
    return time.monotonic() - started


@pytest.mark.timeout(900)
def test_a_tenants_burst_of_deletes_does_not_hold_back_anothers_revocation(
    cluster: Cluster, own_operator: OperatorProcess, kubelet: object, namespace: str, tmp_path: Path
) -> None:
    operator, flooder = own_operator, namespace
    victim = cluster.create_namespace("victim")
    try:
        for tenant in (flooder, victim):
            service_account(cluster, tenant)
            create_credential(cluster, tenant, scope=SCOPE)
        pods_only = client.CoreV1Api(narrow_user(cluster, flooder, "pods-only", PODS_ONLY, tmp_path))
        calm, live, behind = (start_agent(cluster, victim, name) for name in ("calm", "live", "behind"))

        def create(index: int) -> None:
            body = pod_template("research-llm")
            body["metadata"]["name"] = f"flood-{index}"
            pods_only.create_namespaced_pod(flooder, body, _preload_content=False)

        def delete(index: int) -> None:
            pods_only.delete_namespaced_pod(f"flood-{index}", flooder, grace_period_seconds=0, _preload_content=False)

        def burst(indices: range) -> float:
            started = time.monotonic()
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(delete, indices))
            return time.monotonic() - started

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(2 * BURST)))
        wait_for(lambda: _managed(cluster, flooder) == 2 * BURST, timeout=300, interval=1, what="A's pods issued")
        uids = {p.metadata.name: p.metadata.uid for p in cluster.core.list_namespaced_pod(flooder).items}
        stalled_uids = [uids[f"flood-{i}"] for i in range(BURST, 2 * BURST)]

        _end(kubelet, victim, calm)
        alone = _gone(cluster, victim, calm)
        # A's burst as the operator keeps up with it: A's deletes are sent as fast as the API server takes them.
        sent_live = burst(range(BURST))
        _end(kubelet, victim, live)
        behind_live = _gone(cluster, victim, live)
        # A's burst arriving while the operator is behind (stalled a moment, as a loaded replica or
        # a new leader is): a line of A's ended pods, then B's.
        operator.pause()
        try:
            sent_stalled = burst(range(BURST, 2 * BURST))
            b_ended = _end(kubelet, victim, behind)
            time.sleep(1)
        finally:
            operator.resume()
        behind_stalled = _gone(cluster, victim, behind)
        wait_for(lambda: _managed(cluster, flooder) == 0, timeout=300, interval=0.5, what="A's values revoked")
        wanted = [*stalled_uids, behind["metadata"]["uid"]]
        revoked = wait_for(
            lambda: (found := _revoked_at(operator)) and all(u in found for u in wanted) and found,
            timeout=60,
            what="a revoke line per pod",
        )
        b_revoked = revoked[behind["metadata"]["uid"]]
        backlog = sorted(revoked[uid] for uid in stalled_uids)
        after_b = sum(1 for r in backlog if r > b_revoked)
        print(
            f"\nB's revocation (Succeeded -> Secret gone) alone: {alone * 1000:.0f} ms; right after A's {BURST} "
            f"deletes (sent in {sent_live:.1f} s, the operator keeping up): {behind_live * 1000:.0f} ms; behind "
            f"A's {BURST} deletes (sent in {sent_stalled:.1f} s) lined up while the operator was stalled: "
            f"{behind_stalled * 1000:.0f} ms after it resumed, A's line drained in "
            f"{(backlog[-1] - backlog[0]).total_seconds() * 1000:.0f} ms, {after_b} of A's revoked after B's"
        )
        assert backlog[0] > b_ended, "A's pods were revoked before B's ended: no line, the test proved nothing"
        # Workers take A's pods as their events are read, before B's is: B is not first, but not last either.
        assert after_b >= BURST // 10, f"B's pod waited behind {BURST - after_b} of A's {BURST} ended pods"
    finally:
        cluster.delete_namespace(victim)
