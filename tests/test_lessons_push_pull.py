"""01-zmq-basics/push_pull.py run as a user runs it: sink, workers and ventilator as processes."""

from __future__ import annotations

import re
import signal
import socket

import pytest
import zmq

LESSON = "01-zmq-basics/push_pull.py"
README_PORT = 5557  # tasks; the sink's results port is README_PORT + 1


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_pair(free_port) -> int:
    """A port P such that P and P+1 are both free (the lesson uses both)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def workers_in(report: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"worker (\S+): +(\d+) tasks", report)}


def test_readme_pipeline(spawn, run, free_port):
    """sink, worker 1 &, worker 2 &, ventilator 50: exactly as the README shows them."""
    readme = port_is_free(README_PORT) and port_is_free(README_PORT + 1)
    port_args = [] if readme else ["--port", str(free_pair(free_port))]
    sink = spawn(LESSON, "sink", *port_args)
    sink.wait_for(r"waiting for a batch")
    for worker_id in ("1", "2"):
        spawn(LESSON, "worker", worker_id, *port_args).wait_for(r"PULL from")

    result = run(LESSON, "ventilator", "50", *port_args, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "sent 50 tasks" in result.stdout and "msgs/s" in result.stdout
    sink.wait_for(r"PUSH round-robins tasks|one worker did everything|unfair share")
    assert re.search(r"batch \w+: 50 results in [\d.]+ s", sink.stdout())
    assert "tasks/s" in sink.stdout()
    per_worker = workers_in(sink.stdout())
    assert sum(per_worker.values()) == 50
    assert len([n for n in per_worker.values() if n > 0]) == 2, sink.stdout()


def test_sink_survives_garbage_and_counts_it(spawn, run, free_port):
    port = free_pair(free_port)
    sink = spawn(LESSON, "sink", "--port", str(port), "--batches", "1")
    sink.wait_for(r"waiting for a batch")
    ctx = zmq.Context()
    try:
        pusher = ctx.socket(zmq.PUSH)
        pusher.setsockopt(zmq.LINGER, 1000)
        pusher.connect(f"tcp://127.0.0.1:{port + 1}")
        pusher.send_multipart([b"nonsense"])
        pusher.send_multipart([b"BATCH", b"x", b"not-a-number"])
        pusher.close()
    finally:
        ctx.term()
    sink.wait_for(r"ignored malformed message #2")
    spawn(LESSON, "worker", "1", "--port", str(port)).wait_for(r"PULL from")

    result = run(LESSON, "ventilator", "5", "--port", str(port), "--max-work-ms", "1", timeout=60)

    assert result.returncode == 0, result.stderr
    assert sink.wait(timeout=30) == 0  # --batches 1: it reports one batch, then exits
    assert "5 results" in sink.stdout()


def test_ventilator_without_sink_fails_clearly(run, free_port):
    port = free_pair(free_port)
    result = run(LESSON, "ventilator", "10", "--port", str(port), "--wait-s", "1", timeout=30)
    assert result.returncode == 1
    assert "no sink at" in result.stderr
    assert "Traceback" not in result.stderr


def test_ventilator_without_workers_fails_clearly(spawn, run, free_port):
    port = free_pair(free_port)
    spawn(LESSON, "sink", "--port", str(port)).wait_for(r"waiting for a batch")
    result = run(LESSON, "ventilator", "10", "--port", str(port), "--wait-s", "1", timeout=30)
    assert result.returncode == 1
    assert "no worker connected" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(spawn, run, free_port):
    port = free_pair(free_port)
    spawn(LESSON, "sink", "--port", str(port)).wait_for(r"waiting for a batch")
    result = run(LESSON, "sink", "--port", str(port), timeout=30)
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["ventilator"],
        ["ventilator", "fifty"],
        ["ventilator", "0"],
        ["worker"],
        ["sink", "--port", "65535"],
        ["sink", "--batches", "-1"],
        ["pipeline"],
    ],
)
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run(LESSON, *args, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_worker_and_sink_stop_cleanly(spawn, free_port, signum):
    port = free_pair(free_port)
    sink = spawn(LESSON, "sink", "--port", str(port))
    worker = spawn(LESSON, "worker", "7", "--port", str(port))
    sink.wait_for(r"waiting for a batch")
    worker.wait_for(r"PULL from")
    for proc in (worker, sink):
        proc.signal(signum)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr()
    assert "stopping after 0 tasks" in worker.stdout()


def test_demo_prints_figures(run):
    result = run(LESSON, "demo", timeout=180)
    assert result.returncode == 0, result.stderr
    assert re.search(r"batch \w+: 50 results", result.stdout)
    assert re.search(r"batch \w+: 50000 results", result.stdout)
    assert "tasks/s" in result.stdout and "msgs/s" in result.stdout
