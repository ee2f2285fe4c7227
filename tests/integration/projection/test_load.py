"""Load held: 1,000 concurrent intent exchanges and a 5,000-pod burst, nothing lost.

The figures (run with -s to see them) go in the issue notes; speed is not asserted here --
python -m bench measures it -- only that every request and every pod is served.
"""

import ssl
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentcred.api import labels
from agents import audit_lines, create_credential, pod_template, service_account
from clusterkit import Cluster, OperatorProcess, wait_for
from oauth import JWT_TYPE, TOKEN_EXCHANGE, bound_token

SCOPE = {"tools": ["*"], "actions": ["read"], "resources": ["repo:acme/*"]}


def _create_pods(cluster: Cluster, namespace: str, count: int, prefix: str) -> float:
    def create(i: int) -> None:
        body = pod_template("research-llm")
        body["metadata"]["name"] = f"{prefix}-{i}"
        cluster.core.create_namespaced_pod(namespace, body, _preload_content=False)

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))
    return time.monotonic() - started


def _managed_count(cluster: Cluster, namespace: str) -> int:
    return len(cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items)


def test_1000_concurrent_exchanges(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    _create_pods(cluster, namespace, 50, "x")
    wait_for(lambda: _managed_count(cluster, namespace) == 50, timeout=120, what="50 pods issued")
    pods = cluster.core.list_namespaced_pod(namespace).items
    tokens = [bound_token(cluster, namespace, cluster.api_client.sanitize_for_serialization(p)) for p in pods]
    context = ssl.create_default_context(cafile=operator.ca_file())

    def exchange(i: int) -> tuple[int, float]:
        body = urllib.parse.urlencode(
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": tokens[i % len(tokens)],
                "subject_token_type": JWT_TYPE,
                "scope": f"tool:tool-{i % 7} action:read resource:repo:acme/r{i}",
            }
        ).encode()
        request = urllib.request.Request(
            f"{operator.api_url}/oauth2/token",
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, context=context, timeout=60) as answer:
                return answer.status, time.monotonic() - started
        except urllib.error.HTTPError as error:
            return error.code, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(exchange, range(1000)))
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in results]
    latencies = sorted(seconds for _, seconds in results)
    print(
        f"\n1000 token exchanges, 100 at a time: {elapsed:.1f} s, {1000 / elapsed:.0f}/s, "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[989] * 1000:.0f} ms"
    )
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    wait_for(lambda: len(audit_lines(operator, "exchange", namespace=namespace)) == 1000, what="1000 audit lines")


@pytest.mark.timeout(3600)
def test_5000_pod_burst_nothing_lost(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    created_in = _create_pods(cluster, namespace, 5000, "b")
    started = time.monotonic()
    wait_for(lambda: _managed_count(cluster, namespace) == 5000, timeout=600, interval=1, what="5000 pods issued")
    issued_after = time.monotonic() - started
    pods = cluster.core.list_namespaced_pod(namespace).items
    assert all(not p.spec.scheduling_gates for p in pods), "a pod is still gated"

    def end(index_pod: tuple) -> None:
        index, pod = index_pod
        if index % 2:
            cluster.core.delete_namespaced_pod(
                pod.metadata.name, namespace, grace_period_seconds=0, _preload_content=False
            )
        else:
            cluster.core.patch_namespaced_pod_status(
                pod.metadata.name, namespace, {"status": {"phase": "Succeeded"}}, _preload_content=False
            )

    ended = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(end, enumerate(pods)))
    wait_for(lambda: _managed_count(cluster, namespace) == 0, timeout=600, interval=1, what="every value revoked")
    revoked_after = time.monotonic() - ended
    print(
        f"\n5000 pods: created in {created_in:.0f} s, all issued {issued_after:.0f} s later; "
        f"ended in a burst, all revoked {revoked_after:.0f} s after it began"
    )

    def counted(action: str) -> int:
        return len({line["podUID"] for line in audit_lines(operator, action, namespace=namespace)})

    wait_for(
        lambda: counted("issue") == 5000 and counted("revoke") == 5000,
        timeout=60,
        what="an issue and a revoke line for each of the 5000 pods",
    )
