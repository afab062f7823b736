"""01-zmq-basics/router_dealer.py run as a user runs it: broker, workers, clients as processes."""

from __future__ import annotations

import re
import signal

import pytest
import zmq

from conftest import assert_exits_with, stop_cleanly

LESSON = "01-zmq-basics/router_dealer.py"


def start_broker_and_workers(spawn, port: str, *worker_args: list[str]):
    broker = spawn(LESSON, "broker", "--port", port)
    broker.wait_for(r"ROUTER on port")
    for args in worker_args:
        spawn(LESSON, "worker", *args, "--port", port).wait_for(r"sent READY")
    return broker


def test_broker_spreads_requests_and_shows_envelopes(spawn, run, free_ports):
    port = str(free_ports(2))
    broker = start_broker_and_workers(spawn, port, ["1"], ["2"])

    result = run(LESSON, "client", "1", "--count", "20", "--port", port, timeout=60)

    assert result.returncode == 0, result.stderr
    assert re.search(r"20 replies, served by \{'worker-1': \d+, 'worker-2': \d+\}", result.stdout)
    broker.wait_for(re.escape("frontend out: [b'client-1', b'', b'worker-"))
    broker.wait_for(r"backend in: \[b'worker-\d', b'', b'client-1', b'', b'worker-\d'")
    # the totals, printed once the traffic stops, without Ctrl-C
    broker.wait_for(r"routed 20 requests so far: \{'worker-1': \d+, 'worker-2': \d+\}")


def test_slow_worker_gets_fewer_requests(spawn, free_ports):
    port = str(free_ports(2))
    start_broker_and_workers(spawn, port, ["1"], ["9", "--work-ms", "50"])
    clients = [spawn(LESSON, "client", n, "--count", "40", "--port", port) for n in "12"]
    for client in clients:
        assert client.wait(timeout=60) == 0, client.output()
    text = "".join(client.stdout() for client in clients)
    fast = sum(map(int, re.findall(r"'worker-1': (\d+)", text)))
    slow = sum(map(int, re.findall(r"'worker-9': (\d+)", text)))
    assert fast + slow == 80 and fast > slow


def test_broker_survives_malformed_messages(spawn, run, free_ports):
    port = free_ports(2)
    start_broker_and_workers(spawn, str(port), ["1"])
    ctx = zmq.Context()
    try:
        for endpoint in (port, port + 1):  # garbage at the clients' and the workers' side
            rogue = ctx.socket(zmq.DEALER)
            rogue.setsockopt(zmq.LINGER, 1000)
            rogue.connect(f"tcp://127.0.0.1:{endpoint}")
            rogue.send_multipart([b"no", b"delimiter", b"here", b"at", b"all"])
            rogue.send(b"")
            rogue.close()
    finally:
        ctx.term()
    result = run(LESSON, "client", "1", "--count", "3", "--port", str(port), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 replies" in result.stdout


def test_client_without_broker_gives_up(run, free_ports):
    result = run(LESSON, "client", "1", "--port", str(free_ports(2)), timeout=30)
    assert_exits_with(result, 1, "no reply in 2500 ms")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_broker_and_worker_stop_cleanly(spawn, free_ports, signum):
    port = str(free_ports(2))
    broker = start_broker_and_workers(spawn, port)
    worker = spawn(LESSON, "worker", "5", "--port", port)
    worker.wait_for(r"sent READY")
    for proc in (worker, broker):
        stop_cleanly(proc, signum)


def test_demo_serves_every_client_by_every_worker(run, free_ports):
    result = run(LESSON, "demo", "--port", str(free_ports(2)), timeout=60)
    assert result.returncode == 0, result.stderr
    for client in ("client-1", "client-2"):
        assert re.search(
            rf"\[{client}\] 500 replies, served by \{{'worker-1': \d+, 'worker-2': \d+, "
            r"'worker-3': \d+\}",
            result.stdout,
        ), result.stdout
