"""A burst of pods, measured the same way for agentcred and for the floor.

`PodBurst`: pods created by CLIENT_THREADS threads, one watch on the namespace's Secrets and one on its pods, every time
taken on this side of the API (call returned -> watch event read). Then half of the pods are
marked Succeeded and half deleted, and each Secret's deletion is timed from that trigger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .harness import Follower, Lean, summary_ms, wait_count

SUCCEEDED = {
    "status": {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "agent",
                "image": "example.com/agent:1",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }
        ],
    }
}


def pods_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def secrets_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/secrets" + (f"/{name}" if name else "")


def gate_removed(gate: str) -> Callable[[dict[str, Any]], bool]:
    def holds(pod: dict[str, Any]) -> bool:
        return not any(g.get("name") == gate for g in (pod.get("spec") or {}).get("schedulingGates") or [])

    return holds


class PodBurst:
    """One burst of `count` pods in `namespace`, measured on the client side."""

    def __init__(
        self,
        lean: Lean,
        namespace: str,
        count: int,
        *,
        secret_selector: str,
        secret_key: Callable[[dict[str, Any]], str | None],
        gate: str,
    ) -> None:
        self.lean = lean
        self.namespace = namespace
        self.count = count
        self.secret_selector = secret_selector
        self.secret_key = secret_key
        self.gate = gate
        self.created: dict[str, float] = {}
        self.triggered: dict[str, float] = {}

    def stamp(self, pod: str) -> None:
        self.created[pod] = time.monotonic()

    def measure(
        self,
        create: Callable[[int], None],
        *,
        after_trigger: Callable[[str], None] | None = None,
        probe: Callable[[], dict[str, float]] | None = None,
        stall: float = 120.0,
    ) -> dict[str, Any]:
        """`probe`, if given, reads the controller's usage (RSS, CPU) around the burst."""
        count = self.count
        secrets_follower = Follower(
            self.lean, secrets_path(self.namespace), self.secret_key, selector=self.secret_selector
        )
        pods_follower = Follower(
            self.lean,
            pods_path(self.namespace),
            lambda o: o["metadata"]["name"],
            marks={"ungated": gate_removed(self.gate)},
        )
        with secrets_follower as written, pods_follower as pods:
            time.sleep(0.5)
            before = probe() if probe else None
            started = time.monotonic()
            self.lean.run_all(create, range(count))
            create_done = time.monotonic()
            wait_count(lambda: len(written.seen), count, f"{self.namespace}: Secrets written", stall=stall)
            wait_count(lambda: len(pods.marked["ungated"]), count, f"{self.namespace}: pods ungated", stall=stall)
            finished_written = max(written.seen.values())
            finished_ungated = max(pods.marked["ungated"].values())
            at_n = probe() if probe else None
            result: dict[str, Any] = {
                "pods": count,
                "create_seconds": create_done - started,
                "pods_created_per_second": count / (create_done - started),
                "written_ms": summary_ms(written.seen[p] - self.created[p] for p in self.created if p in written.seen),
                "ungated_ms": summary_ms(
                    pods.marked["ungated"][p] - self.created[p] for p in self.created if p in pods.marked["ungated"]
                ),
                "written_per_second": count / (finished_written - started),
                "ungated_per_second": count / (finished_ungated - started),
            }

            # Revocation: half the pods end (the Job path), half are deleted, in one burst.
            names = sorted(self.created)
            half = len(names) // 2

            def succeed(pod: str) -> None:
                self.lean.call(
                    "PATCH",
                    pods_path(self.namespace, pod) + "/status",
                    SUCCEEDED,
                    content_type="application/strategic-merge-patch+json",
                )
                self.triggered[pod] = time.monotonic()
                if after_trigger:
                    after_trigger(pod)

            def delete(pod: str) -> None:
                self.lean.call("DELETE", pods_path(self.namespace, pod), {"gracePeriodSeconds": 0})
                self.triggered[pod] = time.monotonic()
                if after_trigger:
                    after_trigger(pod)

            revoke_started = time.monotonic()
            self.lean.run_all(succeed, names[:half])
            self.lean.run_all(delete, names[half:])
            wait_count(lambda: len(written.deleted), count, f"{self.namespace}: Secrets deleted", stall=stall)
            revoke_finished = max(written.deleted.values())
            for kind, chosen in (("succeeded", names[:half]), ("deleted", names[half:])):
                result[f"revoked_{kind}_ms"] = summary_ms(
                    written.deleted[p] - self.triggered[p] for p in chosen if p in written.deleted
                )
            result["revoked_per_second"] = count / (revoke_finished - revoke_started)
            if probe and before and at_n:
                after = probe()
                result["rss_mb_at_n"] = at_n["rss_mb"]
                result["peak_rss_mb"] = after["peak_rss_mb"]
                result["cpu_seconds_issuing"] = at_n["cpu_seconds"] - before["cpu_seconds"]
                result["cpu_seconds"] = after["cpu_seconds"] - before["cpu_seconds"]
                result["cpu_seconds_per_1000"] = result["cpu_seconds"] * 1000 / count
        return result
