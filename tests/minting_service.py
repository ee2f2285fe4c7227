"""A minting service on loopback for tests: HTTPS, with switchable failure modes."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from agentcred.devcluster.controlplane import free_port
from agentcred.platform import pki


class MintingService:
    def __init__(self) -> None:
        self.mode = "ok"
        self.healthy = True  # what GET /mint/healthz answers: 200, or 503
        self.health_hangs = False  # GET /mint/healthz never answers (until the caller gives up)
        self.health_calls = 0
        self.health_dropped: list[float] = []  # time.monotonic() when a caller gave up on a hanging probe
        self.redirect_to: str | None = None  # answer every call with a redirect there
        self.calls = 0
        self.minted: list[dict[str, Any]] = []
        self.revoked: list[dict[str, Any]] = []
        self.port = free_port()
        ca = pki.new_ca("test-minting-ca")
        leaf = pki.issue(ca, "minter", ip_addresses=("127.0.0.1",), server=True)
        self.ca_pem = ca.cert_pem.decode()
        self._dir = Path(tempfile.mkdtemp(prefix="minting-"))
        leaf.write(self._dir / "tls.crt", self._dir / "tls.key")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mint"

    def start(self) -> MintingService:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        self._loop.call_soon_threadsafe(self._released.set)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        import ssl

        self._released = asyncio.Event()

        app = web.Application()
        app.router.add_post("/mint", self._mint)
        app.router.add_post("/mint/revoke", self._revoke)
        app.router.add_get("/mint/healthz", self._health)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self._dir / "tls.crt"), str(self._dir / "tls.key"))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def _mint(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        payload = await request.json()
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "hang":
            await self._released.wait()  # until the service stops
        if self.mode == "error":
            return web.json_response({"error": "database down"}, status=500)
        if self.mode == "malformed":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if self.mode == "refuse":
            return web.json_response({"error": "subject not allowed"}, status=403)
        token_id = uuid.uuid4().hex
        self.minted.append({**payload, "id": token_id})
        return web.json_response({"value": f"minted-{token_id}", "id": token_id})

    async def _health(self, request: web.Request) -> web.Response:
        self.health_calls += 1
        if self.health_hangs:
            while not self._released.is_set():
                if request.transport is None or request.transport.is_closing():
                    self.health_dropped.append(time.monotonic())
                    break
                await asyncio.sleep(0.05)
            return web.Response(status=503, text="gave up")
        return web.Response(text="ok") if self.healthy else web.Response(status=503, text="draining")

    async def _revoke(self, request: web.Request) -> web.Response:
        self.revoked.append(await request.json())
        return web.json_response({"ok": True})
