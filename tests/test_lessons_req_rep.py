"""01-zmq-basics/req_rep.py run as a user runs it: real processes, real sockets on free ports."""

from __future__ import annotations

import signal
import time

import zmq

LESSON = "01-zmq-basics/req_rep.py"
README_PORT = 5555


def test_readme_request_reply(spawn, run, free_port, port_is_free):
    """The README's two commands; their exact form when 5555 is free, else with --port."""
    port = README_PORT if port_is_free(README_PORT) else free_port()
    server_args = ["server"] if port == README_PORT else ["server", "--port", str(port)]
    server = spawn(LESSON, *server_args)
    server.wait_for(r"REP bound")

    result = run(LESSON, "client", "localhost", str(port), "Hello ZeroMQ", timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "reply 1/1: 'echo: Hello ZeroMQ'" in result.stdout
    assert "1 round trip(s): median" in result.stdout and "µs" in result.stdout
    server.wait_for(r"request \d+-1: b'Hello ZeroMQ'")


def test_many_requests_report_round_trip_figures(spawn, run, port):
    spawn(LESSON, "server", "--port", str(port)).wait_for(r"REP bound")
    result = run(LESSON, "client", "localhost", str(port), "ping", "--count", "300", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "reply 300/300: 'echo: ping'" in result.stdout
    assert "300 round trip(s): median" in result.stdout and "requests/s" in result.stdout


def test_client_without_server_gives_up_in_time(run, port):
    started = time.monotonic()
    result = run(
        LESSON, "client", "localhost", str(port), "anyone?", "--timeout", "300", "--retries", "3",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 0.9 + 10  # margin: interpreter start on a busy box
    assert result.stdout.count("no reply in 300 ms") == 3
    assert "after 3 tries; is it running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_lazy_pirate_resends_to_a_restarted_server(spawn, port):
    """kill -9 with a request in the server's hands: the resend reaches the new server."""
    first = spawn(LESSON, "server", "--port", str(port), "--work-ms", "300")
    first.wait_for(r"REP bound")
    client = spawn(
        LESSON, "client", "localhost", str(port), "tick", "--count", "4", "--timeout", "800",
        "--retries", "10",
    )  # fmt: skip
    client.wait_for(r"reply 2/4")
    first.wait_for(r"request \d+-3")
    first.signal(signal.SIGKILL)
    client.wait_for(r"no reply in 800 ms \(attempt 1/10\)")
    second = spawn(LESSON, "server", "--port", str(port))
    assert client.wait(timeout=60) == 0, client.output()
    assert "reply 4/4" in client.stdout()
    # at-least-once: both servers saw request 3
    second.wait_for(r"request \d+-3: b'tick'")


def test_server_survives_malformed_requests(spawn, run, port):
    spawn(LESSON, "server", "--port", str(port)).wait_for(r"REP bound")
    ctx = zmq.Context()
    try:
        rogue = ctx.socket(zmq.REQ)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(f"tcp://127.0.0.1:{port}")
        rogue.send_multipart([b"one", b"two", b"three"])
        assert rogue.poll(5000), "the server did not answer a malformed request"
        assert rogue.recv_multipart()[1].startswith(b"error:")
        rogue.close()
    finally:
        ctx.term()
    result = run(LESSON, "client", "localhost", str(port), "still there", timeout=60)
    assert result.returncode == 0 and "echo: still there" in result.stdout
