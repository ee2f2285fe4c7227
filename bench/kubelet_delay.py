"""How long after a renewal is written the new value is readable inside the container, on a
real node (kubelet, containerd, runc), with the kubelet's default settings and with the ones
`agentcred dev up` uses.

    python bench/kubelet_delay.py                   # both configurations, 25 pods x 2 rounds each
    python bench/kubelet_delay.py --config dev      # syncFrequency 10s only (about 2 minutes)
    python bench/kubelet_delay.py --config defaults # the kubelet's own defaults (syncFrequency 1m)

For each configuration: a local control plane, a real node, the operator; one jwt
AgentCredential (ttl 1h: nothing renews by itself) and N agent pods whose container runs the
probe, which looks at the mounted files every 100 ms and prints the time a new value appears
(the container's clock is the host's). Each round asks the operator to renew every live value
(`agentcred renew`) at a random moment, then waits until every container has seen its new
value. The delay of one renewal: container saw the new value - the API server first showed
it (a watch on the Secrets). Figures go to bench/out/kubelet_delay.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

from agentcred.api import labels, model  # noqa: E402
from agentcred.client.requests import request_renew  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from agentcred.devcluster.node import DEV_SYNC_FREQUENCY, KUBELET_DEFAULT_SYNC_FREQUENCY, RealNode  # noqa: E402
from agentcred.devcluster.polling import wait_for  # noqa: E402
from harness import percentile  # noqa: E402
from leaks import Operator  # noqa: E402

OUT = BENCH / "out"
NAMESPACE = "bench-delay"
CREDENTIAL = "delay"
MOUNT = f"/var/run/agentcred/{CREDENTIAL}"
TOKEN = f"{MOUNT}/token"
CONFIGS = {"dev": DEV_SYNC_FREQUENCY, "defaults": KUBELET_DEFAULT_SYNC_FREQUENCY}


def seconds(duration: str) -> float:
    return float(duration[:-1]) * {"s": 1, "m": 60}[duration[-1]]


def fingerprint(value: bytes) -> str:
    import hashlib

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
        import base64

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
    for line in core.read_namespaced_pod_log(pod, NAMESPACE).splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["path"] == TOKEN and "sha256" in event:
                seen.setdefault(event["sha256"], event["t"])
    return seen


def measure(name: str, sync: str, pods: int, rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="agentcred-bench-delay-"))
    node = RealNode(workdir, sync_frequency=sync)
    plane = operator = watcher = None
    try:
        plane = ControlPlane(workdir=workdir, **node.prepare().plane_options)
        plane.start()
        node.start(plane.server, plane.kubeconfig)
        assert node.state is not None
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = Operator(plane, workdir)
        operator.start()
        core = client.CoreV1Api(api)
        setup(api, core)
        watcher = SecretWatcher(core).start()
        names = [f"agent-{i}" for i in range(pods)]
        for pod in names:
            core.create_namespaced_pod(NAMESPACE, agent_pod(pod, node.state.images["probe"]))
        secret_of = {}
        for pod in names:
            body = wait_for(
                lambda pod=pod: (p := core.read_namespaced_pod(pod, NAMESPACE)).status.phase == "Running" and p,
                timeout=300,
                what=f"{pod} Running",
            )
            secret_of[pod] = labels.secret_name(body.metadata.annotations[labels.BINDING_ANNOTATION])
        for pod in names:
            wait_for(lambda pod=pod: container_seen(core, pod), timeout=120, what=f"{pod} to see its value")
        print(f"[{name}] {pods} pods run on the node; {rounds} rounds of renewals", flush=True)
        ceiling = 1.5 * seconds(sync) + 60
        for round_ in range(rounds):
            time.sleep(random.uniform(0, seconds(sync)))  # at a random point of the pods' sync cycles
            before = {pod: set(container_seen(core, pod)) for pod in names}
            request_renew(api, NAMESPACE, CREDENTIAL, timeout=120)
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
        if watcher is not None:
            watcher.stop()
        if operator is not None:
            operator.stop()
        left = node.stop()
        if plane is not None:
            plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            print(f"the node left behind: {left}", file=sys.stderr)


def setup(api: client.ApiClient, core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for(lambda: core.list_namespaced_service_account(NAMESPACE).items, timeout=60, what="default SA")
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "agent"}})
    body = {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": CREDENTIAL},
        "spec": {
            "owner": "bench@example.com",
            "category": "model",
            "subjects": {"serviceAccounts": ["agent"]},
            "source": {"jwt": {"audiences": ["https://bench.internal"]}},
            "ttl": "1h",
            "projection": {"mountPath": MOUNT},
        },
    }
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, body)

    def ready() -> bool:
        status = custom.get_namespaced_custom_object(model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, CREDENTIAL)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in (status.get("status") or {}).get("conditions") or []
        )

    wait_for(ready, timeout=60, what="the credential Ready")


def agent_pod(name: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: CREDENTIAL},
        },
        "spec": {
            "serviceAccountName": "agent",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [{"name": "agent", "image": image, "imagePullPolicy": "Never", "args": ["watch", MOUNT]}],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["dev", "defaults", "both"], default="both")
    parser.add_argument("--pods", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    names = ["dev", "defaults"] if args.config == "both" else [args.config]
    results = [measure(name, CONFIGS[name], args.pods, args.rounds) for name in names]
    print(f"\n{'kubelet config':<28} {'n':>4} {'never':>5} {'min':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}  (s)")
    for result in results:
        s = result["seconds"]
        label = f"{result['config']} (syncFrequency {result['syncFrequency']})"
        figures = " ".join(f"{s[q]:>6.1f}" for q in ("min", "p50", "p90", "p99", "max"))
        print(f"{label:<28} {result['renewals']:>4} {result['never_seen']:>5} {figures}")
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "kubelet_delay.json").read_text()) if (OUT / "kubelet_delay.json").exists() else {}
    previous.update({result["config"]: result for result in results})
    (OUT / "kubelet_delay.json").write_text(json.dumps(previous, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
