"""agentcred benchmark: agentcred, the floor for its design and External Secrets, side by side.

    python bench/run.py                 # the full run (`make bench`), about an hour on 2 cores
    python bench/run.py --quick         # `make bench-quick`: webhook, floor and agentcred at 200

Starts etcd + kube-apiserver + kube-controller-manager on loopback, then runs stages; each
stage's figures are written to bench/out/results.json as soon as it finishes, a failed stage
is recorded with its error and the run goes on; namespaces are deleted (and waited for)
between stages so no stage pays for an earlier one's objects.

  webhook          admission latency per AdmissionReview (straight to the operator's webhook)
  floor-N          a plain client doing, per pod, the API writes agentcred causes (no operator)
  agentcred-N      N pods created at once -> value written and pod ungated; revocation; CPU
                   (a freshly started operator per burst; its start-up time is recorded)
  tokens           the token service at 100 concurrent clients: token exchange and JWT
                   bearer grants by pods' bound ServiceAccount tokens, throughput, p50/p99
  eso-V-N          N ExternalSecrets (Fake store + Password generator) -> target Secret
                   written; deleted -> Secret gone; ESO's RSS and CPU (V: client limits)
  eso-refresh      M ExternalSecrets refreshing every 80 s: lateness, RSS, CPU
  scale            live projections ramped to 20,000 over 500 AgentCredentials: RSS and CPU
                   at each step, renewal of 10,000 values on 2-minute TTLs, operator
                   start-up (ready, every index listed) with 1,000 / 10,000 / 20,000 live

Timing is taken on this side of the API (call returned -> watch event read) with the same
client (16 threads, one HTTP pool) for all three, so it includes the API server's and the
watch's latency, as a user would see it. Plots go to bench/out/*.png; --publish copies them
to bench/plots/ and rewrites the generated part of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from agentcred.api import labels, model  # noqa: E402
from agentcred.devcluster.binaries import ETCD_VERSION, KUBERNETES_VERSION, ensure_binaries  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from agentcred.devcluster.local_operator import LocalOperator  # noqa: E402
from floor import PodBurst, measure_floor, pods_path, secrets_path  # noqa: E402
from harness import (  # noqa: E402
    CLIENT_THREADS,
    Follower,
    Lean,
    PartialResult,
    Results,
    log_tail,
    overruns,
    summary_ms,
    usage,
    wait_count,
    wait_gone,
)

OUT = BENCH / "out"
RENEW_TTL = 120.0  # the scale stage's ttl (2m); renewBefore is a third of it (40 s), the operator's default
RENEW_PERIOD = RENEW_TTL * 2 / 3  # ttl - renewBefore: each value is rewritten this long after the last


class Agentcred:
    """The operator under test, as its own process, and what is measured with it."""

    def __init__(
        self, plane: ControlPlane, lean: Lean, api: client.ApiClient, workdir: Path, profile: bool, out: Path = OUT
    ) -> None:
        self.plane = plane
        self.out = out
        self.lean = lean
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.workdir = workdir
        self.profile = profile
        self.operator: LocalOperator | None = None

    # -- the process ------------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.operator.process if self.operator is not None else None

    @property
    def webhook_port(self) -> int:
        assert self.operator is not None
        return self.operator.webhook_port

    @property
    def api_port(self) -> int:
        assert self.operator is not None
        return self.operator.api_port

    def start(self, expect_live: int = 0, env: dict[str, str] | None = None) -> float:
        """Start the operator; seconds until /readyz (every index listed, endpoints up).

        The ceiling grows with what it must list: a new leader after a failover lists every
        live pod before it is ready, and that time is a figure, not a reason to give up."""
        self.stop()
        self.operator = LocalOperator(self.plane.kubeconfig, self.workdir, env=env, detached=False)
        started = time.monotonic()
        self.operator.start(wait=False)
        # A hang guard only. Start-up has measured worse than linear in live pods (5 s at 1,000,
        # 75 s at 4,000 on 2 cores), so the guard grows with the square of what must be listed.
        ceiling = 300 + expect_live / 10 + expect_live**2 / 200_000
        with self.profiled(f"startup-{expect_live}") if expect_live else nullcontext():
            self.operator.wait_ready(ceiling)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop(timeout=60)
        self.operator = None

    def usage(self) -> dict[str, float]:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the operator exited with {self.process.returncode}:\n{log_tail(self.workdir / 'operator.log')}"
            )
        return usage(self.process.pid)

    def _health(self, path: str) -> int:
        assert self.operator is not None
        return self.operator.health(path)[0]

    def profiled(self, name: str) -> Iterator[None]:
        """py-spy on the operator for the duration (with --profile): a raw profile and a summary."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not self.profile or self.process is None or not Path(spy).exists():
            yield
            return
        raw = self.out / f"profile-{name}.txt"
        self.out.mkdir(parents=True, exist_ok=True)
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.process.pid),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
            if raw.exists():
                report.summarize_profile(raw, self.out / f"profile-{name}-top.txt")

    # -- objects ----------------------------------------------------------------------

    def namespace(self, name: str, credentials: int = 1, **spec: Any) -> list[str]:
        self.core.create_namespace({"metadata": {"name": name}})
        self.core.create_namespaced_service_account(name, {"metadata": {"name": "agent"}})
        names = [f"cred-{i}" for i in range(credentials)]

        def create(cred: str) -> None:
            self.lean.call(
                "POST",
                f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{name}/{model.PLURAL}",
                {
                    "apiVersion": model.API_VERSION,
                    "kind": model.KIND,
                    "metadata": {"name": cred},
                    "spec": {
                        "owner": "bench@example.com",
                        "category": "model",
                        "subjects": {"serviceAccounts": ["agent"]},
                        "source": {"jwt": {"audiences": ["bench"]}},
                        "projection": {"mountPath": f"/var/run/agentcred/{cred}"},
                        **spec,
                    },
                },
            )

        self.lean.run_all(create, names)

        def ready() -> int:
            listed = self.lean.json("GET", f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{name}/{model.PLURAL}")
            return sum(
                1
                for item in listed["items"]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (item.get("status") or {}).get("conditions") or []
                )
            )

        wait_count(ready, credentials, f"{name}: AgentCredentials Ready", stall=120, interval=0.5)
        time.sleep(1)
        return names

    @staticmethod
    def pod_body(name: str, credential: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {labels.INJECT_LABEL: "true"},
                "annotations": {labels.CREDENTIALS_ANNOTATION: credential},
            },
            "spec": {
                "serviceAccountName": "agent",
                "restartPolicy": "Never",
                "containers": [{"name": "agent", "image": "example.com/agent:1"}],
            },
        }

    @staticmethod
    def secret_pod(secret: dict[str, Any]) -> str | None:
        return (secret["metadata"].get("annotations") or {}).get(labels.POD_ANNOTATION)

    # -- measurements -----------------------------------------------------------------

    def webhook(self, count: int) -> dict[str, Any]:
        startup = self.start()
        try:
            names = self.namespace("bench-webhook")

            def review(i: int) -> bytes:
                pod = self.pod_body(f"w-{i}", names[0])
                pod["metadata"]["namespace"] = "bench-webhook"
                return json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "request": {
                            "uid": f"00000000-0000-0000-0000-{i:012d}",
                            "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "operation": "CREATE",
                            "namespace": "bench-webhook",
                            "userInfo": {"username": "bench"},
                            "object": pod,
                        },
                    }
                ).encode()

            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            connection = http.client.HTTPSConnection("127.0.0.1", self.webhook_port, context=context, timeout=30)
            durations = []
            for i in range(count):
                payload = review(i)
                began = time.perf_counter()
                connection.request(
                    "POST", "/agentcred-inject", body=payload, headers={"Content-Type": "application/json"}
                )
                answer = json.loads(connection.getresponse().read())
                durations.append(time.perf_counter() - began)
                if not answer["response"]["allowed"]:
                    raise RuntimeError(f"the webhook refused a benchmark pod: {answer['response'].get('status')}")
            return {**summary_ms(durations), "unit": "ms", "operator_startup_seconds": startup}
        finally:
            try:
                clean(self.lean, "bench-webhook", 10)
            finally:
                self.stop()

    def burst(self, count: int) -> dict[str, Any]:
        """A fresh operator, one burst, then the namespace deleted while the operator runs."""
        namespace = f"bench-burst-{count}"
        startup = self.start()

        def stop_after_cleaning() -> float:
            try:
                return clean(self.lean, namespace, count * 3)
            finally:
                self.stop()

        return measure_and_clean(lambda: self._burst(namespace, count, startup), stop_after_cleaning)

    def _burst(self, namespace: str, count: int, startup: float) -> dict[str, Any]:
        names = self.namespace(namespace)
        burst = PodBurst(
            self.lean,
            namespace,
            count,
            secret_selector=f"{labels.MANAGED_LABEL}=true",
            secret_key=self.secret_pod,
            gate=labels.SCHEDULING_GATE,
        )

        def create(i: int) -> None:
            self.lean.call("POST", pods_path(namespace), self.pod_body(f"p-{i}", names[0]))
            burst.stamp(f"p-{i}")

        before = self.usage()
        with self.profiled(f"agentcred-{count}"):
            result = burst.measure(create, probe=self.usage, stall=120)
        result.update(operator_startup_seconds=startup, rss_mb_before=before["rss_mb"], client_threads=CLIENT_THREADS)
        return result

    def tokens(self, pods: int, requests: int, concurrency: int = 100) -> dict[str, Any]:
        """`requests` token requests per grant from `concurrency` clients at once, each its own
        HTTPS connection per request (as the earlier /v1/exchange figure was taken), by `pods`
        admitted pods with their own bound tokens. The per-pod rate limit is lifted: this
        measures what the service can do, not the limit."""
        namespace = "bench-tokens"
        # Every pod's first request is reviewed, from one address: the per-address budget, which
        # each review holds until the API server accepts the token, is lifted as the pod rate is.
        startup = self.start(
            env={
                "AGENTCRED_TOKEN_RATE": "100000",
                "AGENTCRED_TOKEN_BURST": "100000",
                "AGENTCRED_SOURCE_BURST": "100000",
            }
        )

        def stop_after_cleaning() -> float:
            try:
                return clean(self.lean, namespace, pods * 3)
            finally:
                self.stop()

        return measure_and_clean(
            lambda: self._tokens(namespace, pods, requests, concurrency, startup), stop_after_cleaning
        )

    def _tokens(self, namespace: str, pods: int, requests: int, concurrency: int, startup: float) -> dict[str, Any]:
        names = self.namespace(namespace, scope={"tools": ["*"], "actions": ["read"], "resources": ["repo:acme/*"]})
        self.lean.run_all(
            lambda i: self.lean.call("POST", pods_path(namespace), self.pod_body(f"t-{i}", names[0])), range(pods)
        )

        def released() -> list[dict[str, Any]]:
            listed = self.lean.json("GET", pods_path(namespace))["items"]
            return [pod for pod in listed if not pod["spec"].get("schedulingGates")]

        wait_count(lambda: len(released()), pods, f"{namespace}: {pods} pods issued and released", stall=120)
        listed = released()

        def bound(pod: dict[str, Any]) -> str:
            ref = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
            answer = self.lean.json(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts/agent/token",
                {"spec": {"audiences": ["agentcred"], "expirationSeconds": 3600, "boundObjectRef": ref}},
            )
            return str(answer["status"]["token"])

        identities = [bound(pod) for pod in listed]
        ca = self.core.read_namespaced_config_map("agentcred-ca-bundle", "agentcred").data[labels.CA_KEY]
        context = ssl.create_default_context(cadata=ca)
        grants = {
            "token-exchange": lambda i: {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": identities[i % len(identities)],
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "authorization_details": json.dumps(
                    [
                        {
                            "type": "agentcred.dev/tool",
                            "tool": f"tool-{i % 7}",
                            "actions": ["read"],
                            "identifier": f"repo:acme/r{i}",
                        }
                    ]
                ),
            },
            "jwt-bearer": lambda i: {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": identities[i % len(identities)],
                "scope": f"tool:tool-{i % 7} action:read resource:repo:acme/r{i}",
            },
        }
        figures: dict[str, Any] = {"operator_startup_seconds": startup, "pods": pods, "concurrency": concurrency}
        for grant, form in grants.items():

            def ask(i: int, form: Callable[[int], dict[str, str]] = form) -> tuple[int, float]:
                connection = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=context, timeout=60)
                began = time.perf_counter()
                try:
                    connection.request(
                        "POST",
                        "/oauth2/token",
                        body=urllib.parse.urlencode(form(i)),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    response = connection.getresponse()
                    response.read()
                    return response.status, time.perf_counter() - began
                finally:
                    connection.close()

            ask(0)  # TokenReview answers are cached per token: every pod's first review is part of the run
            before = self.usage()
            began = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(ask, range(requests)))
            elapsed = time.monotonic() - began
            after = self.usage()
            refused = [status for status, _ in answers if status != 200]
            if refused:
                raise RuntimeError(f"{grant}: {len(refused)} of {requests} refused (statuses {sorted(set(refused))})")
            figures[grant] = {
                **summary_ms(seconds for _, seconds in answers),
                "unit": "ms",
                "per_second": round(requests / elapsed, 1),
                "cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
            }
        return figures

    def scale(
        self,
        checkpoints: list[int],
        credentials: int,
        renewal_at: int,
        window: float,
        restart_at: set[int],
        progress: Callable[[dict[str, Any]], None],
        ttl: float = RENEW_TTL,
    ) -> dict[str, Any]:
        """Ramp live projections through `checkpoints`; measure renewal at `renewal_at`
        for `window` seconds and operator start-up at each of `restart_at`."""
        namespace = "bench-scale"
        result: dict[str, Any] = {
            "credentials": credentials,
            "points": [],
            "startup": [],
            "ttl_seconds": ttl,
            "renew_before_seconds": ttl / 3,
        }
        result["startup"].append({"live": 0, "seconds": self.start()})
        names = self.namespace(
            namespace, credentials=credentials, ttl=f"{ttl:.0f}s", renewBefore=f"{ttl / 3:.0f}s", maxLifetime="8h"
        )
        follower = Follower(
            self.lean, secrets_path(namespace), self.secret_pod, selector=f"{labels.MANAGED_LABEL}=true", writes=True
        )
        created = 0
        try:
            with follower as written:
                time.sleep(0.5)
                for checkpoint in checkpoints:
                    before = self.usage()
                    began = time.monotonic()
                    self.lean.run_all(
                        lambda i: self.lean.call(
                            "POST", pods_path(namespace), self.pod_body(f"s-{i}", names[i % len(names)])
                        ),
                        range(created, checkpoint),
                    )
                    wait_count(
                        lambda: len(written.seen), checkpoint, f"{namespace}: {checkpoint} projections", stall=180
                    )
                    step = checkpoint - created
                    created = checkpoint
                    at = self.usage()
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
                    progress(result)
                    if checkpoint == renewal_at:
                        result["renewal"] = self._renewal(namespace, written, window, ttl)
                        progress(result)
                    if checkpoint in restart_at:
                        seconds = self.start(expect_live=checkpoint)
                        fresh = self.usage()
                        result["startup"].append(
                            {
                                "live": checkpoint,
                                "seconds": seconds,
                                "rss_mb": fresh["rss_mb"],
                                "peak_rss_mb": fresh["peak_rss_mb"],
                            }
                        )
                        print(
                            f"  start-up with {checkpoint} live: {seconds:.1f} s, RSS {fresh['rss_mb']:.0f} MB",
                            flush=True,
                        )
                        progress(result)
        finally:
            self.stop()
        return result

    def _renewal(self, namespace: str, written: Follower, window: float, ttl: float) -> dict[str, Any]:
        live = len(written.seen) - len(written.deleted)
        print(
            f"  renewal: {live} values, ttl {ttl:.0f} s, renewBefore {ttl / 3:.0f} s, watching {window:.0f} s ...",
            flush=True,
        )
        before = self.usage()
        mark, wall = time.monotonic(), time.time()
        time.sleep(window)
        after = self.usage()
        late, overdue = overruns(written.writes, ttl * 2 / 3, since=mark, until=time.monotonic())
        audit = self._audit_lateness(namespace, ttl / 3, wall, wall + window)
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

    def _audit_lateness(self, namespace: str, renew_before: float, since: float, until: float) -> list[float]:
        """Seconds from each renewal's due time (the previous value's expiry - renewBefore) to
        its audit line, for renewals written between `since` and `until` (wall clock)."""

        def when(text: str) -> float:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

        last_expiry: dict[str, float] = {}
        lateness = []
        with open(self.workdir / "audit.log") as lines:
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


