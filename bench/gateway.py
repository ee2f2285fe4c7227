"""Gateway figures: agentcred deciding gateways' calls, next to the floor for this design.

    python bench/gateway.py              # `make bench`: 10 s per point
    python bench/gateway.py --quick      # `make bench-quick`: 2 s per point

Starts the local control plane and the operator (a lone replica, one allowed gateway, its
audit written to a file), one gateway-only jwt credential (an MCP route: each allowed call gets
a token minted for it) and one gateway-only static key (a model API route), and 100 admitted
agent pods, each caller using its own pod's projected identity token (reviewed by the API
server once per 10 s per token, as in production). Then:

  decisions   Envoy's ext_authz Check over gRPC (real CheckRequests, a tools/call body) and
              HTTP forward-auth (as Caddy sends it), at 1, 16 and 100 concurrent callers:
              decisions per second and the caller's round-trip latency p50/p99 (transport
              included), every call allowed, audited and given its upstream credential
  caddy       a tool call through Caddy (built from its Go modules) at 16 concurrent callers to
              a model-API stand-in: with no authorization (the floor), with a fixed header (what
              a static key in the gateway's config costs), and with forward_auth to agentcred

Everything shares the machine's 2 cores (callers, operator, API server, Caddy, upstream).
Figures go to bench/out/gateway.json and bench/out/gateway.png (--publish: bench/plots/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402

from agentcred.api import labels, model  # noqa: E402
from agentcred.devcluster.binaries import ensure_binaries, ensure_caddy  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane, free_port  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from gateways import check_request, mcp_call  # noqa: E402
from harness import Lean, log_tail, summary_ms, wait_count  # noqa: E402

OUT = BENCH / "out"
NAMESPACE = "bench-gateway"
GATEWAY = ("agentcred", "bench-gateway")
KEY = "sk-bench-0123456789"
CALLERS = (1, 16, 100)
DOCS_RESOURCE = "docs:{arguments.collection}"
DEPLOYMENT_PATH = "/openai/deployments/{deployment}/chat/completions"
TARGETS = {"p99_ms_at_16": 5.0, "decisions_per_s": 2000.0, "caddy_p99_ratio": 2.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per point")
    parser.add_argument("--seconds", type=float, help="seconds per point (default 10)")
    parser.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    parser.add_argument("--replot", action="store_true", help="only draw the plot again from bench/out/gateway.json")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    if args.replot:
        plot(json.loads((OUT / "gateway.json").read_text()), OUT / "gateway.png")
        if args.publish:
            shutil.copy(OUT / "gateway.png", BENCH / "plots" / "gateway.png")
        return 0
    ensure_binaries()
    caddy_binary = ensure_caddy()
    results: dict[str, Any] = {"seconds_per_point": seconds, "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-gateway-") as scratch, ControlPlane() as plane:
        work = Path(scratch)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = Operator(plane, work)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            operator.start()
            setup = prepare(api, operator, work)
            results["decisions"] = asyncio.run(decisions(operator, setup, seconds))
            model_port, open_port = free_port(), free_port()
            key_file = work / "api-key"
            key_file.write_text(KEY)
            stand_in = [sys.executable, str(REPO / "examples/gateway/model_api.py"), "--host", "127.0.0.1"]
            processes.append(spawn([*stand_in, "--port", str(model_port), "--key-file", str(key_file)], work / "m.log"))
            # The floor's upstream checks no key (the same stand-in, nothing to compare).
            processes.append(spawn([*stand_in, "--port", str(open_port), "--any-key"], work / "m.log"))
            results["caddy"] = asyncio.run(
                through_caddy(caddy_binary, operator, setup, work, model_port, open_port, seconds, processes)
            )
        except BaseException:
            print(log_tail(work / "operator.log", 40), file=sys.stderr)
            raise
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
            operator.stop()
    results["verdict"] = verdict(results)
    report(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gateway.json").write_text(json.dumps(results, indent=2))
    plot(results, OUT / "gateway.png")
    if args.publish:
        (BENCH / "plots").mkdir(exist_ok=True)
        shutil.copy(OUT / "gateway.png", BENCH / "plots" / "gateway.png")
    print(f"written {OUT / 'gateway.json'} and {OUT / 'gateway.png'}")
    return 0


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


class Operator:
    def __init__(self, plane: ControlPlane, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.plane, self.workdir, self.env = plane, workdir, env or {}
        self.api_port, self.health_port, self.grpc_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        webhook = free_port()
        self.process = spawn(
            [sys.executable, "-m", "agentcred", "run", "--standalone", "--namespace", "agentcred",
             "--webhook-address", "127.0.0.1", "--webhook-port", str(webhook),
             "--webhook-url", f"https://127.0.0.1:{webhook}", "--api-address", "127.0.0.1",
             "--api-port", str(self.api_port), "--issuer", self.url, "--health-address", "127.0.0.1",
             "--health-port", str(self.health_port), "--audit-log", str(self.workdir / "audit.log"),
             "--gateway", "/".join(GATEWAY), "--gateway-grpc-port", str(self.grpc_port)],
            self.workdir / "operator.log",
            # The budget is per pod; the benchmark measures decisions, not the budget.
            env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig), "PYTHONPATH": str(REPO / "operator"),
                 "AGENTCRED_GATEWAY_RATE": "1000000", "AGENTCRED_GATEWAY_BURST": "1000000", **self.env},
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while self._ready() != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become ready:\n{log_tail(self.workdir / 'operator.log')}")
            time.sleep(0.1)

    def _ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                return int(response.status)
        except OSError:
            return 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def prepare(api: client.ApiClient, operator: Operator, work: Path) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    lean = Lean(api.configuration)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "agent"}})
    core.create_namespaced_service_account(GATEWAY[0], {"metadata": {"name": GATEWAY[1]}})
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": "model-key", "labels": {labels.SHARED_LABEL: "true"},
                         "annotations": {labels.SHARED_WITH_ANNOTATION: "llm/api-key"}},
            "stringData": {"api-key": KEY},
        },
    )  # fmt: skip
    common = {
        "owner": "bench@example.com",
        "subjects": {"serviceAccounts": ["agent"]},
        "projection": {"delivery": "gateway"},
    }
    credentials = {
        "docs": {
            **common,
            "category": "tool",
            "source": {"jwt": {"audiences": ["https://docs.bench.svc"]}},
            "scope": {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]},
            "gateway": {"routes": [{"name": "docs", "path": "/mcp", "mcp": {"resource": DOCS_RESOURCE}}]},
        },
        "llm": {
            **common,
            "category": "model",
            "source": {"secretRef": {"name": "model-key", "key": "api-key"}},
            "exception": {"reason": "bench", "approvedBy": "bench", "expires": "2999-01-01"},
            "scope": {"tools": ["llm"], "actions": ["invoke"], "resources": ["model:small-*"]},
            "gateway": {
                "routes": [{"name": "deployments", "methods": ["POST"], "path": DEPLOYMENT_PATH,
                            "intent": {"tool": "llm", "action": "invoke", "resource": "model:{path.deployment}"}}],
                "upstream": {"name": "X-Api-Key", "prefix": ""},
            },
        },
    }  # fmt: skip
    for name, spec in credentials.items():
        lean.call("POST", f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}",
                  {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": name},
                   "spec": spec})  # fmt: skip
    time.sleep(3)  # Ready, and in the webhook's index
    pods = max(CALLERS)

    def pod(i: int) -> None:
        lean.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"agent-{i}", "labels": {labels.INJECT_LABEL: "true"},
                         "annotations": {labels.CREDENTIALS_ANNOTATION: "docs,llm"}},
            "spec": {"serviceAccountName": "agent", "restartPolicy": "Never",
                     "containers": [{"name": "agent", "image": "example.com/agent:1"}]},
        })  # fmt: skip

    lean.run_all(pod, range(pods))

    def released() -> int:
        listed = core.list_namespaced_pod(NAMESPACE).items
        return sum(1 for p in listed if not p.spec.scheduling_gates)

    wait_count(released, pods, f"{pods} pods admitted and released", stall=300, interval=1.0)
    tokens = []
    for item in core.list_namespaced_pod(NAMESPACE).items:
        spec = {"audiences": ["agentcred"], "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": item.metadata.name,
                                   "uid": item.metadata.uid}}  # fmt: skip
        tokens.append(core.create_namespaced_service_account_token("agent", NAMESPACE, {"spec": spec}).status.token)
    gateway_token = core.create_namespaced_service_account_token(
        GATEWAY[1], GATEWAY[0], {"spec": {"audiences": ["agentcred"], "expirationSeconds": 3600}}
    ).status.token
    ca = core.read_namespaced_config_map("agentcred-ca-bundle", "agentcred").data["ca.crt"]
    (work / "ca.crt").write_text(ca)
    (work / "gateway-token").write_text(gateway_token)
    return {"tokens": tokens, "gateway": gateway_token, "ca": str(work / "ca.crt")}


async def run_callers(callers: int, seconds: float, call: Any) -> dict[str, Any]:
    """`callers` concurrent loops of `call(i)` for `seconds`; round trips and failures."""
    latencies: list[float] = []
    failed: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            outcome = await call(i)
            if outcome == "ok":
                latencies.append(time.perf_counter() - started)
            else:
                failed[outcome] = failed.get(outcome, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(callers)))
    elapsed = time.perf_counter() - began
    return {
        "callers": callers,
        "per_second": len(latencies) / elapsed,
        "latency_ms": summary_ms(latencies),
        "failed": failed,
    }


async def decisions(operator: Operator, setup: dict[str, Any], seconds: float) -> dict[str, Any]:
    tokens, found = setup["tokens"], {}
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(setup["ca"]).read_bytes())
    metadata = (("x-agentcred-gateway", f"Bearer {setup['gateway']}"),)
    requests = [
        check_request("POST", "/mcp", {"authorization": f"Bearer {t}", "content-type": "application/json"},
                      mcp_call("search_docs", collection="handbook", query="rotate"))
        for t in tokens
    ]  # fmt: skip
    async with grpc.aio.secure_channel(f"127.0.0.1:{operator.grpc_port}", credentials) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def check(i: int) -> str:
            answer = await stub.Check(requests[i % len(requests)], metadata=metadata, timeout=30)
            return "ok" if answer.HasField("ok_response") else f"denied:{answer.status.message}"

        await run_callers(4, 1.0, check)  # warm: every token reviewed once
        found["ext_authz"] = [await run_callers(n, seconds, check) for n in CALLERS]

    context = ssl.create_default_context(cafile=setup["ca"])
    url = f"{operator.url}/v1/gateway/forward-auth"
    headers = [
        {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/openai/deployments/small-1/chat/completions",
         "X-Forwarded-Host": "llm.bench.svc", "Authorization": f"Bearer {t}",
         "X-Agentcred-Gateway": f"Bearer {setup['gateway']}"}
        for t in tokens
    ]  # fmt: skip
    connector = aiohttp.TCPConnector(ssl=context, limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def forward(i: int) -> str:
            async with session.get(url, headers=headers[i % len(headers)]) as response:
                await response.read()
                return "ok" if response.status == 200 else f"status:{response.status}"

        await run_callers(4, 1.0, forward)
        found["forward_auth"] = [await run_callers(n, seconds, forward) for n in CALLERS]
    for contract, points in found.items():
        for point in points:
            print(f"{contract:>13} {point['callers']:>4} callers: {point['per_second']:8.0f}/s  "
                  f"p50 {point['latency_ms']['p50']:6.2f} ms  p99 {point['latency_ms']['p99']:6.2f} ms  "
                  f"failed {point['failed']}")  # fmt: skip
    return found


CADDYFILES = {
    "no authorization": "reverse_proxy {$OPEN_UPSTREAM}",
    "fixed header": "request_header X-Api-Key {$FIXED_KEY}\n\t\treverse_proxy {$MODEL_UPSTREAM}",
}


async def through_caddy(
    caddy: Path,
    operator: Operator,
    setup: dict[str, Any],
    work: Path,
    model_port: int,
    open_port: int,
    seconds: float,
    processes: list[Any],
) -> dict[str, Any]:
    env = {**os.environ, "AGENTCRED_URL": operator.url, "AGENTCRED_CA": setup["ca"], "HOME": str(work),
           "GATEWAY_TOKEN_FILE": str(work / "gateway-token"), "MODEL_UPSTREAM": f"127.0.0.1:{model_port}",
           "OPEN_UPSTREAM": f"127.0.0.1:{open_port}",
           "MCP_UPSTREAM": f"127.0.0.1:{model_port}", "FIXED_KEY": KEY, "CADDY_STORAGE": str(work / "caddy"),
           "XDG_DATA_HOME": str(work), "XDG_CONFIG_HOME": str(work)}  # fmt: skip
    found: dict[str, Any] = {}
    configurations = {name: plain_caddyfile(body) for name, body in CADDYFILES.items()}
    configurations["agentcred forward_auth"] = (REPO / "examples/gateway/Caddyfile").read_text()
    tokens = setup["tokens"]
    for name, text in configurations.items():
        port = free_port()
        path = work / f"Caddyfile-{port}"
        path.write_text(text)
        process = spawn([str(caddy), "run", "--config", str(path), "--adapter", "caddyfile"], work / "caddy.log",
                        {**env, "LISTEN": f"http://127.0.0.1:{port}"})  # fmt: skip
        processes.append(process)
        url = f"http://127.0.0.1:{port}/openai/deployments/small-1/chat/completions"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/") as response:
                        await response.read()
                    break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(f"Caddy did not start:\n{log_tail(work / 'caddy.log')}") from None
                    await asyncio.sleep(0.1)

            async def call(i: int, session: aiohttp.ClientSession = session, url: str = url) -> str:
                headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Content-Type": "application/json"}
                async with session.post(url, data=b'{"messages": []}', headers=headers) as response:
                    await response.read()
                    return "ok" if response.status == 200 else f"status:{response.status}"

            await run_callers(4, 1.0, call)
            found[name] = await run_callers(16, seconds, call)
        process.terminate()
        process.wait(timeout=30)
        point = found[name]
        print(f"caddy, {name:>22}: {point['per_second']:7.0f}/s  p50 {point['latency_ms']['p50']:6.2f} ms  "
              f"p99 {point['latency_ms']['p99']:6.2f} ms  failed {point['failed']}")  # fmt: skip
    return found


def plain_caddyfile(route: str) -> str:
    return (
        "{\n\tadmin off\n\tauto_https off\n\tstorage file_system {$CADDY_STORAGE}\n}\n\n"
        "{$LISTEN} {\n\thandle {\n\t\t" + route + "\n\t}\n}\n"
    )


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    at16 = {c: next(p for p in results["decisions"][c] if p["callers"] == 16) for c in results["decisions"]}
    best = max(p["per_second"] for points in results["decisions"].values() for p in points)
    caddy = results["caddy"]
    ratio = caddy["agentcred forward_auth"]["latency_ms"]["p99"] / caddy["no authorization"]["latency_ms"]["p99"]
    return {
        "p99_ms_at_16": {c: round(p["latency_ms"]["p99"], 2) for c, p in at16.items()},
        "p99_at_16_met": {c: p["latency_ms"]["p99"] < TARGETS["p99_ms_at_16"] for c, p in at16.items()},
        "best_decisions_per_s": round(best),
        "decisions_per_s_met": best >= TARGETS["decisions_per_s"],
        "caddy_p99_ratio": round(ratio, 2),
        "caddy_p99_ratio_met": ratio <= TARGETS["caddy_p99_ratio"],
    }


def report(results: dict[str, Any]) -> None:
    v = results["verdict"]

    def said(met: bool) -> str:
        return "met" if met else "MISSED"

    print("\ntargets (2-core machine, everything on it):")
    for contract, p99 in v["p99_ms_at_16"].items():
        print(f"  decision p99 at 16 callers < 5 ms, {contract}: {p99} ms -> {said(v['p99_at_16_met'][contract])}")
    print(f"  >= 2,000 decisions/s: best {v['best_decisions_per_s']}/s -> {said(v['decisions_per_s_met'])}")
    print(f"  tool call p99 through Caddy <= 2x no-auth: {v['caddy_p99_ratio']}x -> {said(v['caddy_p99_ratio_met'])}")


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install '.[bench]')")
        return
    figure, (rate, latency, caddy) = plt.subplots(1, 3, figsize=(15, 4.5))
    for contract, points in results["decisions"].items():
        callers = [p["callers"] for p in points]
        (line,) = rate.plot(callers, [p["per_second"] for p in points], marker="o", label=contract)
        color = line.get_color()
        p99 = [p["latency_ms"]["p99"] for p in points]
        p50 = [p["latency_ms"]["p50"] for p in points]
        latency.plot(callers, p99, marker="o", color=color, label=f"{contract} p99")
        latency.plot(callers, p50, marker=".", linestyle="--", color=color, label=f"{contract} p50")
    rate.axhline(TARGETS["decisions_per_s"], color="grey", linestyle=":", label="target 2,000/s")
    latency.axhline(TARGETS["p99_ms_at_16"], color="grey", linestyle=":", label="target p99 5 ms (16 callers)")
    latency.set_yscale("log")
    for axis, title, unit in ((rate, "decisions per second", "decisions/s"), (latency, "decision latency", "ms")):
        axis.set_xscale("log")
        axis.set_xticks(list(CALLERS), [str(c) for c in CALLERS])
        axis.set_xlabel("concurrent callers")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.legend(fontsize=8)
    names = list(results["caddy"])
    p50 = [results["caddy"][n]["latency_ms"]["p50"] for n in names]
    p99 = [results["caddy"][n]["latency_ms"]["p99"] for n in names]
    positions = range(len(names))
    caddy.bar([x - 0.2 for x in positions], p50, width=0.4, label="p50")
    caddy.bar([x + 0.2 for x in positions], p99, width=0.4, label="p99")
    caddy.set_xticks(list(positions), names, fontsize=8)
    caddy.set_ylabel("ms")
    caddy.set_title("a tool call through Caddy, 16 callers")
    caddy.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
