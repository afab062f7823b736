"""01-zmq-basics/pub_sub.py and sync_pub_sub.py run as a user runs them: separate processes."""

from __future__ import annotations

import re
import time

import zmq

from conftest import assert_exits_with

LESSON = "01-zmq-basics/pub_sub.py"
SYNC = "01-zmq-basics/sync_pub_sub.py"


def topics_in(report: str) -> set[str]:
    return set(re.findall(r"\] +(\w+): \d+\.\.\d+ of", report))


def test_topic_filter_and_the_slow_joiner(spawn, run, port):
    everything = spawn(LESSON, "subscriber", "--port", str(port))
    alerts = spawn(LESSON, "subscriber", "alerts", "--port", str(port))
    everything.wait_for(r"topics: all")
    alerts.wait_for(r"topics: alerts")

    result = run(LESSON, "publisher", "--port", str(port), "--count", "1500", timeout=60)

    assert result.returncode == 0, result.stderr
    assert everything.wait(timeout=30) == 0 and alerts.wait(timeout=30) == 0
    assert topics_in(everything.stdout()) == {"alerts", "metrics", "status"}
    assert topics_in(alerts.stdout()) == {"alerts"}
    missed = re.search(
        r"missed (\d+) at the start \(slow joiner\) and (\d+) in gaps", alerts.stdout()
    )
    assert missed and int(missed[2]) == 0, alerts.stdout()


def test_subscriber_survives_strangers_frames(spawn, run, port):
    """A second publisher on the same SUB sends garbage; the subscriber counts on regardless."""
    sub = spawn(LESSON, "subscriber", "--port", str(port))
    sub.wait_for(r"topics: all")
    ctx = zmq.Context()
    try:
        rogue = ctx.socket(zmq.PUB)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.bind(f"tcp://127.0.0.1:{port}")
        for _ in range(50):  # for a second: the subscription has arrived by then
            rogue.send_multipart([b"status", b"not-a-number", b"x"])
            rogue.send(b"one frame")
            time.sleep(0.02)
        rogue.close()
    finally:
        ctx.term()
    result = run(LESSON, "publisher", "--port", str(port), "--count", "300", timeout=60)
    assert result.returncode == 0, result.stderr
    assert sub.wait(timeout=30) == 0
    assert "received" in sub.stdout() and "Traceback" not in sub.stderr()


def test_demo_prints_the_slow_joiner(run, free_ports):
    result = run(LESSON, "demo", "--port", str(free_ports(1)), timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"received \d+, missed [1-9]\d* at the start", result.stdout), result.stdout


def test_sync_loses_nothing_at_the_start(spawn, run, free_ports):
    port = str(free_ports(2))
    subs = [spawn(SYNC, "subscriber", "--port", port) for _ in "12"]
    for sub in subs:
        sub.wait_for(r"waiting for a probe")
    result = run(SYNC, "publisher", "--subscribers", "2", "--count", "600", "--port", port)
    assert result.returncode == 0, result.stderr
    for sub in subs:
        assert sub.wait(timeout=30) == 0
        assert "received 600 of 600; missed 0 at the start, 0 in gaps and 0 at the end" in (
            sub.stdout()
        )


def test_hwm_drops_show_up_as_gaps(spawn, run, free_ports):
    port = str(free_ports(2))
    limits = ["--hwm", "100", "--kernel-buffer", "16384", "--port", port]
    sub = spawn(SYNC, "subscriber", "--work-us", "100", *limits)
    sub.wait_for(r"waiting for a probe")
    result = run(SYNC, "publisher", "--rate", "0", "--count", "20000", *limits, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sub.wait(timeout=60) == 0
    lost = re.search(r"missed (\d+) at the start, (\d+) in gaps and (\d+) at the end", sub.stdout())
    assert lost, sub.stdout()
    assert int(lost[1]) == 0 and int(lost[2]) + int(lost[3]) > 0


def test_sync_publisher_without_subscribers_gives_up(run, free_ports):
    """WAIT_S is 30 s: the publisher gives up with exit 1 and a reason, not a hang."""
    result = run(SYNC, "publisher", "--port", str(free_ports(2)), timeout=90)
    assert_exits_with(result, 1, "0 of 1 subscribers ready")
