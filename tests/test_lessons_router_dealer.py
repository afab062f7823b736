"""01-zmq-basics/router_dealer.py run as a user runs it: broker, workers, clients as processes."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest
import zmq

LESSON = "01-zmq-basics/router_dealer.py"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_pair(free_port) -> int:
    """A port P such that P and P+1 are both free (workers use P+1)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def start_broker_and_workers(spawn, port: str, *worker_ids: str):
    broker = spawn(LESSON, "broker", "--port", port)
    broker.wait_for(r"Ctrl-C stops")
    for worker_id in worker_ids:
        spawn(LESSON, "worker", worker_id, "--port", port)
        broker.wait_for(rf"worker-{worker_id} is ready")
    return broker


def test_broker_spreads_requests_over_workers(spawn, run, free_port):
    port = str(free_pair(free_port))
    broker = start_broker_and_workers(spawn, port, "1", "2")

    result = run(LESSON, "client", "1", "--count", "20", "--port", port, timeout=60)

    assert result.returncode == 0, result.stderr
    match = re.search(r"20 replies; served by (\d) worker\(s\): (.*)", result.stdout)
    assert match and match[1] == "2", result.stdout
    counts = dict(re.findall(r"(worker-\d): (\d+)", match[2]))
    assert set(counts) == {"worker-1", "worker-2"} and all(int(n) > 0 for n in counts.values())
    assert "round trip via the broker: median" in result.stdout
    # The envelopes, as the broker saw them: identity, empty delimiter, body.
    broker.wait_for(re.escape("frontend in:  [b'client-1', b'', b'request 1']"))
    broker.wait_for(re.escape("[b'worker-1', b'', b'READY']"))
    broker.signal(signal.SIGINT)
    assert broker.wait(timeout=10) == 0
    assert re.search(
        r"routed 20 requests; per worker: worker-1: \d+, worker-2: \d+", broker.stdout()
    )


def test_slow_worker_gets_fewer_requests(spawn, run, free_port):
    port = str(free_pair(free_port))
    broker = start_broker_and_workers(spawn, port, "1")
    spawn(LESSON, "worker", "9", "--work-ms", "50", "--port", port)
    broker.wait_for(r"worker-9 is ready")
    client = spawn(LESSON, "client", "1", "--count", "40", "--port", port)
    client2 = spawn(LESSON, "client", "2", "--count", "40", "--port", port)

    assert client.wait(timeout=60) == 0 and client2.wait(timeout=60) == 0
    fast = sum(int(n) for n in re.findall(r"worker-1: (\d+)", client.stdout() + client2.stdout()))
    slow = sum(int(n) for n in re.findall(r"worker-9: (\d+)", client.stdout() + client2.stdout()))
    assert fast + slow == 80
    assert fast > slow


def test_broker_survives_malformed_messages(spawn, run, free_port):
    port = free_pair(free_port)
    broker = start_broker_and_workers(spawn, str(port), "1")
    ctx = zmq.Context()
    try:
        rogue = ctx.socket(zmq.DEALER)  # a DEALER that forgets the empty delimiter
        rogue.setsockopt(zmq.LINGER, 1000)
        rogue.connect(f"tcp://127.0.0.1:{port}")
        rogue.send_multipart([b"no", b"delimiter", b"here"])
        rogue.close()
    finally:
        ctx.term()
    broker.wait_for(r"ignored malformed client message #1")

    result = run(LESSON, "client", "1", "--count", "3", "--port", str(port), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 replies" in result.stdout


def test_client_without_broker_gives_up(run, free_port):
    port = str(free_pair(free_port))
    started = time.monotonic()
    result = run(LESSON, "client", "1", "--timeout", "500", "--port", port, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - started < 0.5 + 10
    assert "no reply in 500 ms" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(spawn, run, free_port):
    port = str(free_pair(free_port))
    spawn(LESSON, "broker", "--port", port).wait_for(r"Ctrl-C stops")
    result = run(LESSON, "broker", "--port", port, timeout=30)
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["proxy"],
        ["worker"],
        ["client"],
        ["client", "1", "--count", "0"],
        ["worker", "1", "--work-ms", "-1"],
        ["broker", "--port", "99999"],
    ],
)
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run(LESSON, *args, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_broker_and_worker_stop_cleanly(spawn, free_port, signum):
    port = str(free_pair(free_port))
    broker = start_broker_and_workers(spawn, port)
    worker = spawn(LESSON, "worker", "5", "--port", port)
    broker.wait_for(r"worker-5 is ready")
    for proc in (worker, broker):
        proc.signal(signum)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr()


def test_demo_prints_figures(run):
    result = run(LESSON, "demo", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "served by 3 worker(s)" in result.stdout
    assert re.search(r"1000 requests through the broker in [\d.]+ s", result.stdout)
