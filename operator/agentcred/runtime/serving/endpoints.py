"""The operator's HTTPS endpoints: an OAuth 2.0 authorization server for agents, and what
verifiers fetch.

GET  /.well-known/oauth-authorization-server  RFC 8414 metadata (where everything below is)
GET  /.well-known/openid-configuration        the same, for verifiers that look there
GET  /.well-known/jwks.json                   public signing keys (current and retired)
GET  /v1/revocations                          tokens revoked before their expiry
POST /oauth2/token                            token exchange, JWT bearer, client credentials
POST /oauth2/introspect                       RFC 7662, for allowed resource servers
POST /oauth2/revoke                           RFC 7009, for a token's holder
POST /v1/csi/publish, /v1/csi/sync            agentcred's CSI node plugins (runtime.projection.csi_publishing)
*    /v1/gateway/forward-auth                 HTTP forward-auth for gateways (runtime.gateway)
GET  /oauth2/authorize                        no browser flows: always unsupported_response_type

When the issuer has a path, every route is also served under it (RFC 8414 §3 puts the
metadata at `/.well-known/oauth-authorization-server/<path>`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ...platform import metrics
from ...platform.keys import ALGORITHMS, KeyRing
from ...platform.revocations import RevocationList
from ...rules.oauth import MAX_BODY, OAuthError, authorization_server_metadata
from ..gateway import forward_auth
from ..leaks import intake as leak_intake
from ..projection import csi_publishing
from ..tokens.token_service import NO_STORE, TokenService

log = logging.getLogger(__name__)


async def _body(request: web.Request) -> bytes:
    body = b""
    while len(body) <= MAX_BODY:  # read at most one byte past the limit, then stop
        chunk = await request.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return body


def _refused(refused: OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if refused.retry_after:
        headers["Retry-After"] = str(refused.retry_after)
    if refused.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return web.json_response(refused.body(), status=refused.status, headers=headers)


def _oauth(answer: Callable[[web.Request, bytes], Awaitable[dict[str, Any] | None]]) -> Callable[..., Any]:
    """A POST endpoint: the body read within bounds, OAuth errors as RFC 6749 §5.2 responses."""

    async def handler(request: web.Request) -> web.Response:
        try:
            result = await answer(request, await _body(request))
        except OAuthError as refused:
            return _refused(refused)
        if result is None:
            return web.Response(status=200, headers=NO_STORE)
        return web.json_response(result, headers=NO_STORE)

    return handler


def build_app(
    *, issuer: str, keyring: Callable[[], KeyRing], revocations: RevocationList, tokens: TokenService
) -> web.Application:
    metadata = authorization_server_metadata(issuer, ALGORITHMS)
    discovery = {
        **metadata,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
    }

    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response(metadata, headers={"Cache-Control": "max-age=300"})

    async def openid_configuration(_: web.Request) -> web.Response:
        return web.json_response(discovery, headers={"Cache-Control": "max-age=300"})

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(keyring().jwks(), headers={"Cache-Control": "max-age=60"})

    async def revoked(_: web.Request) -> web.Response:
        return web.json_response(revocations.document(), headers={"Cache-Control": "no-cache"})

    async def authorize(_: web.Request) -> web.Response:
        # RFC 6749 §4.1.2.1: with no client and redirect URI to trust, the error is shown, not redirected.
        return _refused(
            OAuthError(
                "unsupported_response_type",
                "agentcred has no browser flows: agents use the token endpoint with their pod's identity",
            )
        )

    async def token(request: web.Request, body: bytes) -> dict[str, Any]:
        with metrics.token_latency.time():
            return await tokens.token(
                request.headers.get("Content-Type"), body, request.headers.get("Authorization"), request.remote or ""
            )

    async def introspect(request: web.Request, body: bytes) -> dict[str, Any]:
        return await tokens.introspect(
            request.headers.get("Content-Type"), body, request.headers.get("Authorization"), request.remote or ""
        )

    async def revoke(request: web.Request, body: bytes) -> None:
        tokens.revoke(request.headers.get("Content-Type"), body)

    app = web.Application(client_max_size=MAX_BODY + 1)
    path = urlsplit(issuer).path.rstrip("/")
    for prefix in dict.fromkeys(["", path]):
        for location in dict.fromkeys(
            [f"/.well-known/oauth-authorization-server{prefix}", f"{prefix}/.well-known/oauth-authorization-server"]
        ):
            app.router.add_get(location, server_metadata)
        app.router.add_get(f"{prefix}/.well-known/openid-configuration", openid_configuration)
        app.router.add_get(f"{prefix}/.well-known/jwks.json", jwks)
        app.router.add_get(f"{prefix}/v1/revocations", revoked)
        app.router.add_get(f"{prefix}/oauth2/authorize", authorize)
        app.router.add_post(f"{prefix}/oauth2/token", _oauth(token))
        app.router.add_post(f"{prefix}/oauth2/introspect", _oauth(introspect))
        app.router.add_post(f"{prefix}/oauth2/revoke", _oauth(revoke))
    leak_intake.add_routes(app)
    forward_auth.add_routes(app)
    csi_publishing.add_routes(app)
    return app


async def serve(
    app: web.Application,
    address: str,
    port: int,
    certfile: Path,
    keyfile: Path,
    what: str = "the token service, JWKS and revocations",
) -> web.AppRunner:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, ssl_context=context).start()
    log.info("serving %s on https://%s:%d", what, address, port)
    return runner