def clean(lean: Lean, namespace: str, objects: int) -> float:
    """Delete a namespace and wait until it is gone, so the next stage starts clean.

    AgentCredentials carry the operator's finalizer: with the operator running it revokes and
    lets go; if one is still held after a while (no operator), the benchmark lets go itself."""
    path = f"/api/v1/namespaces/{namespace}"
    started = time.monotonic()
    lean.call("DELETE", path, ok=(200, 202, 404))
    try:
        wait_gone(lean, path, f"namespace {namespace}", ceiling=60 + objects / 50)
    except TimeoutError:
        credentials = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{namespace}/{model.PLURAL}"
        held = [
            item["metadata"]["name"]
            for item in lean.json("GET", credentials).get("items") or []
            if item["metadata"].get("finalizers")
        ]
        if held:
            print(f"  {namespace}: releasing the finalizers of {len(held)} AgentCredentials", flush=True)
        for name in held:
            lean.call(
                "PATCH",
                f"{credentials}/{name}",
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
                ok=(200, 404),
            )
        wait_gone(lean, path, f"namespace {namespace}", ceiling=180 + objects / 20)
    return time.monotonic() - started


def measure_and_clean(measure: Callable[[], dict[str, Any]], cleanup: Callable[[], float]) -> dict[str, Any]:
    """Measure, then clean up whatever happened; a failed clean-up keeps the figures."""
    try:
        value = measure()
    except BaseException:
        try:
            cleanup()
        except Exception as error:  # noqa: BLE001 - the measurement's own error is the one to report
            print(f"  clean-up failed too: {error}", flush=True)
        raise
    try:
        value["cleanup_seconds"] = round(cleanup(), 1)
    except Exception as error:  # noqa: BLE001
        raise PartialResult(value, error) from error
    return value


