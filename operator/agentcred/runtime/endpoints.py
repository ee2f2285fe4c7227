"""The operator's HTTPS endpoints for verifiers and agents.

GET  /.well-known/jwks.json               public signing keys (current and retired)
GET  /.well-known/openid-configuration    issuer and JWKS location, for generic verifiers
GET  /v1/revocations                      token ids revoked before their expiry
POST /v1/exchange                         intent exchange (see `exchange`)
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..platform import metrics
from ..platform.keys import KeyRing
from ..platform.revocations import RevocationList
from . import leak_intake
from .exchange import MAX_BODY, ExchangeContext, Refused, exchange

log = logging.getLogger(__name__)


def build_app(
    *, issuer: str, keyring: Callable[[], KeyRing], revocations: RevocationList, exchange_context: ExchangeContext
) -> web.Application:
    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(keyring().jwks(), headers={"Cache-Control": "max-age=60"})

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/.well-known/jwks.json",
                "id_token_signing_alg_values_supported": ["EdDSA", "ES256"],
            }
        )

    async def revoked(_: web.Request) -> web.Response:
        return web.json_response(revocations.document(), headers={"Cache-Control": "no-cache"})

    async def exchange_intent(request: web.Request) -> web.Response:
        body = b""
        while len(body) <= MAX_BODY:  # read at most one byte past the limit, then stop
            chunk = await request.content.read(MAX_BODY + 1 - len(body))
            if not chunk:
                break
            body += chunk
        try:
            with metrics.exchange_latency.time():
                result = await exchange(
                    exchange_context,
                    request.headers.get("Authorization"),
                    request.headers.get("Content-Type"),
                    body,
                    source=request.remote or "",
                )
        except Refused as refused:
            headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
            return web.json_response(refused.body(), status=refused.status, headers=headers)
        return web.json_response(result, headers={"Cache-Control": "no-store"})

    app = web.Application(client_max_size=MAX_BODY + 1)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/v1/revocations", revoked)
    app.router.add_post("/v1/exchange", exchange_intent)
    leak_intake.add_routes(app)
    return app


async def serve(app: web.Application, address: str, port: int, certfile: Path, keyfile: Path) -> web.AppRunner:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, ssl_context=context).start()
    log.info("serving JWKS, revocations and intent exchange on https://%s:%d", address, port)
    return runner
