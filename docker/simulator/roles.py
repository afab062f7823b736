"""The command line of every role (coordinator, worker, monitor, client), built in one place.

Both backends run the same 02 programs; only the interpreter, the addresses and where the
CURVE keys are mounted differ, so this module is the one place that knows their flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Final

from cluster_patterns import defaults
from cluster_patterns.protocol import TaskKind
from cluster_simulator.config import Liveness

SCRIPTS: Final = PurePath("02-cluster-patterns")
# How long a submitting client waits for all of its outcomes.
CLIENT_TIMEOUT_S: Final = 180


@dataclass(frozen=True)
class Workload:
    """A batch of tasks for client.py: COUNT tasks of KIND, each MS milliseconds long."""

    count: int = 200
    kind: TaskKind = TaskKind.SLEEP
    ms: int = 10


@dataclass(frozen=True)
class Roles:
    """Argv builders for one backend: ``python`` is the interpreter as the node sees it,
    ``keys`` the CURVE keys directory as the node sees it (None: CURVE off)."""

    python: list[str]
    liveness: Liveness
    keys: str | None = None

    def _run(self, script: str, *flags: str) -> list[str]:
        argv = [*self.python, str(SCRIPTS / script), *flags]
        argv += ["--heartbeat-interval", str(self.liveness.heartbeat_interval_s)]
        argv += ["--liveness", str(self.liveness.liveness)]
        return argv + (["--keys", self.keys] if self.keys else [])

    def coordinator(self, bind: str, port: int, status_port: int) -> list[str]:
        flags = ["--bind", bind, "--port", str(port), "--status-port", str(status_port)]
        return self._run("coordinator.py", *flags)

    def worker(self, node: str, coordinator: str, port: int) -> list[str]:
        return self._run(
            "worker.py", "--id", node, "--coordinator", coordinator, "--port", str(port)
        )

    def monitor(self, coordinator: str, status_port: int, http_port: int, bind: str) -> list[str]:
        flags = ["--coordinator", coordinator, "--status-port", str(status_port)]
        return self._run("monitor.py", *flags, "--port", str(http_port), "--bind", bind)

    def client(self, port: int, work: Workload, json_path: str | None = None) -> list[str]:
        """client.py on the coordinator's host (the client talks to 127.0.0.1 there)."""
        flags = ["--coordinator", defaults.LOOPBACK, "--port", str(port)]
        flags += ["--timeout", str(CLIENT_TIMEOUT_S), "--count", str(work.count)]
        flags += ["--kind", work.kind.value, "--ms", str(work.ms)]
        return self._run("client.py", *flags, *(["--json", json_path] if json_path else []))
