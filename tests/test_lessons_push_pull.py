"""01-zmq-basics/push_pull.py run as a user runs it: sink, workers and ventilator as processes."""

from __future__ import annotations

import re
import signal

import pytest
import zmq

from conftest import assert_exits_with, stop_cleanly

LESSON = "01-zmq-basics/push_pull.py"
README_PORT = 5557  # tasks; the sink's results port is README_PORT + 1


def shares(report: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"worker (\S+): (\d+)", report)}


def test_readme_pipeline(spawn, run, free_ports, port_is_free):
    """sink, worker 1 &, worker 2 &, ventilator 50: exactly as the README shows them."""
    readme = port_is_free(README_PORT) and port_is_free(README_PORT + 1)
    port_args = [] if readme else ["--port", str(free_ports(2))]
    sink = spawn(LESSON, "sink", *port_args)
    sink.wait_for(r"PULL bound")
    for worker_id in ("1", "2"):
        spawn(LESSON, "worker", worker_id, *port_args).wait_for(r"PULL from")

    result = run(LESSON, "ventilator", "50", *port_args, timeout=60)

    assert result.returncode == 0, result.stderr
    batch = re.search(r"sent 50 tasks in batch (\d+)", result.stdout)
    assert batch, result.stdout
    report = sink.wait_for(rf"batch {batch[1]}: 50 results in [\d.]+ s; (.*)")[1]
    assert sum(shares(report).values()) == 50
    assert set(shares(report)) == {"1", "2"}, report  # the 500 ms settle let both join


def test_sink_survives_garbage_and_counts_it(spawn, run, free_ports, ctx):
    port = free_ports(2)
    sink = spawn(LESSON, "sink", "--port", str(port))
    sink.wait_for(r"PULL bound")
    pusher = ctx.socket(zmq.PUSH)
    pusher.setsockopt(zmq.LINGER, 1000)  # close() still delivers both messages
    pusher.connect(f"tcp://127.0.0.1:{port + 1}")
    pusher.send_multipart([b"nonsense"])
    pusher.send_multipart([b"x", b"y", b"z", b"w"])
    pusher.close()
    sink.wait_for(r"ignored a malformed message of 4 frames")
    spawn(LESSON, "worker", "1", "--port", str(port)).wait_for(r"PULL from")
    result = run(LESSON, "ventilator", "5", "--port", str(port), "--max-work-ms", "1", timeout=60)
    assert result.returncode == 0, result.stderr
    sink.wait_for(r"5 results in")


def test_ventilator_without_sink_fails_clearly(run, free_ports):
    """No sink: the ventilator waits WAIT_S (10 s), then says so; it does not hang."""
    port = free_ports(2)
    result = run(LESSON, "ventilator", "10", "--port", str(port), timeout=60)
    assert_exits_with(result, 1, "no sink on port")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_worker_and_sink_stop_cleanly(spawn, free_ports, signum):
    port = free_ports(2)
    sink = spawn(LESSON, "sink", "--port", str(port))
    worker = spawn(LESSON, "worker", "7", "--port", str(port))
    sink.wait_for(r"PULL bound")
    worker.wait_for(r"PULL from")
    for proc in (worker, sink):
        stop_cleanly(proc, signum)
    assert "[worker 7] interrupted" in worker.stdout()
