"""02-cluster-patterns/reliability: the Guide's chapter-4 lessons, run as a user runs them.

The failure scenarios (a killed worker, a dead queue, a broker restart, a failover) run in
tests/test_docs_outputs.py through `labs.py`, whose output the reliability page quotes; here:
the plain flows, garbage from strangers, and the command lines.
"""

from __future__ import annotations

import re

import pytest
import zmq

from conftest import assert_exits_with

DIR = "02-cluster-patterns/reliability"
SIMPLE, PARANOID = f"{DIR}/simple_pirate.py", f"{DIR}/paranoid_pirate.py"
MAJORDOMO, BSTAR = f"{DIR}/majordomo.py", f"{DIR}/binary_star.py"


def send_garbage(*endpoints: str) -> None:
    """Frames no lesson expects, from a DEALER: wrong counts, no delimiters, bad UTF-8."""
    ctx = zmq.Context()
    try:
        for endpoint in endpoints:
            rogue = ctx.socket(zmq.DEALER)
            rogue.setsockopt(zmq.LINGER, 1000)
            rogue.connect(endpoint)
            for frames in (
                [b""],
                [b"\xff"],
                [b"", b"READY"] * 3,
                [b"", b"\xff", b""],
                [b"x", b"y", b"z", b"w", b"v"],
                [b"", b"MDPW01", b"\x01", b"\xff"],
            ):
                rogue.send_multipart(frames)
            rogue.close()
    finally:
        ctx.term()


@pytest.mark.parametrize("queue_lesson", [SIMPLE, PARANOID])
def test_pirate_queue_serves_a_client_after_garbage(spawn, run, free_ports, queue_lesson):
    port = free_ports(2)
    queue = spawn(queue_lesson, "queue", "--port", str(port))
    queue.wait_for(r"workers on port")
    spawn(queue_lesson, "worker", "--port", str(port), "--work-ms", "1").wait_for(r"READY")
    send_garbage(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}")
    result = run(SIMPLE, "client", "--count", "5", "--port", str(port), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 replies" in result.stdout and "no reply" not in result.stdout
    assert queue.popen.poll() is None, queue.output()


def test_majordomo_routes_by_service_after_garbage(spawn, run, free_ports):
    port = str(free_ports(1))
    broker = spawn(MAJORDOMO, "broker", "--port", port)
    broker.wait_for(r"ROUTER on port")
    spawn(MAJORDOMO, "worker", "upper", "--port", port)
    broker.wait_for(r"a worker for 'upper'")
    send_garbage(f"tcp://127.0.0.1:{port}")
    result = run(MAJORDOMO, "client", "upper", "shout", "--port", port, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[client] upper: SHOUT" in result.stdout
    assert broker.popen.poll() is None, broker.output()


def test_majordomo_client_without_a_worker_gives_up(spawn, run, free_ports):
    port = str(free_ports(1))
    spawn(MAJORDOMO, "broker", "--port", port).wait_for(r"ROUTER on port")
    result = run(MAJORDOMO, "client", "echo", "anyone?", "--port", port, timeout=60)
    assert_exits_with(result, 1, "no 'echo' reply in 3 tries")


def test_binary_star_serves_from_the_primary_and_survives_garbage(spawn, run, free_ports):
    port = free_ports(4)
    primary = spawn(BSTAR, "primary", "--port", str(port))
    backup = spawn(BSTAR, "backup", "--port", str(port))
    primary.wait_for(r"PRIMARY -> ACTIVE")
    backup.wait_for(r"BACKUP -> PASSIVE")
    send_garbage(*(f"tcp://127.0.0.1:{p}" for p in (port, port + 1)))
    result = run(BSTAR, "client", "--count", "3", "--port", str(port), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"request \d by (\w+)", result.stdout) == ["primary"] * 3
    assert primary.popen.poll() is None and backup.popen.poll() is None


def test_the_lessons_import_as_a_package() -> None:
    """02 is the package cluster_patterns; its reliability lessons import without running."""
    from cluster_patterns.reliability import binary_star, majordomo, paranoid_pirate, simple_pirate

    assert binary_star.ON_PEER[("PRIMARY", "ACTIVE")] == "PASSIVE"
    assert binary_star.may_serve("PASSIVE", peer_gone=True) == "ACTIVE"
    assert binary_star.may_serve("BACKUP", peer_gone=True) is None
    assert majordomo.SERVICES[b"upper"](b"abc") == b"ABC"
    assert paranoid_pirate.LIVENESS * paranoid_pirate.HEARTBEAT_S == 3.0
    assert simple_pirate.PORT == 5601
