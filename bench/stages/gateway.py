"""`gateway`: agentcred deciding gateways' calls, next to the floor for this design (10 s per
point; quick: 2 s).

The operator (a lone replica on the shared control plane, one allowed gateway, its audit
written to a file), one gateway-only jwt credential (an MCP route: each allowed call gets
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
The figures are `bench.hot_paths` points: the Caddy floor beside agentcred in the report's
hot-path table and plot.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from agentcred.api import labels, model
from agentcred.devcluster.binaries import ensure_caddy
from agentcred.devcluster.controlplane import free_port

from ..context import REPO, Context, clean, measure_and_clean
from ..harness import wait_count
from ..hot_paths import AGENTCRED, FLOOR, point, run_callers
from ..processes import Child
from ..under_test import UnderTest, pod_body

NAMESPACE = "bench-gateway"
GATEWAY = ("agentcred", "bench-gateway")
KEY = "sk-bench-0123456789"
CALLERS = (1, 16, 100)
DOCS_RESOURCE = "docs:{arguments.collection}"
DEPLOYMENT_PATH = "/openai/deployments/{deployment}/chat/completions"
TARGETS = {"p99_ms_at_16": 5.0, "decisions_per_s": 2000.0, "caddy_p99_ratio": 2.0}
DECISION_PATHS = {"ext_authz": "ext_authz decision (gRPC)", "forward_auth": "forward-auth decision (HTTPS)"}
TOOL_CALL = "tool call through Caddy"


def run(ctx: Context) -> dict[str, Any]:
    operator, seconds = ctx.operator, ctx.options.gateway_seconds
    caddy = ensure_caddy()
    # The budget is per pod; the benchmark measures decisions, not the budget.
    unlimited = {"AGENTCRED_GATEWAY_RATE": "1000000", "AGENTCRED_GATEWAY_BURST": "1000000"}
    operator.start("--gateway", "/".join(GATEWAY), env=unlimited)

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, NAMESPACE, max(CALLERS) * 3)
        finally:
            operator.stop()

    def measure() -> dict[str, Any]:
        setup = prepare(operator, ctx.workdir)
        with operator.profiled("gateway"):
            decided = asyncio.run(decisions(operator, setup, seconds))
            called = asyncio.run(through_caddy(caddy, operator, setup, ctx.workdir, seconds))
        return {"decisions": decided, "caddy": called}

    results: dict[str, Any] = {"seconds_per_point": seconds, "targets": TARGETS}
    results.update(measure_and_clean(measure, stop_after_cleaning))
    results["verdict"] = verdict(results)
    results["paths"] = [
        *(point(DECISION_PATHS[c], AGENTCRED, p) for c in DECISION_PATHS for p in results["decisions"][c]),
        *(point(TOOL_CALL, who, results["caddy"][name]) for name, who in CADDY_WHO.items()),
    ]
    return results


def check_request(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
    """A CheckRequest as Envoy sends one with the request body (Envoy's published protobufs)."""
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="bench", method=method, path=path, host="tools.agents.svc", headers=headers, raw_body=body, size=len(body)
    )
    source = attribute_context_pb2.AttributeContext.Peer(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="10.0.0.7", port_value=40000))
    )
    request = attribute_context_pb2.AttributeContext.Request(http=http)
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(source=source, request=request)
    )


def mcp_call(tool: str, **arguments: Any) -> bytes:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return json.dumps(call).encode()


def prepare(operator: UnderTest, work: Path) -> dict[str, Any]:
    """Two gateway-only credentials, 100 admitted and released pods, a bound identity token
    for each, the gateway's own token, and the operator's CA."""
    lean = operator.lean
    operator.namespace(NAMESPACE, credentials=0)
    lean.call("POST", f"/api/v1/namespaces/{GATEWAY[0]}/serviceaccounts", {"metadata": {"name": GATEWAY[1]}})
    lean.call(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
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
    pods_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    lean.run_all(lambda i: lean.call("POST", pods_path, pod_body(f"agent-{i}", "docs,llm")), range(pods))

    def released() -> list[dict[str, Any]]:
        return [pod for pod in lean.json("GET", pods_path)["items"] if not pod["spec"].get("schedulingGates")]

    wait_count(lambda: len(released()), pods, f"{pods} pods admitted and released", stall=300, interval=1.0)

    def token(namespace: str, account: str, pod: dict[str, Any] | None = None) -> str:
        spec: dict[str, Any] = {"audiences": ["agentcred"], "expirationSeconds": 3600}
        if pod is not None:
            meta = pod["metadata"]
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        return str(lean.json("POST", path, {"spec": spec})["status"]["token"])

    tokens = [token(NAMESPACE, "agent", pod) for pod in released()]
    gateway_token = token(*GATEWAY)
    ca = lean.json("GET", "/api/v1/namespaces/agentcred/configmaps/agentcred-ca-bundle")["data"][labels.CA_KEY]
    (work / "ca.crt").write_text(ca)
    (work / "gateway-token").write_text(gateway_token)
    return {"tokens": tokens, "gateway": gateway_token, "ca": str(work / "ca.crt")}


async def decisions(operator: UnderTest, setup: dict[str, Any], seconds: float) -> dict[str, Any]:
    tokens, found = setup["tokens"], {}
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(setup["ca"]).read_bytes())
    metadata = (("x-agentcred-gateway", f"Bearer {setup['gateway']}"),)
    body = mcp_call("search_docs", collection="handbook", query="rotate")
    requests = [
        check_request("POST", "/mcp", {"authorization": f"Bearer {t}", "content-type": "application/json"}, body)
        for t in tokens
    ]
    async with grpc.aio.secure_channel(f"127.0.0.1:{operator.running.grpc_port}", credentials) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def check(i: int) -> str:
            answer = await stub.Check(requests[i % len(requests)], metadata=metadata, timeout=30)
            return "ok" if answer.HasField("ok_response") else f"denied:{answer.status.message}"

        await run_callers(4, 1.0, check)  # warm: every token reviewed once
        found["ext_authz"] = [await run_callers(n, seconds, check) for n in CALLERS]

    context = ssl.create_default_context(cafile=setup["ca"])
    url = f"{operator.running.api_url}/v1/gateway/forward-auth"
    headers = [
        {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/openai/deployments/small-1/chat/completions",
         "X-Forwarded-Host": "llm.bench.svc", "Authorization": f"Bearer {t}",
         "X-Agentcred-Gateway": f"Bearer {setup['gateway']}"}
        for t in tokens
    ]  # fmt: skip
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=200)) as session:

        async def forward(i: int) -> str:
            async with session.get(url, headers=headers[i % len(headers)]) as response:
                await response.read()
                return "ok" if response.status == 200 else f"status:{response.status}"

        await run_callers(4, 1.0, forward)
        found["forward_auth"] = [await run_callers(n, seconds, forward) for n in CALLERS]
    for contract, points in found.items():
        for p in points:
            print(f"{contract:>13} {p['callers']:>4} callers: {p['per_second']:8.0f}/s  "
                  f"p50 {p['latency_ms']['p50']:6.2f} ms  p99 {p['latency_ms']['p99']:6.2f} ms  "
                  f"failed {p['failed']}")  # fmt: skip
    return found


