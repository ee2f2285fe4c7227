"""examples/mcp end to end on the local control plane: an MCP server on the official SDK that
trusts only agentcred's tokens (verified with PyJWT), and an agent that gets its tokens with
the SDK's own OAuth client from its pod's identity -- a TokenRequest token bound to an
admitted pod, written to a file as the kubelet projects it. Nothing on either side is
agentcred's code."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthTokenError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agentcred.devcluster.controlplane import free_port
from agents import audit_lines, create_credential, service_account, start_agent
from clusterkit import REPO, Cluster, OperatorProcess, wait_for
from oauth import JWT_BEARER, bound_token, details, exchange, token_request

EXAMPLE = REPO / "examples" / "mcp"
SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}
SEARCH = "tool:search_docs action:call resource:docs:handbook"
DELETE = "tool:delete_docs action:call resource:docs:handbook"
OTHER_AUDIENCE = "https://other-tool.internal"


def _load(name: str) -> ModuleType:
    if str(EXAMPLE) not in sys.path:  # the agent imports dpop_auth from beside it, as `python agent.py` does
        sys.path.insert(0, str(EXAMPLE))
    spec = importlib.util.spec_from_file_location(f"mcp_example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mcp_server(operator: OperatorProcess, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The example server as its own process on loopback (plain HTTP), serving the test's
    namespace; its resource URL."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE / "server.py"),
                *("--issuer", operator.api_url, "--cafile", operator.ca_file()),
                *("--resource", resource, "--namespace", namespace),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp", timeout=5)
            return True
        except OSError:
            return process.poll() is not None  # stop waiting for a server that died

    wait_for(up, what="the example MCP server")
    assert process.poll() is None, log_path.read_text()[-3000:]
    yield resource
    process.terminate()
    process.wait(timeout=30)


def _credential(cluster: Cluster, namespace: str, resource: str) -> dict:
    """The agent's pod, admitted for a credential for the server that allows search_docs only."""
    service_account(cluster, namespace)
    create_credential(
        cluster, namespace, name="docs-mcp", source={"jwt": {"audiences": [resource, OTHER_AUDIENCE]}}, scope=SCOPE
    )
    return start_agent(cluster, namespace, credentials="docs-mcp")


