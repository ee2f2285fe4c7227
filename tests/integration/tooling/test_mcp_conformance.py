"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, npm) against
agentcred's authorization server and the examples/mcp server, on the local control plane.

It needs Node 22+ and the suite installed outside the repository; set AGENTCRED_MCP_CONFORMANCE
to the suite's `dist/index.js` (AGENTCRED_NODE to a node binary if `node` is older):

    mkdir -p /tmp/conformance && cd /tmp/conformance
    npm install @modelcontextprotocol/conformance@0.2.0-alpha.12   # 0.1.16 has no AS scenarios
    AGENTCRED_MCP_CONFORMANCE=/tmp/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js \\
        .venv/bin/python -m pytest tests/integration/tooling/test_mcp_conformance.py

Every check the suite makes is compared with EXPECTED: what passes, and for what fails why it
does not apply to a workload-only authorization server or an MCP server that accepts only
agentcred's tokens (README, "MCP conformance"). A check that changes status fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from test_mcp_example import mcp_server  # noqa: F401 (a fixture, the example server as a process)

from agentcred.devcluster.controlplane import free_port
from agents import create_credential, read_secret, secret_name_of, service_account, start_agent
from clusterkit import Cluster, OperatorProcess
from support.dpop import DPoPKey

SUITE = os.environ.get("AGENTCRED_MCP_CONFORMANCE", "")
NODE = os.environ.get("AGENTCRED_NODE", "node")

pytestmark = pytest.mark.skipif(
    not SUITE, reason="set AGENTCRED_MCP_CONFORMANCE to the conformance suite's dist/index.js (see the docstring)"
)