CADDYFILES = {
    "no authorization": "reverse_proxy {$OPEN_UPSTREAM}",
    "fixed header": "request_header X-Api-Key {$FIXED_KEY}\n\t\treverse_proxy {$MODEL_UPSTREAM}",
}
CADDY_WHO = {"no authorization": FLOOR, "fixed header": "a static key in Caddy", "agentcred forward_auth": AGENTCRED}


def plain_caddyfile(route: str) -> str:
    return (
        "{\n\tadmin off\n\tauto_https off\n\tstorage file_system {$CADDY_STORAGE}\n}\n\n"
        "{$LISTEN} {\n\thandle {\n\t\t" + route + "\n\t}\n}\n"
    )


async def through_caddy(
    caddy: Path, operator: UnderTest, setup: dict[str, Any], work: Path, seconds: float
) -> dict[str, Any]:
    """A tool call through Caddy at 16 callers, for each configuration, to a model-API stand-in."""
    model_port, open_port = free_port(), free_port()
    key_file = work / "api-key"
    key_file.write_text(KEY)
    stand_in = [sys.executable, str(REPO / "examples/gateway/model_api.py"), "--host", "127.0.0.1"]
    upstreams = [
        Child("model API", [*stand_in, "--port", str(model_port), "--key-file", str(key_file)], work / "model.log"),
        # The floor's upstream checks no key (the same stand-in, nothing to compare).
        Child("open model API", [*stand_in, "--port", str(open_port), "--any-key"], work / "model.log"),
    ]
    env = {**os.environ, "AGENTCRED_URL": operator.running.api_url, "AGENTCRED_CA": setup["ca"], "HOME": str(work),
           "GATEWAY_TOKEN_FILE": str(work / "gateway-token"), "MODEL_UPSTREAM": f"127.0.0.1:{model_port}",
           "OPEN_UPSTREAM": f"127.0.0.1:{open_port}",
           "MCP_UPSTREAM": f"127.0.0.1:{model_port}", "FIXED_KEY": KEY, "CADDY_STORAGE": str(work / "caddy"),
           "XDG_DATA_HOME": str(work), "XDG_CONFIG_HOME": str(work)}  # fmt: skip
    configurations = {name: plain_caddyfile(body) for name, body in CADDYFILES.items()}
    configurations["agentcred forward_auth"] = (REPO / "examples/gateway/Caddyfile").read_text()
    tokens, found = setup["tokens"], {}
    try:
        for name, text in configurations.items():
            port = free_port()
            config = work / f"Caddyfile-{port}"
            config.write_text(text)
            args = [str(caddy), "run", "--config", str(config), "--adapter", "caddyfile"]
            with Child(
                f"Caddy ({name})", args, work / "caddy.log", {**env, "LISTEN": f"http://127.0.0.1:{port}"}
            ) as proxy:
                found[name] = await tool_calls(proxy, port, tokens, seconds)
            p = found[name]
            print(f"caddy, {name:>22}: {p['per_second']:7.0f}/s  p50 {p['latency_ms']['p50']:6.2f} ms  "
                  f"p99 {p['latency_ms']['p99']:6.2f} ms  failed {p['failed']}")  # fmt: skip
    finally:
        for upstream in upstreams:
            upstream.stop()
    return found


async def tool_calls(proxy: Child, port: int, tokens: list[str], seconds: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/openai/deployments/small-1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                break
            except aiohttp.ClientError:
                proxy.assert_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Caddy did not answer on {port}") from None
                await asyncio.sleep(0.1)

        async def call(i: int) -> str:
            headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Content-Type": "application/json"}
            async with session.post(url, data=b'{"messages": []}', headers=headers) as response:
                await response.read()
                return "ok" if response.status == 200 else f"status:{response.status}"

        await run_callers(4, 1.0, call)
        return await run_callers(16, seconds, call)


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
