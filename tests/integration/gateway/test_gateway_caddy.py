"""A real gateway end to end: Caddy (built from its Go modules) with `forward_auth` asking the
real operator about every call, in front of a model-API stand-in and the examples/mcp tool
server (official MCP SDK). The agent's pod holds only its identity; the upstream key and the
server's tokens are attached by the gateway; a call outside the agent's intents is refused by
the gateway with agentcred's reason; both are in the audit; agentcred unreachable, the
gateway refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentcred.devcluster.controlplane import free_port
from agents import audit_lines, create_credential, service_account, shared_secret, start_agent
from clusterkit import REPO, Cluster, OperatorProcess, wait_for
from gateways import gateway_token
from oauth import bound_token
from samples import EXCEPTION

EXAMPLES = REPO / "examples"
KEY = "sk-model-3c9e0a7b21"  # the model API's key: compared, never printed
MODEL_SCOPE = {"tools": ["llm"], "actions": ["invoke"], "resources": ["model:small-*"]}
DOCS_SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}


@dataclass
class Stack:
    namespace: str
    url: str  # Caddy
    pod: dict
    identity: Path  # the pod's identity token file, as the kubelet projects it
    mcp_resource: str
    logs: list[Path]


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def _up(url: str, process: subprocess.Popen[bytes]) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return process.poll() is not None


def caddy(
    cluster: Cluster, tmp: Path, agentcred_url: str, ca: str, model: int, mcp: int
) -> tuple[subprocess.Popen[bytes], str]:
    from agentcred.devcluster.binaries import ensure_caddy

    port = free_port()
    token = tmp / "gateway-token"
    token.write_text(gateway_token(cluster))
    token.chmod(0o600)
    env = {
        **os.environ,
        "LISTEN": f"http://127.0.0.1:{port}",
        "AGENTCRED_URL": agentcred_url,
        "AGENTCRED_CA": ca,
        "GATEWAY_TOKEN_FILE": str(token),
        "MODEL_UPSTREAM": f"127.0.0.1:{model}",
        "MCP_UPSTREAM": f"127.0.0.1:{mcp}",
        "CADDY_STORAGE": str(tmp / "caddy-storage"),
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp),
        "XDG_DATA_HOME": str(tmp),
    }
    log = tmp / f"caddy-{port}.log"
    process = _spawn(
        [str(ensure_caddy()), "run", "--config", str(EXAMPLES / "gateway" / "Caddyfile"), "--adapter", "caddyfile"],
        log,
        env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url, process), what="Caddy")
    assert process.poll() is None, log.read_text()[-3000:]
    return process, url


@pytest.fixture
def stack(cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path) -> Iterator[Stack]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        key_file = tmp_path / "api-key"
        key_file.write_text(KEY)
        model_port, mcp_port = free_port(), free_port()
        processes.append(
            _spawn(
                [
                    sys.executable,
                    str(EXAMPLES / "gateway" / "model_api.py"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(model_port),
                    "--key-file",
                    str(key_file),
                ],
                tmp_path / "model.log",
            )
        )
        resource = f"http://127.0.0.1:{mcp_port}/mcp"
        processes.append(
            _spawn(
                [
                    sys.executable,
                    str(EXAMPLES / "mcp" / "server.py"),
                    *("--issuer", operator.api_url, "--cafile", operator.ca_file()),
                    *("--resource", resource, "--namespace", namespace),
                    *("--host", "127.0.0.1", "--port", str(mcp_port)),
                ],
                tmp_path / "mcp.log",
            )
        )
        wait_for(
            lambda: _up(f"http://127.0.0.1:{mcp_port}/.well-known/oauth-protected-resource/mcp", processes[-1]),
            what="the MCP server",
        )
        service_account(cluster, namespace)
        shared_secret(cluster, namespace, KEY)
        create_credential(
            cluster,
            namespace,
            name="model",
            source={"secretRef": {"name": "upstream-key", "key": "api-key"}},
            exception=EXCEPTION,
            scope=MODEL_SCOPE,
            projection={"delivery": "gateway"},
            gateway={
                "routes": [
                    {
                        "name": "deployments",
                        "methods": ["POST"],
                        "path": "/openai/deployments/{deployment}/chat/completions",
                        "intent": {"tool": "llm", "action": "invoke", "resource": "model:{path.deployment}"},
                    },
                    {
                        "name": "chat",
                        "methods": ["POST"],
                        "path": "/v1/chat/completions",
                        "intent": {"tool": "llm", "action": "invoke", "resource": "model:{body.model}"},
                    },
                ],
                "upstream": {"name": "X-Api-Key", "prefix": ""},
            },
        )
        create_credential(
            cluster,
            namespace,
            name="docs",
            category="tool",
            source={"jwt": {"audiences": [resource]}},
            scope=DOCS_SCOPE,
            projection={"delivery": "gateway"},
            gateway={
                "routes": [
                    {"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook", "headerAgreement": True}}
                ]
            },
        )
        pod = start_agent(cluster, namespace, credentials="model,docs")
        identity = tmp_path / "identity-token"
        identity.write_text(bound_token(cluster, namespace, pod))
        identity.chmod(0o600)
        gateway, url = caddy(cluster, tmp_path, operator.api_url, operator.ca_file(), model_port, mcp_port)
        processes.append(gateway)
        yield Stack(namespace, url, pod, identity, resource, [tmp_path / "model.log", tmp_path / "mcp.log"])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def post(url: str, body: dict | bytes, headers: dict[str, str]) -> tuple[int, dict, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")[:200]}
        return error.code, parsed, dict(error.headers)


def test_the_model_api_gets_its_key_from_the_gateway_and_never_the_agents_token(
    operator: OperatorProcess, stack: Stack
) -> None:
    identity = {"Authorization": f"Bearer {stack.identity.read_text()}"}
    first = {**identity, "X-Request-Id": "caddy-model-1"}
    status, answer, _ = post(f"{stack.url}/openai/deployments/small-1/chat/completions", {"messages": []}, first)
    assert status == 200, answer
    assert answer["model"] == "small-1" and answer["sawAuthorization"] is False
    # A model outside the credential's scope: refused by the gateway, with agentcred's reason.
    status, answer, headers = post(
        f"{stack.url}/openai/deployments/large-1/chat/completions", {"messages": []}, identity
    )
    assert (status, answer["reason"]) == (403, "resource-not-allowed")
    assert headers["Www-Authenticate"].startswith('Bearer error="insufficient_scope"')
    # The model named only in the body: forward-auth sends no body, so it cannot be decided.
    status, answer, _ = post(f"{stack.url}/v1/chat/completions", {"model": "small-1"}, identity)
    assert (status, answer["reason"]) == (403, "no-body") and "forward-auth sends headers only" in answer[
        "error_description"
    ]
    # No identity: 401 with the challenge; a key the agent brings itself is removed.
    status, answer, headers = post(f"{stack.url}/openai/deployments/small-1/chat/completions", {}, {"X-Api-Key": KEY})
    assert (status, answer["reason"]) == (401, "no-token") and headers["Www-Authenticate"].startswith("Bearer ")
    lines = audit_lines(operator, "gateway", requestId="caddy-model-1")
    assert [(line["decision"], line["contract"], line["intent"]["resource"]) for line in lines] == [
        ("allow", "forward_auth", "model:small-1")
    ]
    assert lines[0]["fingerprint"].startswith("hmac-sha256:") and KEY not in operator.audit_text()


def test_the_mcp_agent_calls_its_tool_through_the_gateway_with_no_secret_of_its_own(
    operator: OperatorProcess, stack: Stack
) -> None:
    env = {
        **os.environ,
        "MCP_SERVER_URL": f"{stack.url}/mcp",
        "MCP_GATEWAY": "true",
        "AGENTCRED_ISSUER": operator.api_url,
        "AGENTCRED_IDENTITY_TOKEN_FILE": str(stack.identity),
    }
    ran = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp" / "agent.py")], env=env, capture_output=True, text=True, timeout=180
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    assert "search_docs: rotation:" in ran.stdout
    assert "delete_docs refused:" in ran.stdout
    leaked = stack.identity.read_text() in ran.stdout + ran.stderr
    assert not leaked
    uid = stack.pod["metadata"]["uid"]
    decided = [
        (line["decision"], line.get("intent", {}).get("tool"), line.get("reason"))
        for line in audit_lines(operator, "gateway", podUID=uid, contract="forward_auth")
        if line.get("mcpMethod") == "tools/call"
    ]
    assert ("allow", "search_docs", "allowed") in decided
    assert ("deny", "delete_docs", "tool-not-allowed") in decided


def test_headers_that_lie_about_the_body_do_not_get_a_call_through(operator: OperatorProcess, stack: Stack) -> None:
    """The route declares that its upstream enforces header/body agreement: agentcred decides
    the headers' call (allowed), the MCP server refuses the body that says otherwise -- and
    the token the gateway attached grants only the call agentcred decided."""
    lying = {
        "Authorization": f"Bearer {stack.identity.read_text()}",
        "Accept": "application/json, text/event-stream",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "search_docs",
    }
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "delete_docs", "arguments": {"titles": ["rotation"]}},
    }
    status, answer, _ = post(f"{stack.url}/mcp", call, lying)
    assert status == 400 and "disagrees with the body" in answer["error_description"]


def test_agentcred_unreachable_the_gateway_refuses(
    cluster: Cluster, operator: OperatorProcess, stack: Stack, tmp_path: Path
) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    gateway, url = caddy(cluster, tmp_path, dead, operator.ca_file(), free_port(), free_port())
    try:
        identity = {"Authorization": f"Bearer {stack.identity.read_text()}"}
        status, _, _ = post(f"{url}/openai/deployments/small-1/chat/completions", {"messages": []}, identity)
        assert status == 502  # Caddy's answer when forward_auth cannot reach agentcred: never the upstream's 200
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
