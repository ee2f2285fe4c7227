"""Plain-HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz, /metrics.

Ready means: the in-memory indices have listed everything (Kopf runs no handler before
that, so the first handler call is the signal) and the admission webhook and the HTTPS
endpoints accept connections. Live means: none of the operator's own loops has died, and
nothing asks for a restart (a serving certificate about to expire, say).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...platform.metrics import REGISTRY

log = logging.getLogger(__name__)


@dataclass
class Health:
    ports: Sequence[int]  # the webhook and the HTTPS endpoints, reached on loopback
    warm: asyncio.Event = field(default_factory=asyncio.Event)  # replaced by the engine's
    loops: Callable[[], Iterable[asyncio.Task[None]]] = lambda: ()  # the running loops' tasks
    problems: list[Callable[[], str | None]] = field(default_factory=list)  # reasons to be restarted
    not_ready: list[Callable[[], str | None]] = field(default_factory=list)  # reasons to take no traffic

    def unhealthy(self) -> list[str]:
        dead = [f"stopped: {task.get_name()}" for task in self.loops() if task.done()]
        return dead + [problem for check in self.problems if (problem := check())]

    async def unreachable_ports(self) -> list[int]:
        closed = []
        for port in self.ports:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=1)
                writer.close()
            except (TimeoutError, OSError):
                closed.append(port)
        return closed


def build_app(health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        reasons = health.unhealthy()
        if reasons:
            return web.Response(status=500, text="; ".join(reasons) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = []
        if not health.warm.is_set():
            problems.append("indices still listing")
        closed = await health.unreachable_ports()
        if closed:
            problems.append(f"not listening on {', '.join(map(str, closed))}")
        problems += [problem for check in health.not_ready if (problem := check())]
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ready\n")

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(health: Health, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    log.info("health and metrics on http://%s:%d", address, port)
    return runner
