"""The real monitor process, fed by a fake coordinator: a PUB socket in this test.

The test binds PUB on a free port, starts `monitor.py --status-port THAT --port HTTP`, and
publishes codec-encoded STATUS / NODE_EVENT / TASK_STATS frames (and garbage) to it, then
checks what the monitor serves over HTTP.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from cluster_patterns import protocol
from cluster_patterns.protocol import NodeEventKind, NodeState, Totals, encode

INTERVAL_S = 0.2
LIVENESS = 2
DEAD_AFTER_S = INTERVAL_S * (LIVENESS + 1)
REQUIRED_METRICS = {
    "cluster_coordinator_up",
    "cluster_nodes",
    "cluster_node_state",
    "cluster_node_in_flight",
    "cluster_node_cpu_percent",
    "cluster_node_memory_percent",
    "cluster_tasks_submitted",
    "cluster_tasks_done",
    "cluster_tasks_failed",
    "cluster_tasks_retried",
    "cluster_tasks_requeued",
    "cluster_tasks_duplicate_results",
    "cluster_bad_messages",
    "cluster_aborted_handshakes",
    "cluster_denied_handshakes",
    "cluster_refused_registrations",
    "cluster_refused_tasks",
    "cluster_monitor_bad_messages",
    "cluster_task_latency_seconds",
    "cluster_failure_detection_seconds",
    "cluster_partition_recovery_seconds",
}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def get_json(url: str) -> tuple[int, Any]:
    code, body = get(url)
    return code, json.loads(body)


# What every fake node reports, besides its id, state and done count.
NODE_FIGURES: dict[str, Any] = {
    "last_seen_age_s": 0.05,
    "in_flight": 1,
    "capacity": 4,
    "capabilities": ["echo"],
    "cpu_percent": 12.0,
    "memory_percent": 34.0,
    "load1": 0.5,
}


def node_status(node_id: str, state: NodeState, done: int) -> protocol.NodeStatus:
    return protocol.NodeStatus(node_id=node_id, state=state, done=done, **NODE_FIGURES)


def status_message(
    coordinator: str, seq: int, nodes: list[protocol.NodeStatus], totals: Totals
) -> protocol.Status:
    return protocol.Status(
        coordinator_id=coordinator,
        seq=seq,
        heartbeat_interval_s=INTERVAL_S,
        liveness=LIVENESS,
        nodes=nodes,
        totals=totals,
    )


ALIVE, SUSPECT, DEAD = NodeState.ALIVE, NodeState.SUSPECT, NodeState.DEAD


class FakeCoordinator:
    """A PUB socket that speaks the status channel, driven step by step by the test."""

    def __init__(self, port: int) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        try:
            self.pub.bind(f"tcp://127.0.0.1:{port}")
        except zmq.ZMQError:
            self.close()
            raise
        self.seq = 0
        self.done = 0
        self.last_sent = time.monotonic()

    def close(self) -> None:
        self.pub.close(linger=0)
        self.ctx.term()

    def status(self, *states: NodeState) -> None:
        self.seq += 1
        self.done += 10
        nodes = [node_status(f"w{i + 1}", state, self.done) for i, state in enumerate(states)]
        totals = Totals(submitted=self.done + 5, done=self.done, failed=1, retried=2)
        self.pub.send(encode(status_message("fake", self.seq, nodes, totals)))
        self.last_sent = time.monotonic()

    def send(self, *frames: bytes) -> None:
        self.pub.send_multipart(list(frames))

    def beat_until(
        self, check: Callable[[], bool], *states: NodeState, timeout: float = 15
    ) -> None:
        """Keep publishing STATUS every interval until `check()` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.status(*states)
            if check():
                return
            time.sleep(INTERVAL_S / 2)
        raise AssertionError("condition not reached while publishing STATUS")


