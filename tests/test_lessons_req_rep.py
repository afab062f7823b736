"""01-zmq-basics/req_rep.py run as a user runs it: real processes, real sockets on free ports."""

from __future__ import annotations

import signal
import socket
import time

import pytest
import zmq

LESSON = "01-zmq-basics/req_rep.py"
README_PORT = 5555


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_request_reply(spawn, run, free_port):
    """The README's two commands; its exact form when 5555 is free, else the same with --port."""
    port = README_PORT if port_is_free(README_PORT) else free_port()
    server_args = ["server"] if port == README_PORT else ["server", "--port", str(port)]
    server = spawn(LESSON, *server_args)
    server.wait_for(r"waiting for requests")

    result = run(LESSON, "client", "localhost", str(port), "Hello ZeroMQ", timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "echo: Hello ZeroMQ" in result.stdout
    assert "round trip:" in result.stdout and "µs" in result.stdout
    server.wait_for(r"request #1: 'Hello ZeroMQ'")


def test_many_requests_report_round_trip_figures(spawn, run, port):
    server = spawn(LESSON, "server", "--port", str(port))
    server.wait_for(r"waiting for requests")

    # The options form: with --port given, the lone positional is the message.
    result = run(LESSON, "client", "--port", str(port), "ping", "--count", "300", timeout=60)

    assert result.returncode == 0, result.stderr
    assert "reply 300/300" in result.stdout
    assert "300 round trips: min" in result.stdout
    assert "requests/s" in result.stdout


def test_client_without_server_gives_up_in_time(run, port):
    timeout_ms, retries = 300, 3
    started = time.monotonic()
    result = run(
        LESSON,
        "client",
        "localhost",
        str(port),
        "anyone?",
        "--timeout",
        str(timeout_ms),
        "--retries",
        str(retries),
        timeout=60,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert elapsed < timeout_ms * retries / 1000 + 10  # margin: interpreter start on a busy box
    assert "no reply" in result.stderr and f"after {retries} attempts" in result.stderr
    assert result.stdout.count("no reply in 300 ms") == retries
    assert "Traceback" not in result.stderr


def test_lazy_pirate_survives_a_server_restart(spawn, port):
    first = spawn(LESSON, "server", "--port", str(port), "--crash-after", "2")
    first.wait_for(r"waiting for requests")
    client = spawn(
        LESSON, "client", "localhost", str(port), "tick", "--count", "4", "--timeout", "500",
        "--retries", "20",
    )  # fmt: skip
    assert first.wait(timeout=30) == 0  # it "crashed" with the third request in flight
    client.wait_for(r"no reply in 500 ms \(attempt 1/20\)")

    second = spawn(LESSON, "server", "--port", str(port))
    second.wait_for(r"waiting for requests")

    assert client.wait(timeout=60) == 0, client.output()
    assert "reply 4/4" in client.stdout()


def test_server_answers_a_malformed_request_and_carries_on(spawn, run, port):
    server = spawn(LESSON, "server", "--port", str(port))
    server.wait_for(r"waiting for requests")
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(f"tcp://127.0.0.1:{port}")
        req.send_multipart([b"one", b"two", b"three"])
        assert req.poll(10_000), "no answer to a malformed request"
        assert req.recv_multipart()[0] == b"?"
        req.close()
    finally:
        ctx.term()
    server.wait_for(r"bad request #1: 3 frames")

    result = run(LESSON, "client", "localhost", str(port), "still there?", timeout=60)
    assert result.returncode == 0 and "echo: still there?" in result.stdout


def test_port_in_use_is_one_clear_line(spawn, run, port):
    spawn(LESSON, "server", "--port", str(port)).wait_for(r"waiting for requests")

    result = run(LESSON, "server", "--port", str(port), timeout=30)

    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        [],
        ["client", "localhost", "notaport"],
        ["client", "--count", "0"],
        ["client", "--port", "1", "localhost", "2"],
        ["server", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run(LESSON, *args, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_server_stops_cleanly(spawn, port, signum):
    server = spawn(LESSON, "server", "--port", str(port))
    server.wait_for(r"waiting for requests")
    server.signal(signum)
    assert server.wait(timeout=10) == 0
    assert "interrupted, exiting" in server.stdout()
    assert "Traceback" not in server.stderr()


def test_demo_prints_figures(run):
    result = run(LESSON, "demo", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "REQ/REP 2000 round trips" in result.stdout
    assert "Lazy Pirate gave up" in result.stdout
