"""`csi`: CSI delivery beside Secret delivery on a real node (kubelet, containerd, runc,
agentcred's CSI node plugin): what a container waits for, and what the plugin costs. 50 pods
per delivery: about 3 minutes on 2 cores with nothing else running, 8 under other work.

Quick: 5 pods per delivery, under a minute once the node's binaries and image are built
(`make test`'s real-node tier builds them before CI's `make bench-quick`; the control plane,
the node and the operator are up in ~15 s), so unlike `kubelet-delay` (minutes per
configuration whatever the size) it is in the quick run too. A quick run on a host that
cannot run a real node records why and measures nothing, as the real-node tests skip there;
the full run fails the stage.

A local control plane and a real node of its own (syncFrequency 10s, as `agentcred dev up`
runs it), the operator; credentials with ttl 1h (nothing renews by itself): `secret-cred`
(delivery secret), `csi-a` and `csi-b` (delivery csi). Pods are created one after another, each
running the probe, which looks at its mounted files every 100 ms and prints when a value
appears, changes or goes (the container's clock is the host's).

- pod created -> value readable in the container: N pods asking for `secret-cred`, then N pods
  asking for `csi-a` and `csi-b` (2 volumes each: 2N live volumes). Secret delivery is CSI
  delivery's floor: the two are `bench.hot_paths` points of one path (one caller: one pod at a
  time; per second, pods started one after another);
- renewal -> readable (csi): `agentcred renew csi-a`; from the audit line written as the operator
  hands each new value over, to the container seeing it;
- revoke -> gone (csi): `agentcred revoke csi-b`; from the request to the file gone in the container;
- the plugin's resident memory with no volume, and with 2N live volumes.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from agentcred.api.times import parse_time
from agentcred.client.requests import request_renew, request_revoke
from agentcred.devcluster.csi_plugin import link_operator
from agentcred.devcluster.local_operator import LocalOperator
from agentcred.devcluster.node import NodeUnavailable, host_problems
from agentcred.devcluster.polling import wait_for

from ..context import Context
from ..harness import percentile, summary_ms
from ..hot_paths import AGENTCRED, FLOOR, point
from ..real_node import make_namespace, mount, probe_lines, probe_pod, real_node, token

PHASE = "own"  # a control plane and a real node of its own

NAMESPACE = "bench-csi"
PODS, QUICK_PODS = 50, 5
CREDENTIALS = {"secret-cred": "secret", "csi-a": "csi", "csi-b": "csi"}
DELIVERY = "pod created → value readable (floor: Secret delivery)"


def run(ctx: Context) -> dict[str, Any]:
    problems = host_problems()
    if problems:
        said = "this host cannot run a real node: " + "; ".join(problems)
        if not ctx.options.quick:
            raise NodeUnavailable(said)
        print(f"  csi: skipped, {said}", flush=True)
        return {"skipped": said}
    result = measure(QUICK_PODS if ctx.options.quick else PODS)
    result["paths"] = [
        point(DELIVERY, FLOOR, result.pop("secret_pods"), delivery="secret"),
        point(DELIVERY, AGENTCRED, result.pop("csi_pods"), delivery="csi"),
    ]
    return result


def seen(core: client.CoreV1Api, pod: str) -> list[dict[str, Any]]:
    """What the pod's probe printed: one event per value that appeared, changed or went."""
    try:
        return probe_lines(core, NAMESPACE, pod)
    except client.exceptions.ApiException:  # not started yet
        return []


def first_seen(core: client.CoreV1Api, pod: str, path: str) -> float | None:
    return next((e["t"] for e in seen(core, pod) if e["path"] == path and e.get("sha256")), None)


