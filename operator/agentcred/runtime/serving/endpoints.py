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

import asyncio
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ...platform import metrics
from ...platform.keys import ALGORITHMS, KeyRing
from ...platform.revocations import RevocationList
from ...rules import dpop
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
    headers = {**NO_STORE, **refused.headers}
    if refused.retry_after:
        headers["Retry-After"] = str(refused.retry_after)
    if refused.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return web.json_response(refused.body(), status=refused.status, headers=headers)


def _oauth(
    answer: Callable[[web.Request, bytes], Awaitable[dict[str, Any] | None]],
    extra_headers: Callable[[], dict[str, str]] = dict,
) -> Callable[..., Any]:
    """A POST endpoint: the body read within bounds, OAuth errors as RFC 6749 §5.2 responses."""

    async def handler(request: web.Request) -> web.Response:
        try:
            result = await answer(request, await _body(request))
        except OAuthError as refused:
            return _refused(refused)
        if result is None:
            return web.Response(status=200, headers=NO_STORE)
        return web.json_response(result, headers={**NO_STORE, **extra_headers()})

    return handler


def build_app(
    *, issuer: str, keyring: Callable[[], KeyRing], revocations: RevocationList, tokens: TokenService
) -> web.Application:
    metadata = authorization_server_metadata(issuer, ALGORITHMS, dpop.ALGORITHMS)
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
            proofs = request.headers.getall("DPoP", [])
            return await tokens.token(
                request.headers.get("Content-Type"),
                body,
                request.headers.get("Authorization"),
                request.remote or "",
                ",".join(proofs) if proofs else None,  # several proofs: refused, as RFC 9449 §4.3 says
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
        app.router.add_post(f"{prefix}/oauth2/token", _oauth(token, tokens.nonce_header))
        app.router.add_post(f"{prefix}/oauth2/introspect", _oauth(introspect))
        app.router.add_post(f"{prefix}/oauth2/revoke", _oauth(revoke))
    leak_intake.add_routes(app)
    forward_auth.add_routes(app)
    csi_publishing.add_routes(app)
    return app


# Connections one HTTPS server holds at once (AGENTCRED_MAX_CONNECTIONS). Each TLS connection
# costs a quarter of a MiB before it sends a byte (asyncio's read buffer, sslproto.py), more while
# a body is in flight (a report: up to 1 MiB), and glibc keeps what a flood made it allocate:
# the concurrent floods of garbage tokens at the token service and the leak intake (256 clients
# at once) took a replica from 80 to 420 MiB, and it stayed there (bench/stages/attacks.py).
MAX_CONNECTIONS = 1024


HANDSHAKE_TIMEOUT = 10.0  # seconds a connection may take to finish its TLS handshake (asyncio's default: 60)


class _Closing(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted while the connection lives (its TLS
    handshake included: the weak set drops it when the transport does)."""

    def __init__(self, handler: asyncio.Protocol, live: weakref.WeakSet[_Counted]) -> None:
        self._handler, self._live = handler, live
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class BoundedSite(web.TCPSite):
    """A TCPSite that holds at most `limit` connections at once; past it, new ones are closed."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, ssl_context: ssl.SSLContext, limit: int, name: str
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._limit = limit
        self._live: weakref.WeakSet[_Counted] = weakref.WeakSet()
        metrics.track(name, lambda: len(self._live))

    def _protocol(self) -> asyncio.Protocol:
        if len(self._live) >= self._limit:
            return _Closing()
        server = self._runner.server
        assert server is not None
        return _Counted(server(), self._live)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registered with the runner, which stops it
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


async def serve(
    app: web.Application,
    address: str,
    port: int,
    certfile: Path,
    keyfile: Path,
    what: str = "the token service, JWKS and revocations",
    connections: str = "api-connections",
    limit: int = MAX_CONNECTIONS,
) -> web.AppRunner:
    """`connections`: the name its live connections are reported under (agentcred_kept_entries)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await BoundedSite(runner, address, port, ssl_context=context, limit=limit, name=connections).start()
    log.info("serving %s on https://%s:%d", what, address, port)
    return runner
