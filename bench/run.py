"""agentcred benchmark: latency, throughput and memory on the local control plane.

    python bench/run.py [--quick] [--json bench/out/results.json]

Starts etcd + kube-apiserver + kube-controller-manager on loopback and the operator as its
own process, then measures, printing a table and writing JSON:

  webhook    admission latency per pod (AdmissionReview round trips to the webhook)
  limit      the rate a plain client creates Secrets on this API server (the physical limit)
  burst-N    pods created as fast as the client can -> each pod's value written (p50/p99/max),
             and the sustained projections/second against the limit
  revoke-N   pods marked Succeeded, and pods deleted, in a burst -> value gone (p50/p99)
  scale      10,000 live projections over 500 AgentCredentials: operator peak RSS, CPU seconds
  renewal    10,000 values on short TTLs: how late renewals happen (p50/p99)

Timing is taken on this side of the API (client clock, watch events), so it includes the
API server's and the watch's latency, as a user would see it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))

from agentcred import labels, model  # noqa: E402
from agentcred.devcluster.binaries import KUBERNETES_VERSION, ensure_binaries  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane, free_port  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from agentcred.devcluster.polling import wait_for  # noqa: E402

CLIENT_THREADS = 16


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan"), "mean": statistics.fmean(values) if values else float("nan")}


class Bench:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.workdir = workdir
        self.api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.api.configuration.connection_pool_maxsize = CLIENT_THREADS * 2
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.results: dict[str, Any] = {}
        self.operator: subprocess.Popen[bytes] | None = None
        self.webhook_port = free_port()
        self.health_port = free_port()

    # -- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        install_agentcred(self.api)

    def start_operator(self) -> None:
        log = open(self.workdir / "operator.log", "ab")
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "agentcred", "run", "--standalone", "--namespace", "agentcred",
             "--webhook-address", "127.0.0.1", "--webhook-port", str(self.webhook_port),
             "--webhook-url", f"https://127.0.0.1:{self.webhook_port}", "--api-address", "127.0.0.1",
             "--api-port", str(free_port()), "--health-address", "127.0.0.1", "--health-port", str(self.health_port),
             "--audit-log", str(self.workdir / "audit.log")],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig), "PYTHONPATH": str(REPO / "operator")},
        )
        wait_for(lambda: self._health("/readyz") == 200, timeout=60)

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.terminate()
            self.operator.wait(timeout=30)

    def _health(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as response:
                return response.status
        except OSError:
            return 0

    def namespace(self, name: str, credentials: int = 1, **spec: Any) -> list[str]:
        self.core.create_namespace({"metadata": {"name": name}})
        self.core.create_namespaced_service_account(name, {"metadata": {"name": "agent"}})
        names = [f"cred-{i}" for i in range(credentials)]
        for cred in names:
            body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": cred},
                    "spec": {"owner": "bench@example.com", "category": "model", "subjects": {"serviceAccounts": ["agent"]},
                             "source": {"jwt": {"audiences": ["bench"]}},
                             "projection": {"mountPath": f"/var/run/agentcred/{cred}"}, **spec}}
            self.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, name, model.PLURAL, body)
        last = names[-1]
        wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (
            self.custom.get_namespaced_custom_object(model.GROUP, model.VERSION, name, model.PLURAL, last)
            .get("status") or {}).get("conditions") or []), timeout=300, interval=0.5)
        time.sleep(1)
        return names

    def pod_body(self, name: str, credential: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {labels.INJECT_LABEL: "true"},
                             "annotations": {labels.CREDENTIALS_ANNOTATION: credential}},
                "spec": {"serviceAccountName": "agent", "restartPolicy": "Never",
                         "containers": [{"name": "agent", "image": "example.com/agent:1"}]}}

    # -- measurements ---------------------------------------------------------------

    def measure_limit(self, count: int) -> float:
        """How fast a plain client creates Secrets here: the physical limit for projections."""
        namespace = "bench-limit"
        self.core.create_namespace({"metadata": {"name": namespace}})
        body = lambda i: {"metadata": {"name": f"plain-{i}"}, "stringData": {"token": "x" * 600}}  # noqa: E731
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(lambda i: self.core.create_namespaced_secret(namespace, body(i), _preload_content=False), range(count)))
        rate = count / (time.monotonic() - started)
        self.results["limit"] = {"secrets": count, "per_second": rate}
        return rate

    def measure_webhook(self, count: int) -> None:
        names = self.namespace("bench-webhook")
        review = lambda i: json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {  # noqa: E731
            "uid": f"00000000-0000-0000-0000-{i:012d}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
            "namespace": "bench-webhook", "userInfo": {"username": "bench"},
            "object": {"apiVersion": "v1", "kind": "Pod", **self.pod_body(f"w-{i}", names[0]),
                       "metadata": {**self.pod_body(f"w-{i}", names[0])["metadata"], "namespace": "bench-webhook"}}}}).encode()
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        import http.client
        connection = http.client.HTTPSConnection("127.0.0.1", self.webhook_port, context=context)
        durations = []
        for i in range(count):
            payload = review(i)
            started = time.perf_counter()
            connection.request("POST", "/agentcred-inject", body=payload, headers={"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
            durations.append(time.perf_counter() - started)
            assert answer["response"]["allowed"], answer
        self.results["webhook"] = {k: v * 1000 if k != "n" else v for k, v in summary(durations).items()} | {"unit": "ms"}

    def _watch_secrets(self, namespace: str, seen: dict[str, float], deleted: dict[str, float], stop: threading.Event) -> None:
        try:
            self._follow_secrets(namespace, seen, deleted, stop)
        except Exception:  # the control plane went away at the end of the run
            if not stop.is_set():
                raise

    def _follow_secrets(self, namespace: str, seen: dict[str, float], deleted: dict[str, float], stop: threading.Event) -> None:
        stream = watch.Watch()
        for event in stream.stream(self.core.list_namespaced_secret, namespace, label_selector=f"{labels.MANAGED_LABEL}=true",
                                   timeout_seconds=3600, _preload_content=False):
            now = time.monotonic()
            binding = event["raw_object"]["metadata"]["labels"].get(labels.BINDING_LABEL)
            if event["type"] == "ADDED":
                seen.setdefault(binding, now)
            elif event["type"] == "DELETED":
                deleted.setdefault(binding, now)
            if stop.is_set():
                stream.stop()
                return

    def measure_burst(self, count: int) -> dict[str, Any]:
        namespace = f"bench-burst-{count}"
        names = self.namespace(namespace)
        seen: dict[str, float] = {}
        deleted: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_secrets, args=(namespace, seen, deleted, stop), daemon=True)
        watcher.start()
        time.sleep(1)
        created: dict[str, float] = {}
        pods: dict[str, str] = {}

        def create(i: int) -> None:
            response = self.core.create_namespaced_pod(namespace, self.pod_body(f"p-{i}", names[0]), _preload_content=False)
            body = json.loads(response.data)
            binding = body["metadata"]["annotations"][labels.BINDING_ANNOTATION]
            created[binding] = time.monotonic()
            pods[binding] = body["metadata"]["name"]

        cpu_before = self.operator_usage()["cpu_seconds"]
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(create, range(count)))
        create_done = time.monotonic()
        wait_for(lambda: len(seen) >= count, timeout=max(120, count / 5), interval=0.2)
        finished = max(seen.values())
        latencies = [seen[b] - created[b] for b in created if b in seen]
        result = {
            "pods": count,
            "create_seconds": create_done - started,
            "written_ms": {k: v * 1000 if k != "n" else v for k, v in summary(latencies).items()},
            "projections_per_second": count / (finished - started),
            "pods_created_per_second": count / (create_done - started),
            "operator_cpu_seconds": self.operator_usage()["cpu_seconds"] - cpu_before,
        }

        # Revocation: half the pods succeed (the Job path), half are deleted, in a burst.
        bindings = sorted(created)
        half = len(bindings) // 2
        triggered: dict[str, float] = {}

        def succeed(binding: str) -> None:
            status = {"status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "agent", "image": "example.com/agent:1", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}
            self.core.patch_namespaced_pod_status(pods[binding], namespace, status, _preload_content=False)
            triggered[binding] = time.monotonic()

        def delete(binding: str) -> None:
            self.core.delete_namespaced_pod(pods[binding], namespace, grace_period_seconds=0, _preload_content=False)
            triggered[binding] = time.monotonic()

        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(succeed, bindings[:half]))
            list(pool.map(delete, bindings[half:]))
        wait_for(lambda: len(deleted) >= count, timeout=max(120, count / 5), interval=0.2)
        stop.set()
        for kind, chosen in (("succeeded", bindings[:half]), ("deleted", bindings[half:])):
            values = [deleted[b] - triggered[b] for b in chosen if b in deleted]
            result[f"revoked_{kind}_ms"] = {k: v * 1000 if k != "n" else v for k, v in summary(values).items()}
        self.results[f"burst-{count}"] = result
        return result

    def operator_usage(self) -> dict[str, float]:
        assert self.operator is not None
        status = Path(f"/proc/{self.operator.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        stat = Path(f"/proc/{self.operator.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024,
            "cpu_seconds": (int(stat[11]) + int(stat[12])) / ticks,
        }

    def measure_scale(self, pods: int, credentials: int) -> None:
        namespace = "bench-scale"
        names = self.namespace(namespace, credentials=credentials, ttl="2m", renewBefore="40s", maxLifetime="8h")
        before = self.operator_usage()
        seen: dict[str, float] = {}
        deleted: dict[str, float] = {}
        stop = threading.Event()
        threading.Thread(target=self._watch_secrets, args=(namespace, seen, deleted, stop), daemon=True).start()
        time.sleep(1)
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(lambda i: self.core.create_namespaced_pod(
                namespace, self.pod_body(f"s-{i}", names[i % len(names)]), _preload_content=False), range(pods)))
        wait_for(lambda: len(seen) >= pods, timeout=max(300, pods / 5), interval=0.5)
        projected = time.monotonic() - started
        at_scale = self.operator_usage()
        # Renewal: with ttl 2m and renewBefore 40s every value renews ~80s after issue; watch
        # two rounds and measure lateness from the audit log.
        renew_window = 200.0
        time.sleep(renew_window)
        after = self.operator_usage()
        stop.set()
        lateness = self._renewal_lateness(namespace, renew_before=40.0)
        self.results["scale"] = {
            "pods": pods, "credentials": credentials, "projection_seconds": projected,
            "rss_mb_idle_before": before["rss_mb"], "rss_mb_at_scale": at_scale["rss_mb"],
            "peak_rss_mb": after["peak_rss_mb"], "cpu_seconds_projecting": at_scale["cpu_seconds"] - before["cpu_seconds"],
            "cpu_seconds_renewing": after["cpu_seconds"] - at_scale["cpu_seconds"], "renew_window_seconds": renew_window,
        }
        self.results["renewal"] = {"values": pods, **{k: v * 1000 if k != "n" else v for k, v in summary(lateness).items()},
                                   "unit": "ms late"}

    def _renewal_lateness(self, namespace: str, renew_before: float) -> list[float]:
        import datetime as dt

        def when(text: str) -> float:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

        last_expiry: dict[str, float] = {}
        lateness = []
        for line in (self.workdir / "audit.log").read_text().splitlines():
            entry = json.loads(line)
            if entry.get("namespace") != namespace or entry["action"] not in ("issue", "renew"):
                continue
            pod = entry["podUID"]
            if entry["action"] == "renew" and pod in last_expiry:
                lateness.append(max(0.0, when(entry["ts"]) - (last_expiry[pod] - renew_before)))
            last_expiry[pod] = when(entry["expiresAt"])
        return lateness


def table(results: dict[str, Any]) -> str:
    rows = [("measure", "result", "target")]
    if "webhook" in results:
        w = results["webhook"]
        rows.append(("admission webhook latency", f"p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms (n={w['n']})", "p99 < 20 ms"))
    if "limit" in results:
        rows.append(("plain Secret creation (limit)", f"{results['limit']['per_second']:.0f}/s", "-"))
    for key in sorted(k for k in results if k.startswith("burst-")):
        b = results[key]
        ratio = b["projections_per_second"] / results["limit"]["per_second"] if "limit" in results else float("nan")
        rows.append((f"{key}: created -> written", f"p50 {b['written_ms']['p50']:.0f} ms, p99 {b['written_ms']['p99']:.0f} ms, "
                     f"max {b['written_ms']['max']:.0f} ms", "p50 < 200 ms, p99 < 1 s @1000"))
        rows.append((f"{key}: throughput", f"{b['projections_per_second']:.0f}/s = {ratio:.2f} of the limit "
                     f"(operator CPU {b['operator_cpu_seconds']:.1f} s)", ">= 0.5"))
        rows.append((f"{key}: succeeded -> revoked", f"p50 {b['revoked_succeeded_ms']['p50']:.0f} ms, "
                     f"p99 {b['revoked_succeeded_ms']['p99']:.0f} ms", "p99 < 2 s @1000"))
        rows.append((f"{key}: deleted -> revoked", f"p50 {b['revoked_deleted_ms']['p50']:.0f} ms, "
                     f"p99 {b['revoked_deleted_ms']['p99']:.0f} ms", "p99 < 2 s @1000"))
    if "scale" in results:
        s = results["scale"]
        rows.append((f"scale: {s['pods']} live / {s['credentials']} credentials", f"peak RSS {s['peak_rss_mb']:.0f} MB, "
                     f"CPU {s['cpu_seconds_projecting']:.0f} s projecting + {s['cpu_seconds_renewing']:.0f} s "
                     f"over {s['renew_window_seconds']:.0f} s of renewals", "RSS < 250 MB"))
    if "renewal" in results:
        r = results["renewal"]
        rows.append((f"renewal lateness ({r['n']} renewals)", f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms", "on time"))
    if "scale" in results:
        s = results["scale"]
        rows.append(("scale: RSS of a fresh operator", f"{s['rss_mb_idle_before']:.0f} MB before, "
                     f"{s['rss_mb_at_scale']:.0f} MB with {s['pods']} live", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "results.json"))
    parser.add_argument("--bursts", default=None,
                        help="comma-separated burst sizes (default 100,1000,5000; empty for none)")
    parser.add_argument("--skip-scale", action="store_true", help="skip the 10,000-projection scale and renewal run")
    args = parser.parse_args()
    default_bursts = "50,200" if args.quick else "100,1000,5000"
    bursts = [int(b) for b in (default_bursts if args.bursts is None else args.bursts).split(",") if b]
    scale_pods, scale_credentials = (500, 50) if args.quick else (10000, 500)
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-") as workdir, ControlPlane() as plane:
        bench = Bench(plane, Path(workdir))
        bench.setup()
        bench.start_operator()
        try:
            bench.measure_webhook(300 if args.quick else 2000)
            bench.measure_limit(500 if args.quick else 3000)
            for size in bursts:
                print(f"burst of {size} ...", file=sys.stderr, flush=True)
                bench.measure_burst(size)
            if not args.skip_scale:
                print(f"scale: {scale_pods} pods over {scale_credentials} credentials ...", file=sys.stderr, flush=True)
                # A fresh process, so memory reflects the live projections, not the bursts' history.
                bench.stop_operator()
                bench.start_operator()
                bench.measure_scale(scale_pods, scale_credentials)
        finally:
            bench.stop_operator()
        bench.results["machine"] = {
            "cpus": os.cpu_count(), "python": platform.python_version(), "kubernetes": KUBERNETES_VERSION,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"),
        }
    print(table(bench.results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(bench.results, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
