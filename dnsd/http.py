"""The operator's HTTP endpoint (aiohttp, on the event loop): /health, /ready, /metrics,
/records.  Off unless ``[http] listen`` / ``--http`` is set; /records reveals the whole name
table, so bind it to loopback unless you mean otherwise."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dnsd import status

if TYPE_CHECKING:
    from dnsd.daemon import Daemon

logger = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self._daemon = daemon
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/records", self._records)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        logger.info("http endpoint on %s:%d (/health /ready /metrics /records)",
                    self._host, self._port)  # fmt: skip

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        ready, detail = status.readiness(self._daemon)
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._daemon.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _records(self, request: web.Request) -> web.Response:
        rows = status.records(
            self._daemon, request.query.get("name", ""), request.query.get("source", "")
        )
        return web.json_response(rows)
