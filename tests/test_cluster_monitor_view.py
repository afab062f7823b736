"""Unit tests of the monitor's pure parts: ClusterView, the Prometheus collector, the router.

No sockets and no processes: fabricated STATUS / NODE_EVENT / TASK_STATS reports and a
fake clock drive the model, so every timing rule is checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import (
    RATE_WINDOW_S,
    ClusterView,
    NodeEventReport,
    NodeReport,
    StatusReport,
    TaskStatsReport,
    percentile,
)
from cluster_patterns.monitor import StatusFollower, build_routes
from cluster_patterns.monitor_http import HttpServer, Request, Response
from cluster_patterns.protocol import (
    NodeEvent,
    NodeStatus,
    Status,
    TaskStats,
    Totals,
    encode,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(node_id: str, state: str = "alive", age: float = 0.1, done: int = 0) -> NodeReport:
    return NodeReport(node_id, state, age, 1, 4, 25.0, 50.0, 0.5, done, ("echo",))


def status(
    *nodes: NodeReport, seq: int = 1, coordinator: str = "c1", **totals: int
) -> StatusReport:
    return StatusReport(coordinator, seq, 0.5, 3, tuple(nodes), dict(totals))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def view(clock: FakeClock) -> ClusterView:
    return ClusterView(heartbeat_interval_s=1.0, liveness=2, clock=clock)


def test_never_seen_coordinator_is_unhealthy(view: ClusterView) -> None:
    healthy, body = view.health()
    assert not healthy
    assert body["status"] == "unavailable" and body["coordinator"] == "never seen"
    snap = view.snapshot()
    assert snap["coordinator"] == {
        "seen": False,
        "id": None,
        "last_seen_age_s": None,
        "seq": None,
        "heartbeat_interval_s": 1.0,
        "liveness": 2,
    }
    assert snap["nodes"] == []


def test_status_makes_healthy_until_interval_times_liveness_plus_one(
    view: ClusterView, clock: FakeClock
) -> None:
    view.on_status(status(node("w1")))
    # The STATUS announces 0.5 s x 3, which replaces the 1.0 s x 2 we started with.
    assert view.dead_after_s == pytest.approx(2.0)
    assert view.health() == (True, view.health()[1])
    assert view.health()[1]["coordinator"] == "seen"
    clock.advance(1.99)
    assert view.coordinator_seen()
    clock.advance(0.02)
    healthy, body = view.health()
    assert not healthy and body["coordinator"] == "lost"
    view.on_status(status(node("w1"), seq=2))
    assert view.health()[0]


def test_nodes_are_listed_sorted_with_aged_last_seen(view: ClusterView, clock: FakeClock) -> None:
    view.on_status(status(node("w2", "dead", age=2.5), node("w1", age=0.2)))
    clock.advance(0.3)
    nodes = view.snapshot()["nodes"]
    assert isinstance(nodes, list)
    assert [n["id"] for n in nodes] == ["w1", "w2"]
    assert nodes[0]["last_seen_age_s"] == pytest.approx(0.5)
    assert nodes[1]["state"] == "dead"
    assert set(nodes[0]) >= {
        "id",
        "state",
        "last_seen_age_s",
        "in_flight",
        "capacity",
        "cpu_percent",
        "memory_percent",
        "load1",
        "done",
    }
    assert view.node_counts() == {"alive": 1, "suspect": 0, "dead": 1, "left": 0}


def test_a_node_missing_from_the_next_status_disappears(view: ClusterView) -> None:
    view.on_status(status(node("w1"), node("w2")))
    view.on_status(status(node("w1"), seq=2))
    assert [n.report.node_id for n in view.nodes()] == ["w1"]


def test_totals_and_rates(view: ClusterView, clock: FakeClock) -> None:
    view.on_status(status(node("w1"), submitted=100, done=50))
    clock.advance(1.0)
    view.on_status(status(node("w1"), submitted=300, done=150, failed=2))
    assert view.totals["submitted"] == 300 and view.totals["failed"] == 2
    rates = view.rates()
    assert rates["submitted"] == pytest.approx(200.0)
    assert rates["done"] == pytest.approx(100.0)
    # Old samples leave the window, so the rate follows the recent past.
    for _ in range(int(RATE_WINDOW_S) + 2):
        clock.advance(1.0)
        view.on_status(status(node("w1"), submitted=300, done=150, failed=2))
    assert view.rates()["done"] == pytest.approx(0.0)


def test_restarted_coordinator_resets_rates_instead_of_going_negative(
    view: ClusterView, clock: FakeClock
) -> None:
    view.on_status(status(submitted=1000, done=1000))
    clock.advance(1.0)
    view.on_status(status(submitted=10, done=5))
    assert view.rates()["done"] == 0.0
    clock.advance(1.0)
    view.on_status(status(submitted=20, done=15))
    assert view.rates()["done"] == pytest.approx(10.0)


def test_node_events_feed_detection_and_recovery(view: ClusterView) -> None:
    view.on_node_event(NodeEventReport("w1", "joined", 1.0))
    view.on_node_event(NodeEventReport("w1", "suspect", 2.0))
    view.on_node_event(NodeEventReport("w1", "dead", 3.0, detection_latency_s=1.6))
    view.on_node_event(NodeEventReport("w1", "alive", 9.0, recovery_s=6.0))
    view.on_node_event(NodeEventReport("w2", "dead", 10.0, detection_latency_s=1.8))
    snap = view.snapshot()
    assert snap["failure_detection"] == {"last_s": 1.8, "count": 2}
    assert snap["partition_recovery"] == {"last_s": 6.0, "count": 1}
    assert view.node_events["dead"] == 2 and view.node_events["joined"] == 1
    events = snap["events"]
    assert isinstance(events, list)
    assert [e["event"] for e in events][:2] == ["dead", "alive"]  # newest first


def test_node_event_updates_the_node_before_the_next_status(
    view: ClusterView, clock: FakeClock
) -> None:
    view.on_status(status(node("w1", age=0.2), node("w2")))
    clock.advance(0.3)
    view.on_node_event(NodeEventReport("w1", "dead", 5.0, detection_latency_s=1.5))
    view.on_node_event(NodeEventReport("w9", "dead", 5.0, detection_latency_s=1.5))  # unknown
    by_id = {n.report.node_id: n for n in view.nodes()}
    assert by_id["w1"].report.state == "dead"
    assert view.node_age_s(by_id["w1"]) == pytest.approx(0.5)
    assert "w9" not in by_id
    view.on_node_event(NodeEventReport("w1", "alive", 6.0, recovery_s=1.0))
    assert view.nodes()[0].report.state == "alive"
    assert view.node_age_s(view.nodes()[0]) == pytest.approx(0.0)
    view.on_status(status(node("w1", "suspect"), node("w2"), seq=2))  # STATUS has the last word
    assert view.nodes()[0].report.state == "suspect"


def test_alive_without_recovery_time_is_not_a_recovery(view: ClusterView) -> None:
    view.on_node_event(NodeEventReport("w1", "alive", 1.0))
    assert view.partition_recovery.count == 0


def test_task_stats_make_latency_points(view: ClusterView, clock: FakeClock) -> None:
    view.on_task_stats(TaskStatsReport((0.001, 0.002, 0.003, 0.100), 4, 0))
    view.on_task_stats(TaskStatsReport((), 0, 0))  # an empty batch draws nothing
    clock.advance(2.0)
    latency = view.snapshot()["latency"]
    assert isinstance(latency, list) and len(latency) == 1
    point = latency[0]
    assert point["count"] == 4
    assert point["p50_ms"] == pytest.approx(2.0)
    assert point["p99_ms"] == pytest.approx(100.0)
    assert point["age_s"] == pytest.approx(2.0)
    clock.advance(1000.0)
    view.on_task_stats(TaskStatsReport((0.5,), 1, 0))
    assert len(view.snapshot()["latency"]) == 1  # type: ignore[arg-type]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(range(1, 101), 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0


def test_snapshot_is_json_with_contract_keys(view: ClusterView) -> None:
    view.on_status(status(node("w1"), submitted=3))
    doc = json.loads(json.dumps(view.snapshot()))
    assert {"coordinator", "nodes", "totals", "failure_detection", "partition_recovery"} <= set(doc)
    assert set(doc["totals"]) == {
        "submitted",
        "done",
        "failed",
        "retried",
        "requeued",
        "duplicates",
        "bad_messages",
        "aborted_handshakes",
        "denied_handshakes",
        "refused_registrations",
        "pending",
        "in_flight",
    }
    assert set(doc["monitor"]) >= {"bad_messages", "uptime_s"}


# --- metrics ---------------------------------------------------------------------------------


def samples(metrics: ClusterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_follow_the_view(view: ClusterView) -> None:
    metrics = ClusterMetrics(view)
    view.on_status(
        status(
            node("w1"),
            node("w2", "dead"),
            submitted=10,
            done=7,
            failed=1,
            retried=2,
            requeued=3,
            duplicates=4,
            bad_messages=5,
        )
    )
    view.on_bad_message()
    metrics.observe_latencies((0.01, 0.02))
    metrics.observe_detection(1.7)
    metrics.observe_recovery(12.0)
    got = samples(metrics)
    assert got[("cluster_coordinator_up", ())] == 1.0
    assert got[("cluster_nodes", (("state", "alive"),))] == 1.0
    assert got[("cluster_nodes", (("state", "dead"),))] == 1.0
    assert got[("cluster_node_state", (("node", "w2"), ("state", "dead")))] == 1.0
    assert got[("cluster_node_state", (("node", "w2"), ("state", "alive")))] == 0.0
    assert got[("cluster_node_in_flight", (("node", "w1"),))] == 1.0
    assert got[("cluster_node_cpu_percent", (("node", "w1"),))] == 25.0
    assert got[("cluster_node_memory_percent", (("node", "w1"),))] == 50.0
    assert got[("cluster_tasks_submitted_total", ())] == 10.0
    assert got[("cluster_tasks_done_total", ())] == 7.0
    assert got[("cluster_tasks_failed_total", ())] == 1.0
    assert got[("cluster_tasks_retried_total", ())] == 2.0
    assert got[("cluster_tasks_requeued_total", ())] == 3.0
    assert got[("cluster_tasks_duplicate_results_total", ())] == 4.0
    assert got[("cluster_bad_messages_total", ())] == 5.0
    assert got[("cluster_monitor_bad_messages_total", ())] == 1.0
    assert got[("cluster_task_latency_seconds_count", ())] == 2.0
    assert got[("cluster_failure_detection_seconds_count", ())] == 1.0
    assert got[("cluster_failure_detection_seconds_bucket", (("le", "1.75"),))] == 1.0
    assert got[("cluster_failure_detection_seconds_bucket", (("le", "1.5"),))] == 0.0
    assert got[("cluster_partition_recovery_seconds_sum", ())] == 12.0


def test_peer_counters_are_kept_apart_from_bad_messages(view: ClusterView) -> None:
    """Probes, security refusals and refused registrations each have their own counter."""
    metrics = ClusterMetrics(view)
    counters = {"aborted_handshakes": 35, "denied_handshakes": 2, "refused_registrations": 1}
    view.on_status(status(node("w1"), bad_messages=0, **counters))
    assert {k: view.snapshot()["totals"][k] for k in counters} == counters  # type: ignore[index]
    got = samples(metrics)
    assert got[("cluster_bad_messages_total", ())] == 0.0
    assert got[("cluster_aborted_handshakes_total", ())] == 35.0
    assert got[("cluster_denied_handshakes_total", ())] == 2.0
    assert got[("cluster_refused_registrations_total", ())] == 1.0


def test_metrics_pass_promtool(view: ClusterView) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    metrics = ClusterMetrics(view)
    view.on_status(status(node("w1"), node("w2", "suspect"), submitted=1))
    metrics.observe_latencies((0.004,))
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.exposition(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the follower's dispatch, fed with real codec frames -------------------------------------


@pytest.fixture
def follower(clock: FakeClock) -> Iterator[StatusFollower]:
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    # Connecting to a port nobody listens on is fine: handle() is called directly.
    f = StatusFollower(ctx, "tcp://127.0.0.1:1", ClusterView(clock=clock))
    yield f
    f.close()
    ctx.term()


def test_follower_dispatches_codec_frames(follower: StatusFollower) -> None:
    st = Status(
        "c9",
        4,
        0.25,
        2,
        [NodeStatus("w1", "alive", 0.1, 2, 8, ["echo"], 10.0, 20.0, 0.3, 42)],
        Totals(submitted=5, done=4),
    )
    follower.handle([encode(st)])
    follower.handle([encode(NodeEvent("w1", "dead", 1.0, 0.9, None))])
    follower.handle([encode(TaskStats([0.01, 0.02], 2, 0))])
    view = follower.view
    assert view.coordinator_id == "c9" and view.dead_after_s == pytest.approx(0.75)
    assert view.totals["done"] == 4
    assert view.failure_detection.last_s == 0.9
    assert view.monitor_bad_messages == 0
    got = samples(follower.metrics)
    assert got[("cluster_task_latency_seconds_count", ())] == 2.0
    assert got[("cluster_failure_detection_seconds_count", ())] == 1.0


@pytest.mark.parametrize(
    "frames",
    [
        [b""],
        [b"\xff\xfe garbage"],
        [b'{"v": 99, "type": "STATUS"}'],
        [b'{"v": 1, "type": "NOPE"}'],
        [b'{"v": 1, "type": "STATUS", "coordinator_id": "c"}'],
        [b'{"v":1,"type":"DRAIN","worker_id":"w1"}'],  # valid, but not a status message
        [b"a", b"b"],
        [b"[" * 100_000],
        [b"x" * (2 << 20)],
    ],
)
def test_follower_counts_garbage(follower: StatusFollower, frames: list[bytes]) -> None:
    follower.handle(frames)
    assert follower.view.monitor_bad_messages == 1
    assert follower.view.coordinator_id is None


# --- HTTP router in-process --------------------------------------------------------------------


async def http_get(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_http_server_routes_and_rejects() -> None:
    routes = {"/x": lambda req: Response.json(200, {"q": req.query.get("a", [""])[0]})}
    server = HttpServer(routes)
    _, port = await server.start("127.0.0.1", 0)
    try:
        ok = await http_get(port, b"GET /x?a=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b'{"q":"1"}')
        missing = await http_get(port, b"GET /nope HTTP/1.0\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        post = await http_get(
            port, b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        assert post.startswith(b"HTTP/1.1 405")
        bad = await http_get(port, b"\x00\x01garbage\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")
        long_line = await http_get(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
        assert long_line.startswith(b"HTTP/1.1 431")
        head = await http_get(port, b"HEAD /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        # Keep-alive: two requests on one connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /x HTTP/1.1\r\n\r\n")
            await writer.drain()
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            length = int(head_bytes.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert (await reader.readexactly(length)) == b'{"q":""}'
        writer.close()
    finally:
        await server.close()


def test_routes_serve_every_page(follower: StatusFollower) -> None:
    routes = build_routes(follower)
    req = Request("GET", "/", {}, {})
    assert set(routes) >= {"/", "/health", "/api/cluster", "/metrics", "/static/dashboard.js"}
    page = routes["/"](req)
    assert page.status == 200 and b"/static/dashboard.js" in page.body
    assert b"http://" not in page.body and b"https://" not in page.body  # nothing external
    assert routes["/health"](req).status == 503
    assert routes["/api/cluster"](req).status == 200
    assert routes["/metrics"](req).body.startswith(b"# HELP")
