"""Fixtures of the monitor's tests: a real week-2 cluster with its monitor, on free ports.

``monitored_cluster(workers=("w1", "w2"))`` starts a coordinator, the workers and a monitor
(all with the same --heartbeat-interval and --liveness), waits until the monitor lists
every worker alive, and returns a ``MonitoredCluster``. The root conftest.py's ``spawn``
stops every process when the test ends.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

INTERVAL_S = 0.5  # the CLI defaults: a dead verdict within 2 s
LIVENESS = 3
TIMING = ("--heartbeat-interval", str(INTERVAL_S), "--liveness", str(LIVENESS))


@dataclass
class MonitoredCluster:
    base: str  # the monitor's http://127.0.0.1:PORT
    task_port: int  # the coordinator's ROUTER, for workers and clients
    procs: dict[str, Any]  # "coordinator", "monitor", and every worker by its id
    run: Callable[..., Any]  # the root conftest's run_script

    def submit(self, *client_args: str) -> None:
        """Run client.py against the coordinator with ``client_args``; it must succeed."""
        client = self.run(
            "02-cluster-patterns/client.py", *client_args, "--port", str(self.task_port), timeout=60
        )
        assert client.returncode == 0, client.stdout + client.stderr

    def api(self) -> Any:
        """The monitor's /api/cluster document."""
        with urllib.request.urlopen(self.base + "/api/cluster", timeout=5) as response:
            return json.loads(response.read())

    def states(self) -> dict[str, str]:
        return {n["id"]: n["state"] for n in self.api()["nodes"]}


@pytest.fixture
def monitored_cluster(
    spawn: Any, free_port: Callable[[], int], run: Any
) -> Callable[..., MonitoredCluster]:
    def start(
        workers: Sequence[str] = ("w1", "w2", "w3"), worker_args: Sequence[str] = ()
    ) -> MonitoredCluster:
        task_port, status_port, http_port = free_port(), free_port(), free_port()
        procs: dict[str, Any] = {}
        procs["coordinator"] = spawn(
            "02-cluster-patterns/coordinator.py",
            *("--port", str(task_port), "--status-port", str(status_port)),
            *TIMING,
        )
        procs["coordinator"].wait_for("coordinator ready")
        for name in workers:
            procs[name] = spawn(
                "02-cluster-patterns/worker.py",
                *("--id", name, "--port", str(task_port), *worker_args),
                *TIMING,
            )
        procs["monitor"] = spawn(
            "02-cluster-patterns/monitor.py",
            *("--status-port", str(status_port), "--port", str(http_port)),
            *TIMING,
        )
        procs["monitor"].wait_for("monitor ready")
        for name in workers:
            procs[name].wait_for("ready")
        cluster = MonitoredCluster(f"http://127.0.0.1:{http_port}", task_port, procs, run)
        deadline = time.monotonic() + 20
        while cluster.states() != {name: "alive" for name in workers}:
            assert time.monotonic() < deadline, f"workers not all alive: {cluster.states()}"
            time.sleep(0.1)
        return cluster

    return start
