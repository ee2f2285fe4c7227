"""Asking agentcred about a call the way gateways do: Envoy's ext_authz `Check` over gRPC (real
`CheckRequest` messages from Envoy's published protobufs, through grpcio), and HTTP forward-auth.
The gateway proves who it is with its ServiceAccount token."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from agents import service_account
from clusterkit import GATEWAY, Cluster, OperatorProcess, ensure_namespace

GATEWAY_HEADER = "x-agentcred-gateway"


def gateway_token(cluster: Cluster, who: tuple[str, str] = GATEWAY) -> str:
    """A token of the gateway's ServiceAccount (audience agentcred), as the gateway holds it."""
    namespace, name = who
    ensure_namespace(cluster, namespace)
    try:
        service_account(cluster, namespace, name)
    except Exception as error:  # already there
        if getattr(error, "status", None) != 409:
            raise
    spec = {"audiences": ["agentcred"], "expirationSeconds": 3600}
    return cluster.core.create_namespaced_service_account_token(name, namespace, {"spec": spec}).status.token


@dataclass
class Checked:
    allowed: bool
    status: int  # the HTTP status the agent gets (200 when allowed)
    headers: dict[str, str]  # set upstream (allowed) or sent to the agent (denied)
    removed: list[str]
    body: dict[str, Any]
    grpc_code: int


def check_request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    host: str = "tools.agents.svc",
    request_id: str = "req-1",
) -> Any:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id=request_id, method=method, path=path, host=host, headers={k.lower(): v for k, v in headers.items()}
    )
    if body is not None:
        http.raw_body = body
        http.size = len(body)
    else:  # as Envoy says it when it sends no body (with_request_body not set): the size only
        http.size = -1
    source = attribute_context_pb2.AttributeContext.Peer(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="10.0.0.7", port_value=40000))
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=source, request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


class ExtAuthz:
    """A gRPC client of the operator's ext_authz port, trusting its CA."""

    def __init__(self, operator: OperatorProcess, token: str | None) -> None:
        with open(operator.ca_file(), "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        self.channel = grpc.secure_channel(f"127.0.0.1:{operator.grpc_port}", credentials)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.metadata = [(GATEWAY_HEADER, f"Bearer {token}")] if token else []

    def close(self) -> None:
        self.channel.close()

    def raw(self, request: Any) -> Any:
        return self.stub.Check(request, metadata=self.metadata, timeout=30)

    def check(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None, **kw: Any) -> Checked:
        answer = self.raw(check_request(method, path, headers, body, **kw))
        if answer.HasField("ok_response"):
            ok = answer.ok_response
            return Checked(
                True,
                200,
                {h.header.key: h.header.value for h in ok.headers},
                list(ok.headers_to_remove),
                {},
                answer.status.code,
            )
        denied = answer.denied_response
        return Checked(
            False,
            int(denied.status.code),
            {h.header.key: h.header.value for h in denied.headers},
            [],
            json.loads(denied.body) if denied.body else {},
            answer.status.code,
        )


def mcp_call(tool: str, **arguments: Any) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    ).encode()


def forward_auth(
    operator: OperatorProcess, gateway: str, host: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """An MCP `tools/call` of search_docs at https://<host>/mcp asked about over HTTP forward-auth
    (the request line in X-Forwarded-*, no body): the status, and the answer's headers with its
    JSON body's fields."""
    request = urllib.request.Request(
        f"{operator.api_url}/v1/gateway/forward-auth",
        method="POST",
        headers={
            "X-Agentcred-Gateway": f"Bearer {gateway}",
            "X-Forwarded-Method": "POST",
            "X-Forwarded-Uri": "/mcp",
            "X-Forwarded-Host": host,
            "X-Forwarded-Proto": "https",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "search_docs",
            **headers,
        },
    )
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as answer:
            return answer.status, dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, {**dict(error.headers), **json.loads(error.read() or b"{}")}
