"""`agentcred-N` (and `baseline-V-N`, `busy-agentcred-N`): N opted-in pods created at once.

A freshly started operator per burst (its start-up on an empty cluster is recorded); pod
created -> value written and pod ungated; half the pods marked Succeeded and half deleted ->
Secret gone; the operator's CPU and RSS around it (py-spy with --profile). The namespace is
deleted while the operator still runs, then the operator stops.
"""

from __future__ import annotations

from typing import Any

from agentcred.api import labels

from ..bursts import PodBurst, pods_path
from ..context import Context, clean, measure_and_clean
from ..harness import CLIENT_THREADS
from ..under_test import UnderTest, pod_body, secret_pod


def run(ctx: Context, count: int, *, baseline: str | None = None, label: str = "agentcred") -> dict[str, Any]:
    operator = ctx.baseline(baseline) if baseline else ctx.operator
    namespace = f"bench-{label}-{count}"
    startup = operator.start()

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, namespace, count * 3)
        finally:
            operator.stop()

    figures = measure_and_clean(lambda: measure(operator, namespace, count, f"{label}-{count}"), stop_after_cleaning)
    return {**figures, "operator_startup_seconds": startup, "tree": str(operator.tree or "this checkout")}


def measure(operator: UnderTest, namespace: str, count: int, name: str) -> dict[str, Any]:
    lean = operator.lean
    names = operator.namespace(namespace)
    burst = PodBurst(
        lean,
        namespace,
        count,
        secret_selector=f"{labels.MANAGED_LABEL}=true",
        secret_key=secret_pod,
        gate=labels.SCHEDULING_GATE,
    )

    def create(i: int) -> None:
        lean.call("POST", pods_path(namespace), pod_body(f"p-{i}", names[0]))
        burst.stamp(f"p-{i}")

    before = operator.usage()
    with operator.profiled(name):
        result = burst.measure(create, probe=operator.usage, stall=120)
    result.update(rss_mb_before=before["rss_mb"], client_threads=CLIENT_THREADS)
    return result
