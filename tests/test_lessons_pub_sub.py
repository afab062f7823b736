"""01-zmq-basics/pub_sub.py run as a user runs it: publisher and subscribers as processes."""

from __future__ import annotations

import re
import signal
import socket

import pytest

LESSON = "01-zmq-basics/pub_sub.py"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_pair(free_port) -> int:
    """A port P such that P and P+1 are both free (--sync uses P+1)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def missed(report: str) -> tuple[int, int, int]:
    match = re.search(r"missed (\d+) at the start .*, (\d+) in gaps and (\d+) at the end", report)
    assert match, report
    return int(match[1]), int(match[2]), int(match[3])


def topics_in(report: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"\] +(\w+): received (\d+), sequence", report)}


def test_topic_filter_and_sync_miss_nothing(spawn, run, free_port):
    port = str(free_pair(free_port))
    everything = spawn(LESSON, "subscriber", "--sync", "--port", port)
    alerts = spawn(LESSON, "subscriber", "alerts", "--sync", "--port", port)
    everything.wait_for(r"subscribed to all topics")
    alerts.wait_for(r"subscribed to alerts")

    result = run(
        LESSON, "publisher", "--sync", "--subscribers", "2", "--count", "600", "--port", port,
        timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "published 600 messages" in result.stdout
    assert everything.wait(timeout=30) == 0 and alerts.wait(timeout=30) == 0
    assert topics_in(everything.stdout()) == {"alerts": 200, "metrics": 200, "status": 200}
    assert topics_in(alerts.stdout()) == {"alerts": 200}
    assert "got status" not in alerts.stdout() and "got metrics" not in alerts.stdout()
    assert missed(everything.stdout()) == (0, 0, 0)
    assert missed(alerts.stdout()) == (0, 0, 0)
    assert "received 600 messages" in everything.stdout()


def test_without_sync_the_first_messages_are_missed(spawn, run, free_port):
    port = str(free_pair(free_port))
    subscriber = spawn(LESSON, "subscriber", "--port", port, "--idle-s", "3")
    subscriber.wait_for(r"subscribed to all topics")

    result = run(LESSON, "publisher", "--port", port, "--count", "1500", timeout=60)

    assert result.returncode == 0, result.stderr
    assert subscriber.wait(timeout=30) == 0
    at_start, in_gaps, _ = missed(subscriber.stdout())
    assert at_start > 0  # the slow joiner: published before the subscription arrived
    assert in_gaps == 0


def test_hwm_drops_show_up_as_gaps(spawn, run, free_port):
    """The docstring's flood commands: a slow subscriber behind a small high-water mark."""
    port = str(free_pair(free_port))
    subscriber = spawn(
        LESSON, "subscriber", "--sync", "--hwm", "100", "--work-us", "100",
        "--kernel-buffer", "16384", "--idle-s", "2", "--port", port,
    )  # fmt: skip
    subscriber.wait_for(r"subscribed to all topics")

    result = run(
        LESSON, "publisher", "--sync", "--hwm", "100", "--rate", "0", "--count", "20000",
        "--kernel-buffer", "16384", "--port", port, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert subscriber.wait(timeout=60) == 0
    at_start, in_gaps, at_end = missed(subscriber.stdout())
    assert at_start == 0
    assert in_gaps + at_end > 0


def test_sync_publisher_without_subscribers_gives_up(run, free_port):
    port = str(free_pair(free_port))
    result = run(LESSON, "publisher", "--sync", "--wait-s", "1", "--port", port, timeout=30)
    assert result.returncode == 1
    assert "only 0 of 1 subscribers synced" in result.stderr
    assert "Traceback" not in result.stderr


def test_sync_subscriber_without_publisher_gives_up(run, free_port):
    port = str(free_pair(free_port))
    result = run(LESSON, "subscriber", "--sync", "--wait-s", "1", "--port", port, timeout=30)
    assert result.returncode == 1
    assert "no publisher probe" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(spawn, run, free_port):
    port = str(free_pair(free_port))
    publisher = spawn(LESSON, "publisher", "--count", "0", "--rate", "10", "--port", port)
    publisher.wait_for(r"PUB bound")
    result = run(LESSON, "publisher", "--port", port, timeout=30)
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_roles_exit_cleanly_with_a_report(spawn, free_port, signum):
    port = str(free_pair(free_port))
    subscriber = spawn(LESSON, "subscriber", "--port", port, "--idle-s", "0")
    publisher = spawn(LESSON, "publisher", "--count", "0", "--rate", "100", "--port", port)
    subscriber.wait_for(r"got \w+ #")
    for proc in (subscriber, publisher):
        proc.signal(signum)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr()
    assert "received" in subscriber.stdout() and "missed" in subscriber.stdout()


@pytest.mark.parametrize(
    "args",
    [
        ["broadcast"],
        ["publisher", "--count", "-1"],
        ["publisher", "--rate", "fast"],
        ["subscriber", "--hwm", "-5"],
        ["subscriber", "--port", "0"],
    ],
)
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run(LESSON, *args, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_prints_figures(run):
    result = run(LESSON, "demo", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "with --sync: 0 missed" in result.stdout
    assert re.search(r"flood past the high-water mark: [1-9]\d* dropped by PUB", result.stdout)
    assert "mean latency" in result.stdout
