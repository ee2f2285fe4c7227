"""HTTP forward-auth: Caddy's `forward_auth`, nginx's `auth_request`, Traefik's ForwardAuth,
Envoy's HTTP ext_authz. The gateway sends the agent's request line and headers (no body) to
`/v1/gateway/forward-auth` on agentcred's HTTPS port; 200 allows, with the headers to set
upstream in the answer (the gateway copies them, removing the agent's own); anything else is
the refusal the agent gets.

What the gateway says of the original request: `X-Forwarded-Method`, `X-Forwarded-Uri` and
`X-Forwarded-Host` (Caddy, Traefik; nginx: `X-Original-Method` / `X-Original-URI`), and its
own ServiceAccount token in `X-Agentcred-Gateway`. These are trusted only from a gateway
that authenticated: an agent that reaches this endpoint itself is refused.
"""

from __future__ import annotations

from aiohttp import web

from ...rules.gateway.requests import GatewayRequest, Refused, header_map, split_uri
from .service import GATEWAY_HEADER, GatewayService, refusal

FORWARD_AUTH = web.AppKey("agentcred-forward-auth", GatewayService)
PATH = "/v1/gateway/forward-auth"
CONTRACT = "forward_auth"
# The gateway's own headers describing the request: not the agent's, never decided on.
HOP_HEADERS = frozenset(
    {
        GATEWAY_HEADER,
        "x-forwarded-method",
        "x-forwarded-uri",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-original-method",
        "x-original-uri",
        "x-original-url",
        "x-real-ip",
        "content-length",
        "connection",
    }
)


def add_routes(app: web.Application) -> None:
    """Registered by `endpoints.build_app`; answers 404 until the operator sets FORWARD_AUTH."""
    app.router.add_route("*", PATH, _forward_auth)


def describe(request: web.Request) -> GatewayRequest:
    headers = header_map(request.headers.items())
    method = (headers.get("x-forwarded-method") or headers.get("x-original-method") or "").upper()
    uri = headers.get("x-forwarded-uri") or headers.get("x-original-uri") or ""
    host = headers.get("x-forwarded-host") or headers.get("host") or ""
    if not method or not uri:
        raise Refused(
            "gateway-misconfigured",
            "the gateway did not say which request this is: send X-Forwarded-Method and X-Forwarded-Uri",
            400,
        )
    path, query = split_uri(uri)
    agent_headers = {k: v for k, v in headers.items() if k not in HOP_HEADERS}
    agent_headers["host"] = host.lower()
    return GatewayRequest(
        method=method,
        host=host.lower(),
        path=path,
        query=query,
        headers=agent_headers,
        body=None,
        request_id=headers.get("x-request-id", "")[:128],
        source=headers.get("x-forwarded-for", request.remote or "").split(",")[0].strip()[:64],
        scheme=headers.get("x-forwarded-proto", "https").split(",")[0].strip().lower(),
    )


async def _forward_auth(request: web.Request) -> web.Response:
    service = request.app.get(FORWARD_AUTH)
    if service is None:
        raise web.HTTPNotFound()
    try:
        described = describe(request)
    except Refused as refused:
        answer = refusal(refused.status, refused.reason, refused.message, "request")
    else:
        answer = await service.check(described, CONTRACT, request.headers.get(GATEWAY_HEADER), request.remote or "")
    if answer.allowed:
        return web.Response(status=200, headers={**answer.upstream_headers, "Cache-Control": "no-store"})
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