def gone_at(core: client.CoreV1Api, pod: str, path: str) -> float | None:
    return next((e["t"] for e in seen(core, pod) if e["path"] == path and e.get("gone")), None)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def figures(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def start_pods(core: client.CoreV1Api, image: str, prefix: str, credentials: list[str], count: int) -> dict[str, Any]:
    """Pods created one after another, each waited for until its first value is readable: a
    hot-path point (one caller), with the delays in seconds beside it."""
    delays: list[float] = []
    began = time.monotonic()
    for index in range(count):
        name = f"{prefix}-{index}"
        created = time.time()
        core.create_namespaced_pod(
            NAMESPACE, probe_pod(name, image, credentials, ["-every", "100ms", *map(mount, credentials)])
        )
        readable = functools.partial(first_seen, core, name, token(credentials[0]))
        at: float = wait_for(readable, timeout=180, what=f"{name} reads its value")
        delays.append(at - created)
    elapsed = time.monotonic() - began
    print(f"  {prefix}: {count} pods, pod created -> readable p50 {percentile(delays, 50):.2f} s, "
          f"p99 {percentile(delays, 99):.2f} s", flush=True)  # fmt: skip
    return {
        "callers": 1,
        "per_second": count / elapsed,
        "latency_ms": summary_ms(delays),
        "failed": {},
        "seconds": figures(delays),
    }


def measure(pods: int) -> dict[str, Any]:
    began = time.monotonic()
    with real_node("agentcred-bench-csi-") as on:
        link_operator(on.api, on.state.name, on.node.csi_operator_dir, on.operator.api_url)
        make_namespace(
            on.api, NAMESPACE, {name: {"mountPath": mount(name), "delivery": d} for name, d in CREDENTIALS.items()}
        )
        core = on.core
        up = time.monotonic() - began
        print(f"  control plane, real node and operator up in {up:.0f} s; {pods} pods per delivery", flush=True)
        image = on.state.images["probe"]
        plugin_pid = on.state.pids["csi-node"]
        idle = rss_kib(plugin_pid)

        secret = start_pods(core, image, "secret", ["secret-cred"], pods)
        for index in range(pods):
            core.delete_namespaced_pod(f"secret-{index}", NAMESPACE, grace_period_seconds=0)
        csi = start_pods(core, image, "csi", ["csi-a", "csi-b"], pods)
        names = [f"csi-{index}" for index in range(pods)]
        time.sleep(2)
        loaded = rss_kib(plugin_pid)
        renewal = renew_to_readable(on.api, core, on.operator, names)
        revoke = revoke_to_gone(on.api, core, names)
        return {
            "pods": pods,
            "node": {"syncFrequency": on.node.sync_frequency},
            "setup_seconds": round(up, 1),
            "secret_pods": secret,
            "csi_pods": csi,
            "created_to_readable_seconds": {"secret": secret["seconds"], "csi": csi["seconds"]},
            "csi_renewal_to_readable_seconds": figures(renewal),
            "csi_revoke_to_gone_seconds": figures(revoke),
            "plugin_rss_kib": {"idle": idle, f"{2 * pods}_volumes": loaded},
        }


def renew_to_readable(
    api: client.ApiClient, core: client.CoreV1Api, operator: LocalOperator, names: list[str]
) -> list[float]:
    """`agentcred renew csi-a`; per pod, the operator's `renew` audit line -> the container
    sees the new value."""
    path = token("csi-a")

    def values(name: str) -> set[str]:
        return {e["sha256"] for e in seen(core, name) if e["path"] == path and e.get("sha256")}

    before = {name: values(name) for name in names}
    request_renew(api, NAMESPACE, "csi-a", timeout=120)
    wait_for(
        lambda: all(values(name) - before[name] for name in names),
        timeout=120,
        interval=1.0,
        what="every container to see its renewed value",
    )
    renewed_at = {
        line["podName"]: parse_time(line["ts"]).timestamp()
        for line in map(json.loads, operator.audit_path.read_text().splitlines())
        if line.get("action") == "renew" and line.get("credential") == "csi-a"
    }
    delays = []
    for name in names:
        fresh = [e["t"] for e in seen(core, name) if e["path"] == path and e.get("sha256") not in (None, *before[name])]
        delays.append(min(fresh) - renewed_at[name])
    return delays


def revoke_to_gone(api: client.ApiClient, core: client.CoreV1Api, names: list[str]) -> list[float]:
    """`agentcred revoke csi-b`; per pod, the request -> the file gone in the container."""
    path = token("csi-b")
    asked = time.time()
    request_revoke(api, NAMESPACE, "csi-b", timeout=120)
    gone: dict[str, float] = {}

    def all_gone() -> bool:
        for name in names:
            at = gone.get(name) or gone_at(core, name, path)
            if at is not None:
                gone[name] = at
        return len(gone) == len(names)

    wait_for(all_gone, timeout=120, interval=1.0, what="every csi-b file gone")
    return [gone[name] - asked for name in names]
