"""Secret delivery beside CSI delivery, on a real node (kubelet, containerd, runc, agentcred's CSI
node plugin): what a container waits for, and what the plugin costs.

    python bench/csi.py               # 50 pods per delivery (about 8 minutes on 2 cores)
    python bench/csi.py --pods 60

One local control plane, one real node (syncFrequency 10s, as `agentcred dev up` runs it), the
operator; credentials with ttl 1h (nothing renews by itself): `secret-cred` (delivery secret),
`csi-a` and `csi-b` (delivery csi). Pods are created one after another, each running the probe,
which looks at its mounted files every 100 ms and prints when a value appears, changes or goes
(the container's clock is the host's).

- pod created -> value readable in the container: N pods asking for `secret-cred`, then N pods
  asking for `csi-a` and `csi-b` (2 volumes each: 2N live volumes);
- renewal -> readable (csi): `agentcred renew csi-a`; from the audit line written as the operator
  hands each new value over, to the container seeing it;
- revoke -> gone (csi): `agentcred revoke csi-b`; from the request to the file gone in the container;
- the plugin's resident memory with no volume, and with 2N live volumes.

Figures go to bench/out/csi.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

from agentcred.api import labels, model  # noqa: E402
from agentcred.api.times import parse_time  # noqa: E402
from agentcred.client.requests import request_renew, request_revoke  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.csi_plugin import link_operator  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from agentcred.devcluster.local_operator import LocalOperator  # noqa: E402
from agentcred.devcluster.node import RealNode, volume_refresh_delay  # noqa: E402
from agentcred.devcluster.polling import wait_for  # noqa: E402
from harness import percentile  # noqa: E402

OUT = BENCH / "out"
NAMESPACE = "bench-csi"


def mount(credential: str) -> str:
    return f"/var/run/agentcred/{credential}"


def token(credential: str) -> str:
    return f"{mount(credential)}/token"


def seen(core: client.CoreV1Api, pod: str) -> list[dict[str, Any]]:
    try:
        text = core.read_namespaced_pod_log(pod, NAMESPACE)
    except client.exceptions.ApiException:
        return []
    return [json.loads(line) for line in (text or "").splitlines() if line.startswith("{")]


def first_seen(core: client.CoreV1Api, pod: str, path: str) -> float | None:
    return next((e["t"] for e in seen(core, pod) if e["path"] == path and e.get("sha256")), None)


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


def setup(api: client.ApiClient, core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for(lambda: core.list_namespaced_service_account(NAMESPACE).items, timeout=60, what="default SA")
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "agent"}})
    custom = client.CustomObjectsApi(api)
    for name, delivery in (("secret-cred", "secret"), ("csi-a", "csi"), ("csi-b", "csi")):
        spec = {
            "owner": "bench@example.com",
            "category": "model",
            "subjects": {"serviceAccounts": ["agent"]},
            "source": {"jwt": {"audiences": ["https://bench.internal"]}},
            "ttl": "1h",
            "projection": {"mountPath": mount(name), "delivery": delivery},
        }
        body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": name}, "spec": spec}
        custom.create_namespaced_custom_object(model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, body)

        def ready(name: str = name) -> bool:
            got = custom.get_namespaced_custom_object(model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, name)
            conditions = (got.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for(ready, timeout=60, what=f"{name} Ready")


def agent_pod(name: str, image: str, credentials: list[str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: ",".join(credentials)},
        },
        "spec": {
            "serviceAccountName": "agent",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "agent",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": ["watch", "-every", "100ms", *(mount(c) for c in credentials)],
                }
            ],
        },
    }


def start_pods(core: client.CoreV1Api, image: str, prefix: str, credentials: list[str], count: int) -> list[float]:
    """Create pods one after another; pod created -> its first value readable, each."""
    delays = []
    for index in range(count):
        name = f"{prefix}-{index}"
        created = time.time()
        core.create_namespaced_pod(NAMESPACE, agent_pod(name, image, credentials))
        at = wait_for(
            lambda name=name: first_seen(core, name, token(credentials[0])), timeout=180, what=f"{name} reads its value"
        )
        delays.append(at - created)
    return delays


def measure(pods: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="agentcred-bench-csi-"))
    node = RealNode(workdir)
    plane = operator = None
    try:
        plane = ControlPlane(workdir=workdir, **node.prepare().plane_options)
        plane.start()
        node.start(plane.server, plane.kubeconfig)
        assert node.state is not None
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = LocalOperator(
            plane.kubeconfig, workdir / "operator", volume_refresh_delay=volume_refresh_delay(node.sync_frequency)
        )
        operator.start()
        link_operator(api, node.state.name, node.csi_operator_dir, operator.api_url)
        core = client.CoreV1Api(api)
        setup(api, core)
        image = node.state.images["probe"]
        plugin_pid = node.state.pids["csi-node"]
        idle = rss_kib(plugin_pid)

        secret = start_pods(core, image, "secret", ["secret-cred"], pods)
        print(f"secret: {pods} pods, pod created -> readable p50 {percentile(secret, 50):.2f}s", flush=True)
        for index in range(pods):
            core.delete_namespaced_pod(f"secret-{index}", NAMESPACE, grace_period_seconds=0)
        csi = start_pods(core, image, "csi", ["csi-a", "csi-b"], pods)
        print(f"csi: {pods} pods, pod created -> readable p50 {percentile(csi, 50):.2f}s", flush=True)
        names = [f"csi-{index}" for index in range(pods)]
        time.sleep(2)
        loaded = rss_kib(plugin_pid)

        def values(name: str) -> set[str]:
            return {e["sha256"] for e in seen(core, name) if e["path"] == token("csi-a") and e.get("sha256")}

        before = {n: values(n) for n in names}
        request_renew(api, NAMESPACE, "csi-a", timeout=120)

        def renewed() -> bool:
            return all(values(n) - before[n] for n in names)

        wait_for(renewed, timeout=120, interval=1.0, what="every container to see its renewed value")
        renew_at = {
            line["podName"]: parse_time(line["ts"]).timestamp()
            for line in map(json.loads, operator.audit_path.read_text().splitlines())
            if line.get("action") == "renew" and line.get("credential") == "csi-a"
        }
        renewal = []
        for name in names:
            events = [e for e in seen(core, name) if e["path"] == token("csi-a") and e.get("sha256")]
            fresh = [e["t"] for e in events if e["sha256"] not in before[name]]
            renewal.append(min(fresh) - renew_at[name])

        asked = time.time()
        request_revoke(api, NAMESPACE, "csi-b", timeout=120)

        def gone_at(name: str) -> float | None:
            return next((e["t"] for e in seen(core, name) if e["path"] == token("csi-b") and e.get("gone")), None)

        wait_for(lambda: all(gone_at(n) for n in names), timeout=120, interval=1.0, what="every csi-b file gone")
        revoke = [gone_at(n) - asked for n in names]  # type: ignore[operator]
        return {
            "pods": pods,
            "node": {"syncFrequency": node.sync_frequency},
            "created_to_readable_seconds": {"secret": figures(secret), "csi": figures(csi)},
            "csi_renewal_to_readable_seconds": figures(renewal),
            "csi_revoke_to_gone_seconds": figures(revoke),
            "plugin_rss_kib": {"idle": idle, f"{2 * pods}_volumes": loaded},
        }
    finally:
        if operator is not None:
            operator.stop()
        left = node.stop()
        if plane is not None:
            plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            print(f"the node left behind: {left}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=50, help="pods per delivery (default %(default)s)")
    args = parser.parse_args()
    result = measure(args.pods)
    print(f"\n{'what':<40} {'n':>4} {'min':>7} {'p50':>7} {'p99':>7} {'max':>7}  (s)")
    rows = [
        ("pod created -> readable, secret", result["created_to_readable_seconds"]["secret"]),
        ("pod created -> readable, csi", result["created_to_readable_seconds"]["csi"]),
        ("renewal -> readable, csi", result["csi_renewal_to_readable_seconds"]),
        ("revoke -> gone, csi", result["csi_revoke_to_gone_seconds"]),
    ]
    for label, f in rows:
        print(f"{label:<40} {f['n']:>4} {f['min']:>7.2f} {f['p50']:>7.2f} {f['p99']:>7.2f} {f['max']:>7.2f}")
    memory = result["plugin_rss_kib"]
    print(f"plugin RSS: {memory['idle'] / 1024:.1f} MiB idle, " + ", ".join(
        f"{v / 1024:.1f} MiB with {k.replace('_', ' ')}" for k, v in memory.items() if k != "idle"
    ))  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "csi.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
