"""The operator's HTTP endpoint (aiohttp, on the event loop): /health, /ready, /metrics,
/records, /nodes (etcd's publishing nodes).  Off unless ``[http] listen`` / ``--http`` is
set; /records reveals the whole name table, so bind it to loopback unless you mean otherwise.

A connection gets ``request_timeout`` seconds for everything (headers, body, answer), small
header and body limits and a short keep-alive, so a slow or silent client (slowloris) cannot
hold sockets: aiohttp has no header-read timeout of its own, so each connection's handler is
given a deadline when it is made."""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dnsd import status
from dnsd.logs import Throttled
from dnsd.slices import in_slices

logger = logging.getLogger(__name__)
_throttled = Throttled(logger, interval_s=60.0)


class MalformedRequests(logging.Filter):
    """aiohttp logs a malformed request (a bad request line, header or length) as an error
    with a full traceback: about 700 bytes a request, so anyone who can connect can fill the
    log.  Such records become one throttled warning line (counted there); others pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        reason = f"{type(error).__name__} {error.code}"
        _throttled.warning(
            f"malformed {reason}", "malformed HTTP request answered 400: %s (%s)", reason,
            record.getMessage(),
        )  # fmt: skip
        return False


MAX_BODY_BYTES = 1024  # every endpoint is a GET
MAX_HEADER_LINE_BYTES = 4096
MAX_HEADERS = 32
KEEPALIVE_TIMEOUT_S = 2.0
SORTED_RUN_ROWS = 1024  # /records: rows sorted at once (then merged)
RECORDS_BUILDS = 2  # /records built at once; more get 503 with Retry-After
RECORDS_RETRY_AFTER_S = 1
WRITTEN_ROWS = 256  # /records: rows encoded and written at once


_MALFORMED = MalformedRequests()


class HttpServer:
    def __init__(
        self,
        view: status.StatusView,
        registry: CollectorRegistry,
        host: str,
        port: int,
        request_timeout_s: float,
    ) -> None:
        self._view = view
        self._registry = registry
        self._host, self._port = host, port
        self._request_timeout_s = request_timeout_s
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._records_building = 0
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/records", self._records)
        app.router.add_get("/nodes", self._nodes)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            max_line_size=MAX_HEADER_LINE_BYTES,
            max_field_size=MAX_HEADER_LINE_BYTES,
            max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        logging.getLogger("aiohttp.server").addFilter(_MALFORMED)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, self._host, self._port, reuse_address=True
        )
        logger.info("http endpoint on %s:%d (/health /ready /metrics /records /nodes)",
                    self._host, self._port)  # fmt: skip

    def _connection(self) -> Any:
        """aiohttp's handler for one connection, cut off when its deadline passes."""
        assert self._runner is not None and self._runner.server is not None
        handler = self._runner.server()
        asyncio.get_running_loop().call_later(self._request_timeout_s, _expire, handler)
        return handler

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        ready, detail = status.readiness(self._view)
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _records(self, request: web.Request) -> web.StreamResponse:
        """The name table as a JSON list, built and written in slices (``dnsd.slices``): at
        50,000 names it is about 9 MB and 0.3 s of work, which in one go would hold every
        answer on the event loop.  Runs of rows are sorted as they come, then merged.  At
        most ``RECORDS_BUILDS`` at once (each holds the table's rows in memory): more get 503
        with Retry-After; a build stops as soon as its client has gone."""
        if self._records_building >= RECORDS_BUILDS:
            _throttled.warning(
                "records busy", "/records: %d builds running already, answered 503",
                RECORDS_BUILDS,
            )  # fmt: skip
            return web.json_response(
                {"error": f"{RECORDS_BUILDS} /records requests are being answered; retry"},
                status=503,
                headers={"Retry-After": str(RECORDS_RETRY_AFTER_S)},
            )
        self._records_building += 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await self._build_records(request, response)
        except (ConnectionError, _ClientGone):
            _throttled.warning("records gone", "/records: the client went away; build stopped")
            if not response.prepared:  # aiohttp sends what is returned: to no one
                return web.Response(status=400)
        finally:
            self._records_building -= 1
        return response

    async def _build_records(self, request: web.Request, response: web.StreamResponse) -> None:
        pattern, source = request.query.get("name", ""), request.query.get("source", "")
        runs: list[list[dict[str, Any]]] = []
        run: list[dict[str, Any]] = []
        async for row in in_slices(status.rows(self._view, pattern, source)):
            if not run:
                _still_there(request)
            run.append(row)
            if len(run) == SORTED_RUN_ROWS:
                run.sort(key=status.sort_key)
                runs.append(run)
                run = []
        run.sort(key=status.sort_key)
        runs.append(run)
        await response.prepare(request)
        await response.write(b"[")
        batch: list[dict[str, Any]] = []
        separator = b""
        async for row in in_slices(heapq.merge(*runs, key=status.sort_key)):
            if not batch:
                _still_there(request)
            batch.append(row)
            if len(batch) == WRITTEN_ROWS:
                await response.write(separator + json.dumps(batch)[1:-1].encode())
                separator, batch = b", ", []
        if batch:
            await response.write(separator + json.dumps(batch)[1:-1].encode())
        await response.write(b"]")
        await response.write_eof()

    async def _nodes(self, _request: web.Request) -> web.Response:
        cluster = self._view.cluster
        return web.json_response(cluster.nodes() if cluster is not None else [])


class _ClientGone(Exception):
    """The client of a request closed its connection."""


def _still_there(request: web.Request) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise _ClientGone


def _expire(handler: Any) -> None:
    transport = handler.transport
    if transport is not None and not transport.is_closing():
        transport.abort()