def _post(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any], str]:
    """A raw JSON-RPC POST to the MCP endpoint: status, JSON body, WWW-Authenticate."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, {}, response.headers.get("WWW-Authenticate", "")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), error.headers.get("WWW-Authenticate", "")


def _call(tool: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


def _metadata_url(resource: str) -> str:
    return resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")


def test_the_server_answers_as_rfc_6750_and_rfc_9728_say(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, mcp_server: str
) -> None:
    pod = _credential(cluster, namespace, mcp_server)
    metadata_url = _metadata_url(mcp_server)

    # No token: 401, and the challenge points at the RFC 9728 metadata, which names agentcred.
    status, _, challenge = _post(mcp_server, _call("search_docs"))
    assert status == 401 and challenge.startswith("Bearer ")
    assert f'resource_metadata="{metadata_url}"' in challenge
    with urllib.request.urlopen(metadata_url, timeout=10) as response:
        metadata = json.loads(response.read())
    assert metadata["resource"] == mcp_server and metadata["authorization_servers"] == [operator.api_url]
    assert "scopes_supported" not in metadata  # clients ask per tool, when challenged

    def token(**fields: str) -> str:
        form = {"grant_type": JWT_BEARER, "assertion": bound_token(cluster, namespace, pod), **fields}
        status, answer, _ = token_request(operator, form)
        assert status == 200, answer
        return str(answer["access_token"])

    # A valid agentcred token for another audience, or no token at all: 401.
    for wrong in (token(resource=OTHER_AUDIENCE), "not.a.token"):
        status, body, challenge = _post(mcp_server, _call("search_docs"), wrong)
        assert (status, body["error"]) == (401, "invalid_token") and "resource_metadata=" in challenge

    # A token for this server that grants no tool (nothing asked for), and one that grants
    # search_docs only: 403 insufficient_scope, naming the scope the call needs.
    unnarrowed, search_only = token(resource=mcp_server), token(resource=mcp_server, scope=SEARCH)
    for held, tool, needed in ((unnarrowed, "search_docs", SEARCH), (search_only, "delete_docs", DELETE)):
        status, body, challenge = _post(mcp_server, _call(tool), held)
        assert (status, body["error"], body["scope"]) == (403, "insufficient_scope", needed)
        assert challenge.startswith('Bearer error="insufficient_scope"')
        assert f'scope="{needed}"' in challenge and f'resource_metadata="{metadata_url}"' in challenge

    # The same grant as authorization_details (RFC 9396), through the SDK's client with the
    # token as a plain bearer header: search_docs answers, delete_docs is refused.
    status, answer = exchange(
        operator,
        bound_token(cluster, namespace, pod),
        resource=mcp_server,
        authorization_details=details("search_docs", ["call"], "docs:handbook"),
    )
    assert status == 200 and "scope" not in answer, answer
    assert _post(mcp_server, _call("delete_docs"), answer["access_token"])[0] == 403

    async def with_bearer() -> tuple[Any, MCPError]:
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(streamable_http_client(mcp_server, http_client=http)) as client:
                found = await client.call_tool("search_docs", {"query": "rotate"})
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("delete_docs", {"titles": ["rotation"]})
                return found, refused.value

    found, refused = asyncio.run(with_bearer())
    assert not found.is_error and "rotation" in found.content[0].text
    assert "error response" in str(refused)  # the SDK's words for the 403 it got


def test_an_sdk_agent_with_its_pod_identity_calls_what_it_may_and_is_refused_the_rest(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, mcp_server: str, tmp_path: Path
) -> None:
    pod = _credential(cluster, namespace, mcp_server)
    # What the kubelet projects at AGENTCRED_IDENTITY_TOKEN_FILE: the pod's own token.
    identity = tmp_path / "token"
    identity.write_text(bound_token(cluster, namespace, pod))
    identity.chmod(0o600)
    agent = _load("agent")
    settings = agent.Settings(
        server_url=mcp_server, issuer=operator.api_url, token_file=str(identity), cafile=operator.ca_file()
    )

    async def search_then_delete() -> None:
        async with agent.connect(settings) as client:
            listed = [tool.name for tool in (await client.list_tools()).tools]
            assert sorted(listed) == ["delete_docs", "search_docs"]
            found = await client.call_tool("search_docs", {"query": "rotate"})
            assert not found.is_error and "rotation" in found.content[0].text
            await client.call_tool("delete_docs", {"titles": ["rotation"]})

    with pytest.raises(ExceptionGroup) as ended:
        asyncio.run(search_then_delete())
    # The server refused delete_docs with 403 insufficient_scope naming its scope; the SDK
    # stepped up, asking agentcred for the scope it had plus that one; agentcred refused the
    # whole request (invalid_scope, RFC 6749 §5.2) and the SDK ended the connection with it.
    refusal = ended.value.subgroup(OAuthTokenError)
    assert refusal is not None and len(refusal.exceptions) == 1
    text = str(refusal.exceptions[0])
    assert text.startswith("Token exchange failed (400): ")
    assert json.loads(text.removeprefix("Token exchange failed (400): ")) == {
        "error": "invalid_scope",
        "error_description": "tool 'delete_docs' is not in the credential's scope",
    }

    # agentcred's audit tells the same story: a token for the server with no tool (first
    # 401), then search_docs's scope (first 403), then the refused step-up to delete_docs.
    uid = pod["metadata"]["uid"]
    issued = audit_lines(operator, "exchange", podUID=uid)
    assert [line["grant"] for line in issued] == ["client_credentials", "client_credentials"]
    assert [line.get("intents") for line in issued] == [
        None,
        [{"tool": "search_docs", "action": "call", "resource": "docs:handbook"}],
    ]
    assert all(line["audience"] == [mcp_server] for line in issued)
    denied = audit_lines(operator, "deny", podUID=uid)
    assert [(line["grant"], line["reason"]) for line in denied] == [("client_credentials", "invalid_scope")]

    # Nothing was deleted; a new connection works.
    async def search_again() -> str:
        async with agent.connect(settings) as client:
            found = await client.call_tool("search_docs", {"query": "rotate"})
            return str(found.content[0].text)

    assert asyncio.run(search_again()).startswith("rotation:")

    # The agent as a pod runs it: configured only by the variables the webhook sets.
    env = {
        **os.environ,
        "MCP_SERVER_URL": mcp_server,
        "AGENTCRED_ISSUER": operator.api_url,
        "AGENTCRED_IDENTITY_TOKEN_FILE": str(identity),
        "AGENTCRED_CA_FILE": operator.ca_file(),
    }
    ran = subprocess.run(
        [sys.executable, str(EXAMPLE / "agent.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "search_docs: rotation:" in ran.stdout
    assert "delete_docs refused: Token exchange failed (400)" in ran.stdout and "invalid_scope" in ran.stdout
    assert "Traceback" not in ran.stderr
    leaked = identity.read_text() in ran.stdout + ran.stderr  # a bare `not in` would print it on failure
    assert not leaked, "the pod's identity token appears in the agent's output"


def test_a_dpop_bound_agent_calls_with_proofs_and_a_copy_of_its_token_is_useless(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, mcp_server: str, tmp_path: Path
) -> None:
    """The credential requires DPoP: the pod's value is bound to the key written beside it. The
    example agent (dpop_auth.py on joserfc, no agentcred code) calls with a proof per request
    and steps up by exchanging its bound value, with a proof, for the scope the server names;
    the server (PyJWT) checks each proof. The same token without the key gets nowhere."""
    import base64

    from agents import read_secret, secret_name_of
    from support.dpop import DPoPKey

    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        name="docs-mcp",
        source={"jwt": {"audiences": [mcp_server], "dpop": "required"}},
        scope=SCOPE,
    )
    pod = start_agent(cluster, namespace, credentials="docs-mcp")
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    assert secret is not None
    # What the kubelet writes at the credential's mountPath: the value and its key.
    value, key = tmp_path / "token", tmp_path / "dpop.jwk"
    value.write_bytes(base64.b64decode(secret["data"]["docs-mcp.token"]))
    key.write_bytes(base64.b64decode(secret["data"]["docs-mcp.dpop.jwk"]))
    for path in (value, key):
        path.chmod(0o600)
    identity = tmp_path / "identity"
    identity.write_text(bound_token(cluster, namespace, pod))
    env = {
        **os.environ,
        "MCP_SERVER_URL": mcp_server,
        "AGENTCRED_ISSUER": operator.api_url,
        "AGENTCRED_TOKEN_ENDPOINT": f"{operator.api_url}/oauth2/token",
        "AGENTCRED_IDENTITY_TOKEN_FILE": str(identity),
        "AGENTCRED_CA_FILE": operator.ca_file(),
        "MCP_TOKEN_FILE": str(value),
        "MCP_DPOP_KEY_FILE": str(key),
    }
    ran = subprocess.run(
        [sys.executable, str(EXAMPLE / "agent.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "search_docs: rotation:" in ran.stdout
    assert "delete_docs refused: Token exchange failed (400)" in ran.stdout and "invalid_scope" in ran.stdout
    leaked = value.read_text() in ran.stdout + ran.stderr
    assert not leaked, "the agent's token appears in its output"

    # The step-up token is bound to the same key, as PyJWT reads it.
    uid = pod["metadata"]["uid"]
    (stepped,) = [line for line in audit_lines(operator, "exchange", podUID=uid) if line.get("intents")]
    assert stepped["jkt"] == DPoPKey.from_private_jwk(json.loads(key.read_text())).jkt

    # A copy of the bound value: as a bearer token, as DPoP without a proof, with a proof by
    # another key -- each 401 at the server; at agentcred, no narrower token for it either.
    token = value.read_text()
    assert _post(mcp_server, _call("search_docs"), token)[0] == 401
    for proof in (None, DPoPKey().proof("POST", mcp_server, access_token=token)):
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": f"DPoP {token}",
            **({"DPoP": proof} if proof else {}),
        }
        request = urllib.request.Request(
            mcp_server, data=json.dumps(_call("search_docs")).encode(), headers=headers, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=15)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    status, answer = exchange(operator, token, "urn:ietf:params:oauth:token-type:access_token", scope=SEARCH)
    assert (status, answer["error"]) == (400, "invalid_dpop_proof")
