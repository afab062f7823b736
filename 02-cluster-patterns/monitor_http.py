"""A tiny asyncio HTTP/1.1 server with an exact-path router, enough for the monitor.

monitor.py binds it on tcp://BIND:5572 (127.0.0.1 by default) and routes
GET /, /health, /api/cluster, /metrics and /static/* to small synchronous handlers.
Why not http.server or a framework: the monitor already runs an asyncio loop for its
zmq.asyncio SUB socket, and every handler here only reads in-memory state, so one
event loop serves both without threads or locks.

What it does: GET and HEAD, keep-alive (the dashboard polls every 500 ms), request
bodies read and discarded, bounded header size, idle connections closed. What it does
not do: TLS, chunked uploads, pipelining beyond one request at a time per connection.

    server = HttpServer({"/health": lambda req: Response.json(200, {"status": "ok"})})
    await server.start("127.0.0.1", 5572)
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

# Tunables ---------------------------------------------------------------------------------
MAX_LINE_BYTES = 8192  # request line or one header line
MAX_HEADERS = 100
MAX_BODY_BYTES = 1 << 20  # read and thrown away; nothing here accepts a body
IDLE_TIMEOUT_S = 30.0  # keep-alive connections with no new request are closed
SERVER_NAME = "cluster-monitor"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

log = logging.getLogger("monitor.http")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def json(cls, status: int, document: object) -> Response:
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, body, "application/json", (("Cache-Control", "no-store"),))

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Response]


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x; answer with `status` and hang up."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpServer:
    """Serves exact-path routes; anything else is a 404."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen; returns the address actually bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=MAX_LINE_BYTES
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the browser went away or idled out: nothing to report
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request, keep_alive = await asyncio.wait_for(read_request(reader), IDLE_TIMEOUT_S)
            except BadRequest as exc:
                await send(writer, Response.text(exc.status, f"{exc}\n"), False, head=False)
                return
            if request is None:
                return  # clean EOF between requests
            response = self._dispatch(request)
            await send(writer, response, keep_alive, head=request.method == "HEAD")
            if not keep_alive:
                return

    def _dispatch(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        handler = self._routes.get(request.path)
        if handler is None:
            return Response.text(404, f"no such page: {request.path}\n")
        try:
            return handler(request)
        except Exception:  # a bug in one page must not take the monitor down
            log.exception("handler for %s failed", request.path)
            return Response.text(500, "internal error\n")


async def read_request(reader: asyncio.StreamReader) -> tuple[Request | None, bool]:
    """Read one request. (None, False) on EOF before a request line."""
    line = await _read_line(reader)
    if not line:
        return None, False
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    while True:
        header = await _read_line(reader)
        if header in ("", "\r\n", "\n"):
            break
        if len(headers) >= MAX_HEADERS:
            raise BadRequest(431, "too many headers")
        name, sep, value = header.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    await _discard_body(reader, headers)
    url = urlsplit(target)
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return Request(method.upper(), url.path or "/", parse_qs(url.query), headers), keep_alive


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError):
        raise BadRequest(431, "header line too long") from None
    return raw.decode("latin-1").rstrip("\r\n") if raw.endswith(b"\n") else raw.decode("latin-1")


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies are not accepted")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise BadRequest(413, "body too large")
    if length:
        await reader.readexactly(length)


async def send(
    writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head: bool
) -> None:
    reason = REASONS.get(response.status, "Unknown")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Server: {SERVER_NAME}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(response.body)
    await writer.drain()
