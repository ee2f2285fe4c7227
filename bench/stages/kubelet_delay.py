"""`kubelet-delay` (run only when asked: `python -m bench --only kubelet-delay`): how long after
a renewal is written the new value is readable inside the container, on a real node (kubelet,
containerd, runc), with the kubelet's default settings and with the ones `agentcred dev up`
uses: 25 pods x 2 rounds for each configuration (`--kubelet-configs dev` for the 10 s
syncFrequency only, about 2 minutes; `defaults` for the kubelet's own, syncFrequency 1m).

For each configuration: a local control plane, a real node, the operator; one jwt
AgentCredential (ttl 1h: nothing renews by itself) and N agent pods whose container runs the
probe, which looks at the mounted files every 100 ms and prints the time a new value appears
(the container's clock is the host's). Each round asks the operator to renew every live value
(`agentcred renew`) at a random moment, then waits until every container has seen its new
value. The delay of one renewal: container saw the new value - the API server first showed
it (a watch on the Secrets). Each configuration brings up a control plane and a node of its
own (not the run's shared plane).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
import sys
import threading
import time
from typing import Any

from kubernetes import client, watch

from agentcred.api import labels
from agentcred.client.requests import request_renew
from agentcred.devcluster.node import DEV_SYNC_FREQUENCY, KUBELET_DEFAULT_SYNC_FREQUENCY
from agentcred.devcluster.polling import wait_for

from ..context import Context
from ..harness import percentile
from ..real_node import make_namespace, mount, probe_lines, probe_pod, real_node, token

NAMESPACE = "bench-delay"
CREDENTIAL = "delay"
MOUNT = mount(CREDENTIAL)
TOKEN = token(CREDENTIAL)
CONFIGS = {"dev": DEV_SYNC_FREQUENCY, "defaults": KUBELET_DEFAULT_SYNC_FREQUENCY}


def seconds(duration: str) -> float:
    return float(duration[:-1]) * {"s": 1, "m": 60}[duration[-1]]


def fingerprint(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:16]


class SecretWatcher:
    """When the API server first showed each value of each managed Secret (wall clock)."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.written: dict[tuple[str, str], float] = {}  # (secret, fingerprint) -> time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SecretWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    self.core.list_namespaced_secret, NAMESPACE, label_selector=labels.MANAGED_LABEL, timeout_seconds=5
                ):
                    secret = event["object"]
                    encoded = (secret.data or {}).get(labels.value_key(CREDENTIAL))
                    if encoded:
                        key = (secret.metadata.name, fingerprint(base64.b64decode(encoded)))
                        self.written.setdefault(key, time.time())
            except Exception as error:  # a dropped watch is watched again
                if not self._stop.is_set():
                    print(f"  (secret watch: {error})", file=sys.stderr)
                    time.sleep(0.2)


def container_seen(core: client.CoreV1Api, pod: str) -> dict[str, float]:
    """fingerprint -> when the container first saw it."""
    seen: dict[str, float] = {}
    for event in probe_lines(core, NAMESPACE, pod):
        if event["path"] == TOKEN and "sha256" in event:
            seen.setdefault(event["sha256"], event["t"])
    return seen


def measure(name: str, sync: str, pods: int, rounds: int) -> dict[str, Any]:
    with real_node("agentcred-bench-delay-", sync_frequency=sync) as on:
        make_namespace(on.api, NAMESPACE, {CREDENTIAL: {"mountPath": MOUNT}})
        core = on.core
        watcher = SecretWatcher(core).start()
        try:
            names = [f"agent-{i}" for i in range(pods)]
            for pod in names:
                core.create_namespaced_pod(NAMESPACE, probe_pod(pod, on.state.images["probe"], [CREDENTIAL], [MOUNT]))
            secret_of = {}

            def running(pod: str) -> Any:
                found = core.read_namespaced_pod(pod, NAMESPACE)
                return found if found.status.phase == "Running" else None

            for pod in names:
                body = wait_for(functools.partial(running, pod), timeout=300, what=f"{pod} Running")
                secret_of[pod] = labels.secret_name(body.metadata.annotations[labels.BINDING_ANNOTATION])
            for pod in names:
                wait_for(functools.partial(container_seen, core, pod), timeout=120, what=f"{pod} to see its value")
            print(f"[{name}] {pods} pods run on the node; {rounds} rounds of renewals", flush=True)
            ceiling = 1.5 * seconds(sync) + 60
            for round_ in range(rounds):
                time.sleep(random.uniform(0, seconds(sync)))  # at a random point of the pods' sync cycles
                before = {pod: set(container_seen(core, pod)) for pod in names}
                request_renew(on.api, NAMESPACE, CREDENTIAL, timeout=120)
                started = time.monotonic()

                def all_seen(before: dict[str, set[str]] = before) -> bool:
                    return all(set(container_seen(core, pod)) - before[pod] for pod in names)

                wait_for(all_seen, timeout=ceiling, interval=1.0, what="every container to see its renewed value")
                print(f"[{name}]   round {round_ + 1}: every container saw its new value within "
                      f"{time.monotonic() - started:.1f}s of the request", flush=True)  # fmt: skip
            delays, missing = [], 0
            for pod in names:
                seen = container_seen(core, pod)
                written = {fp: at for (secret, fp), at in watcher.written.items() if secret == secret_of[pod]}
                first = min(written, key=written.__getitem__)
                for fp, at in written.items():
                    if fp == first:
                        continue  # the value the pod started with was there before the container
                    if fp in seen:
                        delays.append(seen[fp] - at)
                    else:
                        missing += 1
            return {
                "config": name,
                "syncFrequency": sync,
                "pods": pods,
                "rounds": rounds,
                "renewals": len(delays),
                "never_seen": missing,
                "seconds": {
                    "min": min(delays),
                    "p50": percentile(delays, 50),
                    "p90": percentile(delays, 90),
                    "p99": percentile(delays, 99),
                    "max": max(delays),
                },
                "delays": sorted(round(d, 3) for d in delays),
            }
        finally:
            watcher.stop()


def run(ctx: Context) -> dict[str, Any]:
    """Each configuration asked for in turn, on a node of its own."""
    return {
        name: measure(name, CONFIGS[name], ctx.options.kubelet_pods, ctx.options.kubelet_rounds)
        for name in ctx.options.kubelet_configs
    }
