"""Envoy's external authorization over gRPC: `envoy.service.auth.v3.Authorization/Check`, as
Envoy, Istio (CUSTOM action), Envoy Gateway, kgateway and agentgateway send it, with the
request body when the gateway is configured to send it (`with_request_body`). The messages
are Envoy's published protobufs as the gRPC project ships them compiled (`xds-protos`).

The gateway authenticates with its ServiceAccount token in the call's metadata
(`x-agentcred-gateway: Bearer <token>`, Envoy's `grpc_service.initial_metadata`); the
server speaks TLS with the operator's serving certificate, re-read when it rotates.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from ...rules.gateway.requests import MAX_BODY, GatewayRequest, Refused, header_map, split_uri
from .service import GATEWAY_HEADER, Answer, GatewayService, refusal

log = logging.getLogger(__name__)

CONTRACT = "ext_authz"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"  # Envoy: "true" when it cut the body short
# A CheckRequest carries the body and every header: room for a body at the limit, no more.
MAX_MESSAGE = MAX_BODY + 256 * 1024
OVERWRITE = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
GRPC_CODES = {401: code_pb2.UNAUTHENTICATED, 429: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE}


def describe(check: Any) -> GatewayRequest:
    """The request an Envoy CheckRequest describes."""
    http = check.attributes.request.http
    if http.header_map.headers:
        pairs = [
            (h.key, h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value) for h in http.header_map.headers
        ]
    else:
        pairs = list(http.headers.items())
    headers = header_map(pairs)
    path, query = split_uri(http.path)
    body: bytes | None = None  # None: the gateway sends no body (with_request_body not set)
    if http.raw_body:
        body = bytes(http.raw_body)
    elif http.body:
        body = http.body.encode("utf-8")
    elif http.size == 0:
        body = b""
    truncated = headers.pop(PARTIAL_BODY_HEADER, "false").lower() == "true" or (
        body is not None and http.size > len(body)
    )
    host = (http.host or headers.get(":authority") or headers.get("host") or "").lower()
    agent_headers = {k: v for k, v in headers.items() if not k.startswith(":")}
    agent_headers["host"] = host
    address = check.attributes.source.address.socket_address.address
    return GatewayRequest(
        method=http.method.upper(),
        host=host,
        path=path,
        query=query or http.query,
        headers=agent_headers,
        body=body,
        body_truncated=truncated,
        request_id=http.id[:128],
        source=address[:64],
        scheme=(http.scheme or headers.get(":scheme") or "https").lower(),
    )


def response(answer: Answer) -> Any:
    if answer.allowed:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=OVERWRITE)
                    for k, v in answer.upstream_headers.items()
                ],
                headers_to_remove=list(answer.remove_headers),
            ),
        )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=GRPC_CODES.get(answer.status, code_pb2.PERMISSION_DENIED), message=answer.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=answer.status),
            headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=OVERWRITE)
                for k, v in answer.headers.items()
            ],
            body=answer.body.decode(),
        ),
    )


class Authorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's name)
        metadata = dict(context.invocation_metadata() or ())
        try:
            described = describe(request)
        except Refused as refused:
            return response(refusal(refused.status, refused.reason, refused.message, "request"))
        peer = str(context.peer() or "")
        return response(await self.service.check(described, CONTRACT, metadata.get(GATEWAY_HEADER), peer))


class _Certificates:
    """The serving certificate's files, read again when they change (the monitor rotates them)."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self._seen: tuple[float, float] | None = None

    def configuration(self) -> Any:
        seen = (os.stat(self.certfile).st_mtime, os.stat(self.keyfile).st_mtime)
        self._seen = seen
        return grpc.ssl_server_certificate_configuration([(self.keyfile.read_bytes(), self.certfile.read_bytes())])

    def changed(self) -> Any:
        try:
            seen = (os.stat(self.certfile).st_mtime, os.stat(self.keyfile).st_mtime)
        except OSError:
            return None
        return self.configuration() if seen != self._seen else None


async def serve(service: GatewayService, address: str, port: int, certfile: Path, keyfile: Path) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", 64 * 1024)]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authorization(service), server)
    certificates = _Certificates(certfile, keyfile)
    credentials = grpc.dynamic_ssl_server_credentials(certificates.configuration(), certificates.changed)
    server.add_secure_port(f"{address}:{port}", credentials)
    await server.start()
    log.info("serving Envoy ext_authz (gRPC) on %s:%d", address, port)
    return server