def _run(args: list[str], out: Path, env: dict[str, str] | None = None, timeout: float = 600) -> list[dict[str, Any]]:
    """The suite's checks (every checks.json it wrote under `out`)."""
    ran = subprocess.run(
        [NODE, SUITE, *args, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    checks = []
    for path in sorted(out.rglob("checks.json")):
        for check in json.loads(path.read_text()):
            checks.append({"scenario": path.parent.name, **check})
    assert checks or ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    return checks


STAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z?$")  # the suite's result folders end in a time


def _table(checks: list[dict[str, Any]]) -> dict[str, str]:
    """`scenario/check` -> status (INFO lines left out); server scenarios without "server-"."""
    table = {}
    for check in checks:
        if check["status"] == "INFO":
            continue
        scenario = STAMP.sub("", check["scenario"])
        if scenario.startswith("server-"):
            scenario = scenario.removeprefix("server-")
        table[f"{scenario}/{check['id']}"] = check["status"]
    return table


# The authorization server (agentcred): workload-only, so no browser flow and no client
# registration. README "MCP conformance" says what a tool server does instead.
EXPECTED_AS = {
    # No authorization code flow: agents have no browser and no user; `code`/PKCE would be a lie.
    "authorization-server-authorization-server-metadata-endpoint/authorization-server-metadata": "FAILURE",
    # Clients are pods, identified by their ServiceAccount tokens: no Client ID Metadata Documents.
    "authorization-server-authorization-server-metadata-endpoint/authorization-server-metadata-cimd": "WARNING",
    # Needs a registered client and a browser: not applicable.
    "authorization-server-authorization-code-grant/authorization-code-grant": "SKIPPED",
}
# The example's server, reached through the agent's side (a DPoP-bound token, a proof per
# request). It serves two docs tools; the suite's other scenarios call fixtures of an SDK's
# "everything server" (test_* tools, prompts, resources, sampling, elicitation, logging).
NOT_SERVED = {
    "completion-complete/completion-complete",
    "elicitation-sep1034-defaults/elicitation-sep1034-general",
    "elicitation-sep1330-enums/elicitation-sep1330-general",
    "logging-set-level/logging-set-level",
    "prompts-get-embedded-resource/prompts-get-embedded-resource",
    "prompts-get-simple/prompts-get-simple",
    "prompts-get-with-args/prompts-get-with-args",
    "prompts-get-with-image/prompts-get-with-image",
    "resources-read-binary/resources-read-binary",
    "resources-read-text/resources-read-text",
    "resources-subscribe/resources-subscribe",
    "resources-templates-read/resources-templates-read",
    "resources-unsubscribe/resources-unsubscribe",
    "tools-call-audio/tools-call-audio",
    "tools-call-elicitation/tools-call-elicitation",
    "tools-call-embedded-resource/tools-call-embedded-resource",
    "tools-call-image/tools-call-image",
    "tools-call-mixed-content/tools-call-mixed-content",
    "tools-call-sampling/tools-call-sampling",
    "tools-call-with-logging/tools-call-with-logging",
    "tools-call-with-progress/tools-call-with-progress",
}
PASSING = {
    "dns-rebinding-protection/localhost-host-rebinding-rejected",
    "dns-rebinding-protection/localhost-host-valid-accepted",
    "ping/ping",
    "prompts-list/prompts-list",
    "resources-list/resources-list",
    "server-initialize/server-initialize",
    "server-initialize/server-session-id-visible-ascii",
    "server-session-lifecycle/server-session-delete-accepted",
    "server-session-lifecycle/server-session-initialized-accepted",
    "server-session-lifecycle/server-session-terminated-returns-404",
    "server-sse-multiple-streams/server-accepts-multiple-post-streams",
    "server-sse-multiple-streams/server-sse-streams-functional",
    "tools-call-error/tools-call-error",
    "tools-call-simple-text/tools-call-simple-text",  # the SDK's text answer to an unknown tool
    "tools-list/tools-list",
    "tools-list/tools-name-format",
}


def test_authorization_server_scenarios(operator: OperatorProcess, tmp_path: Path) -> None:
    checks = _run(
        ["authorization", "--url", operator.api_url], tmp_path / "as", env={"NODE_EXTRA_CA_CERTS": operator.ca_file()}
    )
    assert _table(checks) == EXPECTED_AS


HOP = {"host", "content-length", "transfer-encoding", "connection", "authorization", "dpop"}


@pytest.fixture
def agent_side(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: object,
    namespace: str,
    mcp_server: str,  # noqa: F811 (the fixture imported above)
) -> Iterator[str]:
    """The suite's server scenarios connect without a token; the example server serves only
    agentcred's. This proxy is the agent's side of each call: a pod's DPoP-bound value and a
    fresh proof (PyJWT) on every request it forwards. Its URL."""
    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        name="docs-mcp",
        source={"jwt": {"audiences": [mcp_server], "dpop": "required"}},
        scope={"tools": ["*"], "actions": ["call"], "resources": ["docs:*"]},
    )
    pod = start_agent(cluster, namespace, credentials="docs-mcp")
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    assert secret is not None
    token = base64.b64decode(secret["data"]["docs-mcp.token"]).decode()
    key = DPoPKey.from_private_jwk(json.loads(base64.b64decode(secret["data"]["docs-mcp.dpop.jwk"])))
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = f"DPoP {token}"
        headers["DPoP"] = key.proof(request.method, mcp_server, access_token=token)
        async with ClientSession(auto_decompress=False) as session:
            async with session.request(
                request.method, mcp_server, headers=headers, data=await request.read(), allow_redirects=False
            ) as upstream:
                answer = web.StreamResponse(
                    status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
                )
                await answer.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await answer.write(chunk)
                await answer.write_eof()
                return answer

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/mcp", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"http://127.0.0.1:{port}/mcp"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def test_server_scenarios_against_the_example_server(agent_side: str, tmp_path: Path) -> None:
    checks = _run(["server", "--url", agent_side], tmp_path / "server", timeout=1200)
    found = _table(checks)
    wire = {name: status for name, status in found.items() if name.endswith("/wire-schema-valid")}
    assert set(wire.values()) == {"SUCCESS"}, wire  # every answer the server sent is well-formed
    expected = {name: "SUCCESS" for name in PASSING} | {name: "FAILURE" for name in NOT_SERVED}
    assert {k: v for k, v in found.items() if k not in wire} == expected