def rebind(port: int) -> FakeCoordinator:
    """A new fake on a port just released: libzmq closes listeners asynchronously."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return FakeCoordinator(port)
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def fake(free_port: Callable[[], int]) -> Iterator[FakeCoordinator]:
    coordinator = FakeCoordinator(free_port())
    yield coordinator
    coordinator.close()


@pytest.fixture
def monitor(spawn: Any, fake: FakeCoordinator, free_port: Callable[[], int]) -> Iterator[str]:
    status_port = fake.pub.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
    http_port = free_port()
    proc = spawn(
        "02-cluster-patterns/monitor.py",
        "--coordinator",
        "127.0.0.1",
        "--status-port",
        status_port,
        "--port",
        str(http_port),
        "--heartbeat-interval",
        str(INTERVAL_S),
        "--liveness",
        str(LIVENESS),
    )
    proc.wait_for(r"monitor ready: http://127\.0\.0\.1:\d+/", timeout=30)
    base = f"http://127.0.0.1:{http_port}"
    yield base
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "Traceback" not in proc.output()


def healthy(base: str) -> bool:
    return get(base + "/health")[0] == 200


def metric_values(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = get(base + "/metrics")
    assert code == 200
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_health_api_and_metrics(monitor: str, fake: FakeCoordinator) -> None:
    code, body = get_json(monitor + "/health")
    assert code == 503 and body["status"] == "unavailable"

    fake.beat_until(lambda: healthy(monitor), ALIVE, ALIVE, DEAD)
    code, body = get_json(monitor + "/health")
    assert code == 200 and body["status"] == "ok" and body["coordinator"] == "seen"

    now = time.time()
    fake.send(
        encode(
            protocol.NodeEvent(
                node_id="w3", event=NodeEventKind.DEAD, at=now, detection_latency_s=1.25
            )
        )
    )
    fake.send(
        encode(protocol.NodeEvent(node_id="w2", event=NodeEventKind.ALIVE, at=now, recovery_s=7.5))
    )
    fake.send(encode(protocol.TaskStats(latencies_s=[0.002, 0.004, 0.3], done=3, failed=0)))
    fake.beat_until(
        lambda: get_json(monitor + "/api/cluster")[1]["partition_recovery"]["count"] == 1,
        ALIVE,
        ALIVE,
        DEAD,
    )

    code, doc = get_json(monitor + "/api/cluster")
    assert code == 200
    assert doc["coordinator"]["seen"] is True and doc["coordinator"]["id"] == "fake"
    assert isinstance(doc["coordinator"]["last_seen_age_s"], float)
    assert [(n["id"], n["state"]) for n in doc["nodes"]] == [
        ("w1", "alive"),
        ("w2", "alive"),
        ("w3", "dead"),
    ]
    for n in doc["nodes"]:  # what the fake published, aged by the time since
        assert {name: n[name] for name in NODE_FIGURES} == {
            **NODE_FIGURES,
            "last_seen_age_s": n["last_seen_age_s"],
        }
        assert 0.05 <= n["last_seen_age_s"] < 5.0 and n["done"] > 0
    assert doc["totals"]["failed"] == 1 and doc["totals"]["retried"] == 2
    assert doc["totals"]["done"] > 0
    assert doc["failure_detection"] == {"last_s": 1.25, "count": 1}
    assert doc["partition_recovery"] == {"last_s": 7.5, "count": 1}
    assert doc["monitor"]["bad_messages"] == 0 and doc["monitor"]["uptime_s"] > 0

    values = metric_values(monitor)
    names = {name for name, _ in values}
    for required in REQUIRED_METRICS:
        assert any(n == required or n.startswith(required + "_") for n in names), required
    assert values[("cluster_coordinator_up", ())] == 1.0
    assert values[("cluster_nodes", (("state", "dead"),))] == 1.0
    assert values[("cluster_node_state", (("node", "w3"), ("state", "dead")))] == 1.0
    assert values[("cluster_failure_detection_seconds_count", ())] == 1.0
    assert values[("cluster_partition_recovery_seconds_count", ())] == 1.0
    assert values[("cluster_task_latency_seconds_count", ())] == 3.0

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    _, text = get(monitor + "/metrics")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # The coordinator goes quiet: 503 once interval * (liveness + 1) has passed.
    while healthy(monitor):
        assert time.monotonic() - fake.last_sent < DEAD_AFTER_S + 2.0
        time.sleep(0.05)
    assert time.monotonic() - fake.last_sent >= DEAD_AFTER_S - 0.05
    code, body = get_json(monitor + "/health")
    assert code == 503 and body["coordinator"] == "lost"
    assert metric_values(monitor)[("cluster_coordinator_up", ())] == 0.0
    assert get_json(monitor + "/api/cluster")[1]["coordinator"]["seen"] is False


def test_garbage_is_counted_and_the_monitor_keeps_serving(
    monitor: str, fake: FakeCoordinator
) -> None:
    fake.beat_until(lambda: healthy(monitor), ALIVE)
    garbage = [
        [b"\x00\x01\x02 not json"],
        [b'{"v": 2, "type": "STATUS"}'],
        [b'{"v": 1, "type": "WHATEVER"}'],
        [b'{"v": 1, "type": "STATUS", "seq": -1}'],
        [b'{"v":1,"type":"NODE_EVENT","node_id":"w1","event":"exploded","at":1}'],
        [b"two", b"frames"],
        [b"{" * 50_000],
        [b"y" * (1 << 21)],  # over the codec's limit, under the socket's MAXMSGSIZE
    ]
    for frames in garbage:
        fake.send(*frames)
    fake.beat_until(
        lambda: get_json(monitor + "/api/cluster")[1]["monitor"]["bad_messages"] >= len(garbage),
        ALIVE,
    )
    assert metric_values(monitor)[("cluster_monitor_bad_messages_total", ())] == len(garbage)

    # A frame beyond MAXMSGSIZE makes libzmq end the session for good; the monitor notices
    # the silence and connects a fresh SUB socket.
    fake.send(b"z" * (8 << 20))

    def states() -> list[str]:
        return [n["state"] for n in get_json(monitor + "/api/cluster")[1]["nodes"]]

    fake.beat_until(lambda: states() == ["alive", "suspect"], ALIVE, SUSPECT, timeout=30)
    assert healthy(monitor)
    assert get_json(monitor + "/api/cluster")[1]["monitor"]["resubscribes"] >= 1
    assert get(monitor + "/")[0] == 200


def test_http_garbage_gets_400_and_the_monitor_keeps_serving(monitor: str) -> None:
    port = int(monitor.rsplit(":", 1)[1])
    requests = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 100_000 + b"\r\n\r\n",
    ]
    for raw in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(raw + b"\r\n\r\n")
            assert re.match(rb"HTTP/1\.[01] 400 ", conn.recv(64)), raw[:20]
    assert get_json(monitor + "/api/cluster")[1]["monitor"]["bad_http_requests"] == len(requests)
    assert metric_values(monitor)[("cluster_monitor_bad_http_requests_total", ())] == 3.0
    # The fixture checks that the monitor exits 0 without a traceback.


def test_bad_command_lines_exit_2(run: Any) -> None:
    for args in (["--port", "0"], ["--port", "70000"], ["--liveness", "x"], ["--nope"]):
        result = run("02-cluster-patterns/monitor.py", *args, timeout=30)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_busy_http_port_is_a_clear_error(run: Any, free_port: Callable[[], int]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            "02-cluster-patterns/monitor.py",
            "--status-port",
            str(free_port()),
            "--port",
            str(port),
            timeout=30,
        )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("monitor: error: cannot listen on 127.0.0.1:")
    assert f"port {port} is already in use" in line


def test_help_shows_every_flag_with_its_default(run: Any) -> None:
    result = run("02-cluster-patterns/monitor.py", "--help", timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in (
        ("--coordinator", "127.0.0.1"),
        ("--status-port", "5571"),
        ("--port", "5572"),
        ("--bind", "127.0.0.1"),
        ("--heartbeat-interval", "0.5"),
        ("--liveness", "3"),
        ("--verbose", "False"),
    ):
        assert flag in text
        assert f"(default: {default})" in text, flag
    assert "--keys DIR" in text


def test_follows_a_restarted_coordinator_and_stops_on_sigint(
    spawn: Any, fake: FakeCoordinator, free_port: Callable[[], int]
) -> None:
    status_port = int(fake.pub.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
    http_port = free_port()
    proc = spawn(
        "02-cluster-patterns/monitor.py",
        "--status-port",
        str(status_port),
        "--port",
        str(http_port),
    )
    proc.wait_for("monitor ready")
    base = f"http://127.0.0.1:{http_port}"
    fake.beat_until(lambda: healthy(base), ALIVE)

    # The coordinator dies and a new one (new id, counters from zero) binds the same port.
    fake.pub.close(linger=0)
    restarted = rebind(status_port)
    try:
        restarted.pub.setsockopt(zmq.LINGER, 0)

        def new_coordinator_seen() -> bool:
            return bool(get_json(base + "/api/cluster")[1]["coordinator"]["id"] == "fake2")

        deadline = time.monotonic() + 15
        while not new_coordinator_seen():
            assert time.monotonic() < deadline, "the monitor did not follow the new coordinator"
            restarted.seq += 1
            restarted.pub.send(encode(status_message("fake2", restarted.seq, [], Totals())))
            time.sleep(INTERVAL_S / 2)
        assert healthy(base)
        assert get_json(base + "/api/cluster")[1]["nodes"] == []
    finally:
        restarted.close()

    proc.signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert "Traceback" not in proc.output() and "monitor stopped" in proc.stdout()


def test_unusable_coordinator_address_is_a_clear_error(run: Any) -> None:
    result = run("02-cluster-patterns/monitor.py", "--coordinator", "not a host", timeout=30)
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr
