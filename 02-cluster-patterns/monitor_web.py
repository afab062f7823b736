"""The monitor's HTTP side, on aiohttp: the dashboard, /health, /api/cluster and /metrics.

Binds: HTTP http://BIND:5572 (monitor.py passes --bind and --port; 127.0.0.1 by default)

    GET /                      the dashboard (static/dashboard.html), Cache-Control: no-cache
    GET /static/dashboard.js   its script and stylesheet, Cache-Control: no-cache
    GET /static/dashboard.css
    GET /health                200 while the coordinator is seen, else 503; JSON, no-store
    GET /api/cluster           200, the ClusterView snapshot as JSON, no-store
    GET /metrics               200, Prometheus text format (cluster_metrics.py)

It runs in the monitor's event loop, next to the zmq.asyncio SUB socket; every handler only
reads in-memory state, so there are no threads and no locks. aiohttp answers HEAD for every
GET route, 405 (with Allow) for other methods and 404 for other paths. A request it cannot
parse, or one beyond the limits below, gets a 400 and is counted
(cluster_monitor_bad_http_requests_total) and logged on one rate-limited line, without a
traceback: the port may face the cluster network, so its garbage is expected.

    http = MonitorHttp(view, metrics)
    host, port = await http.start("127.0.0.1", 5572)
    ...
    await http.close()
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import ClusterView
from cluster_patterns.transport import RateLimitedLog, printable

# Tunables ---------------------------------------------------------------------------------
MAX_LINE_BYTES: Final = 8190  # the request line
MAX_FIELD_BYTES: Final = 8190  # one header line
MAX_HEADERS: Final = 100
MAX_BODY_BYTES: Final = 64 * 1024  # no page reads a body; this bounds what aiohttp would
IDLE_TIMEOUT_S: Final = 30.0  # a keep-alive connection with no new request is closed
SHUTDOWN_TIMEOUT_S: Final = 1.0  # how long close() lets a request in progress finish
LOG_INTERVAL_S: Final = 5.0  # at most one log line per this many seconds about bad requests
SERVER_NAME: Final = "cluster-monitor"

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_FILES: Final = {
    "/": ("dashboard.html", "text/html"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript"),
    "/static/dashboard.css": ("dashboard.css", "text/css"),
}
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]
log = logging.getLogger("monitor")


def json_response(status: int, document: object) -> web.Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class Pages:
    """The monitor's routes: each reads the view or the metrics, nothing else."""

    def __init__(self, view: ClusterView, metrics: ClusterMetrics) -> None:
        self._view = view
        self._metrics = metrics

    async def health(self, _: web.Request) -> web.Response:
        healthy, body = self._view.health()
        return json_response(200 if healthy else 503, body)

    async def cluster(self, _: web.Request) -> web.Response:
        return json_response(200, self._view.snapshot())

    async def metrics(self, _: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    def routes(self) -> dict[str, Handler]:
        routes: dict[str, Handler] = {
            "/health": self.health,
            "/api/cluster": self.cluster,
            "/metrics": self.metrics,
        }
        for path, (name, content_type) in STATIC_FILES.items():
            routes[path] = static_page((STATIC_DIR / name).read_bytes(), content_type)
        return routes


def static_page(body: bytes, content_type: str) -> Handler:
    """A page read once at start-up (a missing file stops the monitor before it serves)."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    return page


class BadRequestLog(logging.Handler):
    """Where aiohttp reports the requests it refused: counted, one rate-limited line each."""

    def __init__(self, view: ClusterView, clock: Clock) -> None:
        super().__init__(logging.DEBUG)
        self._view = view
        self._log = RateLimitedLog(log.warning, LOG_INTERVAL_S, clock)

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            self._view.on_bad_http_request()
            detail = f"{error.code} {' '.join(error.message.split())}"
        else:
            detail = repr(error) if error is not None else ""
        self._log(printable(f"HTTP: {record.getMessage()}: {detail}"[:300]))


class MonitorHttp:
    """The aiohttp application and its listening socket."""

    def __init__(
        self, view: ClusterView, metrics: ClusterMetrics, clock: Clock = time.monotonic
    ) -> None:
        self._errors = RateLimitedLog(self._log_with_traceback, LOG_INTERVAL_S, clock)
        self.app = web.Application(
            middlewares=[self._contain_errors], client_max_size=MAX_BODY_BYTES
        )
        for path, handler in Pages(view, metrics).routes().items():
            self.app.router.add_get(path, handler)  # HEAD too
        self.app.on_response_prepare.append(_name_server)
        # A logger of our own, outside the logging tree: aiohttp logs refused requests to it.
        self._server_log = logging.Logger("monitor.http")
        self._server_log.addHandler(BadRequestLog(view, clock))
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen; returns the address bound (port 0 picks a free one).
        OSError when the address cannot be bound (in use, not on this machine)."""
        runner = web.AppRunner(
            self.app,
            access_log=None,  # the dashboard polls twice a second: no line per request
            logger=self._server_log,
            keepalive_timeout=IDLE_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _contain_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A bug in one page answers 500 and is logged; it never takes the monitor down."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # 404, 405: aiohttp's own answers
        except Exception:
            self._errors(f"HTTP: the page {request.path} failed")
            return web.Response(status=500, text="internal error\n")

    @staticmethod
    def _log_with_traceback(text: str) -> None:
        log.error(text, exc_info=True)  # called inside the except block above


async def _name_server(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME  # not aiohttp's name and version
