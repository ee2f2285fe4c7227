"""An MCP agent whose only credential is its pod's identity.

It gets its access tokens with the `mcp` SDK's own OAuth client, `PrivateKeyJWTOAuthProvider`:
the server's 401 names its RFC 9728 metadata, that names the authorization server, whose
RFC 8414 metadata gives the token endpoint; the token request is `client_credentials` with a
JWT client assertion (RFC 7523 §2.2) -- here the pod's projected ServiceAccount token, read
from the file the kubelet keeps fresh -- and `resource` = the server (RFC 8707). When the
server answers a call 403 `insufficient_scope`, the SDK asks for the scope it names and
retries (step-up). `issuer` pins the authorization server: the pod's token is only ever sent
to agentcred, whatever a server's metadata says.

In a pod that asks agentcred for a minted credential, the webhook sets everything it reads:
AGENTCRED_ISSUER, AGENTCRED_IDENTITY_TOKEN_FILE and AGENTCRED_CA_FILE. MCP_SERVER_URL names
the server.

    MCP_SERVER_URL=http://docs-mcp.agents.svc:8000/mcp python agent.py

With a sender-constrained credential (`dpop: required`), the agent holds a token bound to a
key written next to it (MCP_TOKEN_FILE and MCP_DPOP_KEY_FILE, the credential's `token` and
`dpop.jwk`): every request carries a fresh DPoP proof (RFC 9449, dpop_auth.py on joserfc), and
a step-up exchanges that token at AGENTCRED_TOKEN_ENDPOINT for one with the scope the server
names -- bound to the same key. A copy of any of its tokens is useless without the key.

Through a gateway that asks agentcred about every call (`MCP_GATEWAY=true`, MCP_SERVER_URL
the gateway's URL; see examples/gateway), the agent holds no token for the server at all: it
shows the gateway its identity token, and the gateway attaches what agentcred hands it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from dpop_auth import DPoPAuth, DPoPKey, StepUpRefused
from mcp import Client
from mcp.client.auth import OAuthTokenError
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPError


class MemoryStorage:
    """Tokens live as long as the process (they last minutes; the pod's identity gets more)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def pod_identity(token_file: str) -> Callable[[str], Awaitable[str]]:
    """The assertion provider: the pod's projected ServiceAccount token, read at each use
    because the kubelet rotates it. Its audience is fixed when the pod is created
    (`agentcred`, which the token service accepts as well as its issuer URL)."""

    async def assertion(audience: str) -> str:
        return Path(token_file).read_text().strip()

    return assertion


def client_id(token_file: str) -> str:
    """The client is the ServiceAccount: the assertion's `sub` (RFC 7523 §3), read, not trusted
    -- the authorization server checks the token."""
    payload = Path(token_file).read_text().strip().split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


class GatewayIdentity(httpx2.Auth):
    """Through a gateway: the pod's identity token as the bearer of every request (read from its
    file at each use: the kubelet rotates it), and -- as MCP 2026-07-28 clients send them -- the
    Mcp-Method and Mcp-Name headers naming what each message does, so that a gateway that sees
    no body (forward-auth) can have the call decided from them."""

    def __init__(self, token_file: str) -> None:
        self.token_file = token_file

    def auth_flow(self, request: httpx2.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {Path(self.token_file).read_text().strip()}"
        try:
            message = json.loads(request.content) if request.method == "POST" else None
        except ValueError:
            message = None
        if isinstance(message, dict) and isinstance(message.get("method"), str):
            request.headers.setdefault("Mcp-Method", message["method"])
            name = (message.get("params") or {}).get("name")
            if message["method"] == "tools/call" and isinstance(name, str):
                request.headers.setdefault("Mcp-Name", name)
        yield request


@dataclass(frozen=True)
class Settings:
    server_url: str
    issuer: str
    token_file: str
    cafile: str | None
    gateway: bool = False  # through a gateway that asks agentcred: no token of the agent's own
    value_file: str | None = None  # a DPoP-bound token (the credential's projected value) ...
    key_file: str | None = None  # ... and the key it is bound to
    token_endpoint: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server_url=os.environ["MCP_SERVER_URL"],
            issuer=os.environ["AGENTCRED_ISSUER"],
            token_file=os.environ["AGENTCRED_IDENTITY_TOKEN_FILE"],
            cafile=os.environ.get("AGENTCRED_CA_FILE"),
            gateway=os.environ.get("MCP_GATEWAY", "").lower() == "true",
            value_file=os.environ.get("MCP_TOKEN_FILE"),
            key_file=os.environ.get("MCP_DPOP_KEY_FILE"),
            token_endpoint=os.environ.get("AGENTCRED_TOKEN_ENDPOINT"),
        )


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Client]:
    """An MCP client session with the server, authorized by agentcred."""
    auth: httpx2.Auth
    if settings.gateway:
        auth = GatewayIdentity(settings.token_file)
    elif settings.key_file and settings.value_file:
        value_file = settings.value_file
        auth = DPoPAuth(
            lambda: Path(value_file).read_text().strip(),
            DPoPKey(settings.key_file),
            settings.token_endpoint or f"{settings.issuer}/oauth2/token",
            settings.server_url,
        )
    else:
        auth = PrivateKeyJWTOAuthProvider(
            server_url=settings.server_url,
            storage=MemoryStorage(),
            client_id=client_id(settings.token_file),
            assertion_provider=pod_identity(settings.token_file),
            issuer=settings.issuer,
        )
    context = ssl.create_default_context()  # public CAs for the server, and agentcred's CA
    if settings.cafile:
        context.load_verify_locations(settings.cafile)
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(auth=auth, verify=context, timeout=timeout) as http:
        async with Client(streamable_http_client(settings.server_url, http_client=http)) as client:
            yield client


async def run(settings: Settings) -> int:
    """Search (allowed), then try to delete (not allowed). The delete is refused twice over:
    the server answers 403 insufficient_scope naming the scope it needs; the SDK asks agentcred
    for it, which refuses (invalid_scope: outside the agent's AgentCredential). The SDK then
    ends the connection with that error."""
    refusal = None
    try:
        async with connect(settings) as client:
            tools = await client.list_tools()
            print("tools:", ", ".join(tool.name for tool in tools.tools))
            found = await client.call_tool("search_docs", {"query": "rotate"})
            print("search_docs:", *(getattr(item, "text", item) for item in found.content))
            deleted = await client.call_tool("delete_docs", {"titles": ["rotation"]})
            print("delete_docs was not refused:", *(getattr(item, "text", item) for item in deleted.content))
    except* (OAuthTokenError, StepUpRefused) as refused:
        refusal = refused.exceptions[0]
    except* MCPError as refused:  # through a gateway: agentcred's refusal, passed on by the gateway
        refusal = refused.exceptions[0]
    if refusal is None:
        return 1
    print("delete_docs refused:", refusal)
    return 0


if __name__ == "__main__":
    # The SDK logs a failed token request with its traceback before raising it; run() reports
    # the refusal itself, once.
    logging.getLogger("mcp.client.auth").setLevel(logging.CRITICAL)
    sys.exit(asyncio.run(run(Settings.from_env())))
