"""`scale`: live projections ramped through the checkpoints (default 1,000 -> 20,000) over 500
AgentCredentials (ttl 2m, renewBefore 40s): RSS and CPU at each step; renewal of every value
watched for a window at one checkpoint (10,000); the operator restarted at others (1,000,
10,000) and timed until ready (every index listed): what a new leader needs after a failover.
The last stage of a run: the control plane goes with it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from agentcred.api import labels

from ..bursts import pods_path, secrets_path
from ..context import Context
from ..harness import Follower, overruns, summary_ms, wait_count
from ..under_test import UnderTest, pod_body, secret_pod

NAMESPACE = "bench-scale"


def run(ctx: Context) -> dict[str, Any]:
    """Ramp live projections through the checkpoints; measure renewal and start-up on the way."""
    options, operator, lean = ctx.options, ctx.operator, ctx.lean
    ttl = options.ttl
    result: dict[str, Any] = {
        "credentials": options.credentials,
        "points": [],
        "startup": [],
        "ttl_seconds": ttl,
        "renew_before_seconds": ttl / 3,
    }
    result["startup"].append({"live": 0, "seconds": operator.start()})
    names = operator.namespace(
        NAMESPACE, credentials=options.credentials, ttl=f"{ttl:.0f}s", renewBefore=f"{ttl / 3:.0f}s", maxLifetime="8h"
    )
    follower = Follower(lean, secrets_path(NAMESPACE), secret_pod, selector=f"{labels.MANAGED_LABEL}=true", writes=True)
    created = 0
    try:
        with follower as written:
            time.sleep(0.5)
            for checkpoint in options.scale:
                before = operator.usage()
                began = time.monotonic()
                lean.run_all(
                    lambda i: lean.call("POST", pods_path(NAMESPACE), pod_body(f"s-{i}", names[i % len(names)])),
                    range(created, checkpoint),
                )
                wait_count(lambda: len(written.seen), checkpoint, f"{NAMESPACE}: {checkpoint} projections", stall=180)
                step, created = checkpoint - created, checkpoint
                at = operator.usage()
                point = {
                    "live": checkpoint,
                    "rss_mb": at["rss_mb"],
                    "peak_rss_mb": at["peak_rss_mb"],
                    "cpu_seconds_step": at["cpu_seconds"] - before["cpu_seconds"],
                    "pods_step": step,
                    "step_seconds": time.monotonic() - began,
                }
                result["points"].append(point)
                print(
                    f"  {checkpoint} live: RSS {at['rss_mb']:.0f} MB (peak {at['peak_rss_mb']:.0f}), "
                    f"{point['cpu_seconds_step']:.1f} CPU-s for {step} pods in {point['step_seconds']:.0f} s",
                    flush=True,
                )
                ctx.results.record("scale", result)
                if checkpoint == options.renewal_at:
                    with operator.profiled(f"renewal-{checkpoint}"):
                        result["renewal"] = renewal(operator, written, options.window, ttl)
                    ctx.results.record("scale", result)
                if checkpoint in options.startup_at:
                    seconds = operator.start(expect_live=checkpoint)
                    fresh = operator.usage()
                    result["startup"].append(
                        {
                            "live": checkpoint,
                            "seconds": seconds,
                            "rss_mb": fresh["rss_mb"],
                            "peak_rss_mb": fresh["peak_rss_mb"],
                        }
                    )
                    print(
                        f"  start-up with {checkpoint} live: {seconds:.1f} s, RSS {fresh['rss_mb']:.0f} MB", flush=True
                    )
                    ctx.results.record("scale", result)
    finally:
        operator.stop()
    return result


def renewal(operator: UnderTest, written: Follower, window: float, ttl: float) -> dict[str, Any]:
    live = len(written.seen) - len(written.deleted)
    print(f"  renewal: {live} values, ttl {ttl:.0f} s, renewBefore {ttl / 3:.0f} s, watching {window:.0f} s ...")
    before = operator.usage()
    mark, wall = time.monotonic(), time.time()
    time.sleep(window)
    after = operator.usage()
    late, overdue = overruns(written.writes, ttl * 2 / 3, since=mark, until=time.monotonic())
    audit = audit_lateness(operator.running.audit_path, NAMESPACE, ttl / 3, wall, wall + window)
    return {
        "values": live,
        "window_seconds": window,
        "ttl_seconds": ttl,
        "lateness_ms": summary_ms(audit),
        "overrun_ms": summary_ms(late + overdue),
        "refreshes": len(late),
        "overdue_at_end": len(overdue),
        "cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
        "rss_mb": after["rss_mb"],
        "peak_rss_mb": after["peak_rss_mb"],
    }


def audit_lateness(audit: Path, namespace: str, renew_before: float, since: float, until: float) -> list[float]:
    """Seconds from each renewal's due time (the previous value's expiry - renewBefore) to
    its audit line, for renewals written between `since` and `until` (wall clock)."""

    def when(text: str) -> float:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    last_expiry: dict[str, float] = {}
    lateness = []
    with open(audit) as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("namespace") != namespace or entry.get("action") not in ("issue", "renew"):
                continue
            pod, at = entry.get("podUID"), when(entry["ts"])
            if entry["action"] == "renew" and pod in last_expiry and since <= at <= until:
                lateness.append(max(0.0, at - (last_expiry[pod] - renew_before)))
            if entry.get("expiresAt"):
                last_expiry[pod] = when(entry["expiresAt"])
    return lateness
