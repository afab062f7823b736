"""Who may hold a worker id, and what counts as a bad message: real processes on loopback.

Issue 10, rows "a second peer sends REGISTER with the worker_id of a live worker" and "health
probes and sockets closed mid-handshake are counted as bad messages". Every check reads what
goes over the wire (JSON STATUS, the monitor's HTTP API, exit codes and log lines), not the
Python classes behind it.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import zmq

from cluster_patterns.healthcheck import probe_tcp

INTERVAL = 0.5
LIVENESS = 3
WINDOW = INTERVAL * LIVENESS  # silence after which a worker is dead and its id free again
TIMING = ("--heartbeat-interval", str(INTERVAL), "--liveness", str(LIVENESS))
COORDINATOR = "02-cluster-patterns/coordinator.py"
WORKER = "02-cluster-patterns/worker.py"
CLIENT = "02-cluster-patterns/client.py"
MONITOR = "02-cluster-patterns/monitor.py"
# The 10-byte ZMTP signature and a ZMTP 3.0 greeting for the NULL mechanism.
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
NULL_GREETING = ZMTP_SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def start_coordinator(
    spawn: Any, free_port: Callable[[], int], *flags: str
) -> tuple[Any, int, int]:
    port, status_port = free_port(), free_port()
    proc = spawn(
        COORDINATOR, "--port", str(port), "--status-port", str(status_port), *TIMING, *flags
    )  # fmt: skip
    proc.wait_for("coordinator ready")
    return proc, port, status_port


def start_coordinator_and_tap(
    spawn: Any, free_port: Callable[[], int], status_tap: Any
) -> tuple[Any, int, int, Any]:
    """A coordinator, and a tap on its status port: (process, task port, status port, tap)."""
    proc, port, status_port = start_coordinator(spawn, free_port)
    return proc, port, status_port, status_tap(status_port)


def start_worker(spawn: Any, port: int, wid: str, capacity: int = 4) -> Any:
    return spawn(
        WORKER, "--id", wid, "--port", str(port), "--capacity", str(capacity),
        "--reconnect-max", "1.0", *TIMING,
    )  # fmt: skip


def registered_worker(spawn: Any, port: int, wid: str, capacity: int = 4) -> Any:
    """A worker that the coordinator has welcomed (it said "registered with")."""
    worker = start_worker(spawn, port, wid, capacity)
    worker.wait_for("registered with")
    return worker


def node(status: dict[str, Any], wid: str) -> Any:
    return next((n for n in status["nodes"] if n["node_id"] == wid), None)


def run_client(run: Any, port: int, count: int) -> dict[str, Any]:
    done = run(CLIENT, "--port", str(port), "--count", str(count), "--kind", "echo", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"stdout": done.stdout}


# --- Row 1: a worker id belongs to one live peer ---------------------------------------------


def test_a_second_worker_with_the_same_id_is_refused_and_exits(
    spawn: Any, free_port: Callable[[], int], run: Any, status_tap: Any
) -> None:
    coordinator, port, status_port, tap = start_coordinator_and_tap(spawn, free_port, status_tap)
    first = registered_worker(spawn, port, "w1", capacity=3)
    second = start_worker(spawn, port, "w1", capacity=7)
    code = second.wait(timeout=8 * WINDOW + 10)
    assert code == 3, second.output()
    errors = [line for line in second.stderr().splitlines() if "error" in line]
    assert errors and "w1" in errors[-1] and "in use" in errors[-1], second.output()
    assert "Traceback" not in second.output()
    # The first worker never noticed: no RESET, no second registration, its capacity stays.
    assert "registering again" not in first.stdout() and "registered again" not in first.stdout()
    status = tap.wait_for(lambda s: s["totals"]["refused_registrations"] >= 1)
    assert node(status, "w1")["capacity"] == 3 and node(status, "w1")["state"] == "alive"
    run_client(run, port, 100)
    status = tap.wait_for(lambda s: s["totals"]["done"] >= 100)
    assert node(status, "w1")["done"] == 100
    assert "refused" in coordinator.output()


def test_a_restarted_worker_gets_its_id_back_within_a_liveness_window(
    spawn: Any, free_port: Callable[[], int], run: Any, status_tap: Any
) -> None:
    _, port, status_port, tap = start_coordinator_and_tap(spawn, free_port, status_tap)
    old = registered_worker(spawn, port, "w1")
    old.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    new = start_worker(spawn, port, "w1")
    new.wait_for(r"worker w1 registered with", timeout=WINDOW + 15)
    took = time.monotonic() - killed_at
    assert took <= WINDOW + 10, f"took {took:.1f} s"  # python start-up plus at most one window
    assert new.popen.poll() is None
    tap.wait_for(lambda s: (node(s, "w1") or {}).get("state") == "alive")
    run_client(run, port, 50)


def test_an_impostor_socket_is_refused_and_the_worker_keeps_its_id(
    spawn: Any, free_port: Callable[[], int], run: Any, status_tap: Any
) -> None:
    _, port, status_port, tap = start_coordinator_and_tap(spawn, free_port, status_tap)
    worker = registered_worker(spawn, port, "w1", capacity=2)
    ctx = zmq.Context()
    replies: list[dict[str, Any]] = []
    try:
        # Both the routing id the reference worker used to have and an arbitrary one.
        for routing_id in (b"worker:w1", b"someone-else"):
            impostor = ctx.socket(zmq.DEALER)
            impostor.setsockopt(zmq.LINGER, 0)
            impostor.setsockopt(zmq.ROUTING_ID, routing_id)
            impostor.connect(f"tcp://127.0.0.1:{port}")
            register = {"v": 1, "type": "REGISTER", "worker_id": "w1", "capacity": 64,
                        "capabilities": ["echo"], "running": []}  # fmt: skip
            impostor.send(json.dumps(register).encode())
            assert impostor.poll(10_000), "no answer to the impostor's REGISTER"
            replies.append(json.loads(impostor.recv()))
            impostor.close()
    finally:
        ctx.term()
    assert [r["type"] for r in replies] == ["REFUSED", "REFUSED"], replies
    assert {r["reason"] for r in replies} == {"worker_id_in_use"}
    time.sleep(WINDOW)
    holder: Any = node(tap.wait_for(lambda s: node(s, "w1") is not None), "w1")
    assert holder["capacity"] == 2 and holder["state"] == "alive"
    assert "registering again" not in worker.stdout()
    run_client(run, port, 20)


# --- Row 2: probes and aborted handshakes are not bad messages -------------------------------


def api(base: str, path: str) -> bytes:
    with urllib.request.urlopen(base + path, timeout=5) as response:
        body: bytes = response.read()
        return body


def metric(base: str, name: str) -> float:
    for line in api(base, "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def test_probes_and_aborted_handshakes_are_counted_apart_from_bad_messages(
    spawn: Any, free_port: Callable[[], int], run: Any, status_tap: Any
) -> None:
    _, port, status_port, tap = start_coordinator_and_tap(spawn, free_port, status_tap)
    http_port = free_port()
    monitor = spawn(MONITOR, "--status-port", str(status_port), "--port", str(http_port), *TIMING)
    monitor.wait_for("monitor ready")
    workers = {wid: start_worker(spawn, port, wid) for wid in ("w1", "w2")}
    for proc in workers.values():
        proc.wait_for("registered with")

    probes = 0
    for _ in range(20):  # what docker-compose's healthcheck runs, on both ports
        probe_tcp("127.0.0.1", port)
        probe_tcp("127.0.0.1", status_port)
        probes += 2
    probe = run("-m", "cluster_patterns.healthcheck", "tcp", "--port", str(port))
    assert probe.returncode == 0, probe.stderr
    probes += 1
    for cut in (1, 10, 30):  # a peer that closes in the middle of its greeting
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(NULL_GREETING[:cut])
        probes += 1
    ctx = zmq.Context()
    try:
        for _ in range(5):  # ZeroMQ sockets closed before their handshake completed
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.close()
    finally:
        ctx.term()
    for _ in range(2):  # worker restarts
        workers["w2"].signal(signal.SIGKILL)
        workers["w2"].wait()
        workers["w2"] = start_worker(spawn, port, "w2")
        workers["w2"].wait_for("registered with", timeout=30)

    status = tap.wait_for(lambda s: s["totals"]["aborted_handshakes"] >= probes)
    assert status["totals"]["bad_messages"] == 0, status["totals"]
    run_client(run, port, 20)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 10
    while json.loads(api(base, "/api/cluster"))["totals"]["aborted_handshakes"] < probes:
        assert time.monotonic() < deadline, api(base, "/api/cluster")
        time.sleep(0.1)
    assert json.loads(api(base, "/api/cluster"))["totals"]["bad_messages"] == 0
    assert metric(base, "cluster_bad_messages_total") == 0
    assert metric(base, "cluster_aborted_handshakes_total") >= probes
    assert b'id="total-aborted_handshakes"' in api(base, "/")


def test_zmtp_protocol_violations_and_garbage_still_count_as_bad(
    spawn: Any, free_port: Callable[[], int], status_tap: Any
) -> None:
    _, port, status_port, tap = start_coordinator_and_tap(spawn, free_port, status_tap)
    before = tap.wait_for()["totals"]
    for command in (b"\x00\x03abc", b"\x04\x06\x05HELLO"):  # a message before READY, a HELLO
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(NULL_GREETING + command)
            time.sleep(0.1)
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 1000)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        for frame in (b"not json", b'{"v":1,"type":"NOPE"}', b""):
            dealer.send(frame)
        dealer.close()
    finally:
        ctx.term()
    status = tap.wait_for(lambda s: s["totals"]["bad_messages"] >= before["bad_messages"] + 5)
    assert status["totals"]["bad_messages"] == before["bad_messages"] + 5


# --- A coordinator at its limit of unfinished tasks ---------------------------------------------


def test_tasks_over_the_unfinished_limit_are_refused_then_all_run(
    spawn: Any, free_port: Callable[[], int], run: Any, status_tap: Any
) -> None:
    """With --max-unfinished 10, a client's 30 tasks are accepted 10 at a time: the rest are
    left out of ACCEPTED and counted, and the client's re-submissions get every one done."""
    coordinator, port, status_port = start_coordinator(spawn, free_port, "--max-unfinished", "10")
    tap = status_tap(status_port)
    registered_worker(spawn, port, "w1", capacity=2)
    done = run(
        CLIENT, "--port", str(port), "--count", "30", "--kind", "sleep", "--ms", "20",
        "--timeout", "90", timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 30, done 30, failed 0" in done.stdout and "lost 0" in done.stdout
    status = tap.wait_for(lambda s: s["totals"]["done"] == 30)
    assert status["totals"]["submitted"] == 30 and status["totals"]["refused_tasks"] >= 20
    assert "10 tasks are unfinished, the most it holds: " in coordinator.stderr()
