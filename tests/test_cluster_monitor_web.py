"""The monitor's HTTP side (aiohttp) in-process, on a free loopback port, spoken to raw.

Every page, its status and headers; HEAD, 405, 404; what a peer's garbage gets (400,
counted, one log line and no traceback) and that the server keeps serving after it; a page
that fails answers 500 without taking the others down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest

from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import ClusterView
from cluster_patterns.monitor_web import MAX_HEADERS, MonitorHttp

PAGES = {
    "/": "text/html; charset=utf-8",
    "/static/dashboard.js": "text/javascript; charset=utf-8",
    "/static/dashboard.css": "text/css; charset=utf-8",
    "/health": "application/json",
    "/api/cluster": "application/json",
    "/metrics": "text/plain; version=0.0.4; charset=utf-8",
}


class Server:
    def __init__(self, view: ClusterView, http: MonitorHttp, port: int) -> None:
        self.view = view
        self.http = http
        self.port = port

    async def exchange(self, raw: bytes) -> bytes:
        """Send ``raw`` on a new connection; everything the server sends until it closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        return parse(await self.exchange(raw))


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    view = ClusterView()
    http = MonitorHttp(view, ClusterMetrics(view))
    host, port = await http.start("127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    try:
        yield Server(view, http, port)
    finally:
        await http.close()


async def test_every_page_with_its_type_and_cache_rule(server: Server) -> None:
    for path, content_type in PAGES.items():
        code, headers, body = await server.get(path)
        assert code == (503 if path == "/health" else 200), path
        assert headers["content-type"] == content_type, path
        assert headers["server"] == "cluster-monitor"
        assert int(headers["content-length"]) == len(body) > 0
        cache = {"/health": "no-store", "/api/cluster": "no-store", "/metrics": None}
        assert headers.get("cache-control") == cache.get(path, "no-cache"), path
    _, _, page = await server.get("/")
    assert b"/static/dashboard.js" in page
    assert b"http://" not in page and b"https://" not in page  # nothing external
    _, _, health = await server.get("/health")
    assert json.loads(health)["coordinator"] == "never seen"
    _, _, doc = await server.get("/api/cluster")
    assert json.loads(doc)["monitor"]["bad_messages"] == 0
    _, _, metrics = await server.get("/metrics")
    assert metrics.startswith(b"# HELP")


async def test_head_405_and_404(server: Server) -> None:
    code, headers, body = await server.get("/api/cluster", "HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    code, headers, _ = await server.get("/metrics", "POST")
    assert code == 405 and set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert (await server.get("/nope"))[0] == 404
    assert (await server.get("/static/../monitor.py"))[0] == 404


async def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            _, headers, _ = parse(head)
            body = await reader.readexactly(int(headers["content-length"]))
            assert json.loads(body)["status"] == "unavailable"
    finally:
        writer.close()


GARBAGE = [
    b"\x00\x01garbage\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 50))
    + b"\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
]


async def test_garbage_gets_400_is_counted_and_logged_without_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for raw in GARBAGE:
        response = await server.exchange(raw)
        assert response.startswith(b"HTTP/1.") and b" 400 " in response.split(b"\r\n")[0], raw
    assert server.view.bad_http_requests == len(GARBAGE)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # rate-limited
    assert "400" in warnings[0].getMessage() and warnings[0].exc_info is None
    code, _, body = await server.get("/api/cluster")
    assert code == 200 and json.loads(body)["monitor"]["bad_http_requests"] == len(GARBAGE)


async def test_a_failing_page_answers_500_and_the_others_keep_working(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("a bug in the snapshot")

    monkeypatch.setattr(server.view, "snapshot", broken)
    code, _, body = await server.get("/api/cluster")
    assert code == 500 and body == b"internal error\n"
    assert any("a bug in the snapshot" in r.getMessage() or r.exc_info for r in caplog.records)
    assert (await server.get("/health"))[0] == 503
    assert (await server.get("/metrics"))[0] == 200


async def test_a_taken_port_is_an_oserror_and_nothing_stays_open(server: Server) -> None:
    view = ClusterView()
    second = MonitorHttp(view, ClusterMetrics(view))
    with pytest.raises(OSError):
        await second.start("127.0.0.1", server.port)
    await second.close()
    assert (await server.get("/health"))[0] == 503