def keep_logs(workdir: Path, plane: ControlPlane, into: Path) -> None:
    """The operator's, ESO's and the control plane's logs, for a look after the run."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True, exist_ok=True)
    for log in [*workdir.glob("*.log"), *(plane.workdir / "logs").glob("*.log")]:
        if log.name != "audit.log":
            shutil.copy2(log, into / log.name)


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            from importlib.metadata import version as of

            return of(package)
        except Exception:  # noqa: BLE001
            return "?"

    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip() if shutil.which("go") else "?"
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory = "?"
    try:
        memory = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kubernetes": KUBERNETES_VERSION,
        "etcd": ETCD_VERSION,
        "go": go,
        "kopf": version("kopf"),
        "aiohttp": version("aiohttp"),
        "agentcred": version("agentcred"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_at_start": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="bench-quick: the webhook, the floor and agentcred for one burst of 200; no ESO, no scale",
    )
    parser.add_argument(
        "--json",
        default=str(OUT / "results.json"),
        help="results file; plots, logs and profiles go to its folder (default bench/out/)",
    )
    parser.add_argument("--bursts", help="comma-separated burst sizes (default 100,1000,5000; quick: 200)")
    parser.add_argument("--webhook", type=int, help="AdmissionReviews to time (default 2000; quick: 300)")
    parser.add_argument(
        "--token-requests", type=int, help="token requests per grant at 100 clients (default 3000; quick: 500)"
    )
    parser.add_argument(
        "--eso",
        choices=["build", "cached", "skip"],
        help="External Secrets: build it if missing (full run default), only if already built, or skip (quick default)",
    )
    parser.add_argument("--eso-sizes", help="ExternalSecret burst sizes (default: the burst sizes)")
    parser.add_argument(
        "--eso-variants",
        default="default,raised,tuned",
        help="ESO client settings to run: default (qps 50, burst 100, 1 worker), raised "
        "(qps 1000, burst 2000), tuned (raised + 16 workers)",
    )
    parser.add_argument(
        "--eso-source",
        choices=["generator", "store+generator"],
        default="generator",
        help="what each ExternalSecret reads: a Password generator, or also a Fake store key "
        "(ESO v0.16.2 crashes with the Fake store and more than one worker: see bench/eso.py)",
    )
    parser.add_argument(
        "--eso-refresh",
        type=int,
        default=10000,
        help="ExternalSecrets refreshing every ttl - renewBefore (80 s), next to agentcred's renewal (0: skip)",
    )
    parser.add_argument(
        "--eso-refresh-variants", default="tuned,default", help="variants watched in turn over the same live objects"
    )
    parser.add_argument(
        "--scale",
        default=None,
        help="live-projection checkpoints (default 1000,2500,5000,10000,15000,20000; empty: skip)",
    )
    parser.add_argument("--skip-scale", action="store_true", help="same as --scale ''")
    parser.add_argument("--credentials", type=int, default=500, help="AgentCredentials the scale pods spread over")
    parser.add_argument("--renewal-at", type=int, default=10000, help="checkpoint at which renewal is measured")
    parser.add_argument(
        "--ttl",
        type=float,
        default=RENEW_TTL,
        help="seconds of ttl for the scale stage's values (renewBefore: a third); default 120",
    )
    parser.add_argument("--startup-at", default="1000,10000", help="checkpoints at which the operator restarts")
    parser.add_argument("--window", type=float, default=200.0, help="seconds to watch renewals / refreshes")
    parser.add_argument(
        "--only",
        default="",
        help="run only these stage kinds, comma-separated: webhook, floor, agentcred, tokens, eso, scale",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the operator during each burst (bench/out/)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="copy the plots to bench/plots/ and rewrite the generated part of bench/RESULTS.md",
    )
    args = parser.parse_args()

    bursts = sizes(args.bursts if args.bursts is not None else ("200" if args.quick else "100,1000,5000"))
    webhook_count = args.webhook or (300 if args.quick else 2000)
    eso_mode = args.eso or ("skip" if args.quick else "build")
    eso_sizes = sizes(args.eso_sizes) if args.eso_sizes is not None else bursts
    eso_variants = [v for v in args.eso_variants.split(",") if v]
    refresh_variants = [v for v in args.eso_refresh_variants.split(",") if v]
    checkpoints = sizes(
        args.scale if args.scale is not None else ("" if args.quick else "1000,2500,5000,10000,15000,20000")
    )
    if args.skip_scale:
        checkpoints = []
    restart_at = set(sizes(args.startup_at))
    only = {kind for kind in args.only.split(",") if kind}

    def wanted(kind: str) -> bool:
        return not only or kind in only

    if not wanted("eso"):
        eso_mode = "skip"
    if not wanted("scale"):
        checkpoints = []

    out = Path(args.json).resolve().parent
    results = Results(
        Path(args.json),
        run={
            "mode": "quick" if args.quick else "full",
            "argv": sys.argv[1:],
            "client_threads": CLIENT_THREADS,
            "machine": machine(),
            "bursts": bursts,
            "eso_sizes": eso_sizes if eso_mode != "skip" else [],
            "eso_variants": eso_variants,
            "checkpoints": checkpoints,
        },
    )

    eso_binary = None
    if eso_mode != "skip":
        import eso as eso_module

        def find_eso() -> dict[str, Any]:
            nonlocal eso_binary
            eso_binary, info = eso_module.ensure_binary(build=eso_mode == "build")
            return info

        results.stage("eso-build", find_eso)  # before the control plane: a build would skew every figure

    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-") as scratch, ControlPlane() as plane:
        workdir = Path(scratch)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        lean = Lean(api.configuration)
        install_agentcred(api)
        operator = Agentcred(plane, lean, api, workdir, args.profile, out)
        peer = None
        try:
            if wanted("webhook"):
                results.stage("webhook", lambda: operator.webhook(webhook_count))
            for size in bursts:

                def floor_stage(size: int = size) -> dict[str, Any]:
                    namespace = f"bench-floor-{size}"
                    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
                    lean.call(
                        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "agent"}}
                    )
                    return measure_and_clean(
                        lambda: measure_floor(lean, namespace, size), lambda: clean(lean, namespace, size * 3)
                    )

                if wanted("floor"):
                    results.stage(f"floor-{size}", floor_stage)
                if wanted("agentcred"):
                    results.stage(f"agentcred-{size}", lambda size=size: operator.burst(size))
            if wanted("tokens"):
                token_requests = args.token_requests or (500 if args.quick else 3000)
                results.stage("tokens", lambda: operator.tokens(50, token_requests))

            if eso_binary is not None:
                import eso as eso_module

                peer = eso_module.Eso(lean, eso_binary, plane.kubeconfig, workdir, source=args.eso_source)

                def eso_setup() -> dict[str, Any]:
                    value = peer.apply_crds()
                    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": "bench-eso-probe"}})
                    value["garbage_collector_ready_seconds"] = peer.wait_for_garbage_collector("bench-eso-probe")
                    value["cleanup_seconds"] = clean(lean, "bench-eso-probe", 2)
                    return value

                if results.stage("eso-setup", eso_setup) is not None:
                    for variant in eso_variants:
                        for size in eso_sizes:

                            def eso_stage(variant: str = variant, size: int = size) -> dict[str, Any]:
                                namespace = f"bench-eso-{variant}-{size}"
                                lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})

                                def measure() -> dict[str, Any]:
                                    startup = peer.start(variant)
                                    # Deletion is the garbage collector's work, the same for every
                                    # variant: timed once per size, with the first variant.
                                    value = peer.burst(namespace, size, measure_delete=variant == eso_variants[0])
                                    return {**value, "startup_seconds": startup}

                                def cleanup() -> float:
                                    peer.stop()
                                    return clean(lean, namespace, size * 3)

                                return measure_and_clean(measure, cleanup)

                            results.stage(f"eso-{variant}-{size}", eso_stage)
                    if args.eso_refresh > 0 and refresh_variants:

                        def refresh_stage() -> dict[str, Any]:
                            namespace = "bench-eso-refresh"
                            lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})

                            def cleanup() -> float:
                                peer.stop()
                                return clean(lean, namespace, args.eso_refresh * 3)

                            return measure_and_clean(
                                lambda: peer.refresh(
                                    namespace,
                                    args.eso_refresh,
                                    interval=args.ttl * 2 / 3,
                                    window=args.window,
                                    variants=refresh_variants,
                                ),
                                cleanup,
                            )

                        results.stage("eso-refresh", refresh_stage)

            if checkpoints:

                def scale_stage() -> dict[str, Any]:
                    return operator.scale(
                        checkpoints,
                        args.credentials,
                        args.renewal_at,
                        args.window,
                        restart_at,
                        progress=lambda partial: results.record("scale", partial),
                        ttl=args.ttl,
                    )

                results.stage("scale", scale_stage)  # the last stage: the control plane goes with it
        finally:
            operator.stop()
            if peer is not None:
                peer.stop()
            results.data["run"]["seconds"] = round(time.monotonic() - results.started, 1)
            results.write()
            keep_logs(workdir, plane, out / "logs")

    print()
    print(report.text_table(results.data))
    print(f"\nwritten to {args.json}")
    try:
        written = report.write_outputs(results.data, out)
        for path in written:
            print(f"written {path}")
        if args.publish:
            for path in report.publish(results.data, out, BENCH / "plots", BENCH / "RESULTS.md"):
                print(f"published {path}")
    except Exception as error:  # noqa: BLE001 - the figures are safe in results.json already
        print(f"plots/report not written: {error}", file=sys.stderr)
        results.fail("report", error)
    if results.data["errors"]:
        print("\nstages that failed:", file=sys.stderr)
        for name, error in results.data["errors"].items():
            print(f"  {name}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
