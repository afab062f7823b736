"""Whose heartbeat interval applies: the coordinator's, for every peer (real processes).

Issue 11: WELCOME carries ``heartbeat_interval_s`` and ``liveness``, and a worker that ignored
them made a coordinator started with another interval see its workers reconnect over and
over. Here the workers and the client keep their defaults (0.5 s, liveness 3) while the
coordinator runs faster or slower; nobody may be lost, reset or declared dead, and work gets
done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

COORDINATOR = "02-cluster-patterns/coordinator.py"
WORKER = "02-cluster-patterns/worker.py"
CLIENT = "02-cluster-patterns/client.py"
TROUBLE = ("coordinator lost", "registering again", "refused", "Traceback")


@pytest.mark.parametrize(("interval", "liveness"), [(0.15, 3), (2.0, 2)])
def test_workers_and_clients_adopt_the_coordinators_heartbeat_settings(
    spawn: Any, run: Any, free_port: Callable[[], int], interval: float, liveness: int
) -> None:
    port, status_port = free_port(), free_port()
    coordinator = spawn(
        COORDINATOR, "--port", str(port), "--status-port", str(status_port),
        "--heartbeat-interval", str(interval), "--liveness", str(liveness),
    )  # fmt: skip
    coordinator.wait_for("coordinator ready")
    workers = [spawn(WORKER, "--id", f"w{i}", "--port", str(port)) for i in (1, 2)]
    for proc in workers:
        proc.wait_for("registered with")
    # Several of the slow coordinator's windows, and twice the default worker window (1.5 s)
    # of which the old worker would have judged the slow one lost.
    time.sleep(max(4.0, interval * liveness * 2))
    done = run(CLIENT, "--port", str(port), "--count", "200", "--kind", "echo", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resubmissions" not in done.stdout and "lost 0" in done.stdout
    for proc in workers:
        output = proc.output()
        assert not [t for t in TROUBLE if t in output], output
        assert output.count("registered") == 1, output
    log = coordinator.output()
    assert "joined" in log and " dead" not in log and "suspect" not in log, log
