"""Docker Compose, v2 (`docker compose`) or v1 (`docker-compose` 1.29), for one project.

``COMPOSE=v1|v2`` forces one; otherwise v2 is used when `docker compose version` answers.
docker/docker-compose.yml describes the cluster as users may run it by hand; for every start
the simulator writes an override file next to its state that sets each role's command line
(heartbeat settings, CURVE keys) and adds the workers beyond the three in the base file.
Both versions read both files; the simulator reads state through the labels both set
(``com.docker.compose.project``, ``com.docker.compose.service``), never through Compose's
own output, which differs between them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from cluster_patterns import defaults
from cluster_simulator.config import DOCKER_DIR, ComposeChoice, SimConfig
from cluster_simulator.output import SimError, UsageError
from cluster_simulator.roles import Roles

COMPOSE_FILE: Final = DOCKER_DIR / "docker-compose.yml"
BASE_WORKERS: Final = 3  # worker1..3 are in docker-compose.yml
DOWN_TIMEOUT_S: Final = 5
V2: Final = ["docker", "compose"]
V1: Final = ["docker-compose"]


def _v2_answers() -> bool:
    try:
        probe = subprocess.run([*V2, "version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def detect_compose(choice: ComposeChoice) -> list[str]:
    """The argv prefix of the Compose to use; exit 2 when the chosen one is not installed."""
    if choice is not ComposeChoice.V1 and _v2_answers():
        return V2
    if choice is not ComposeChoice.V2 and shutil.which(V1[0]):
        return V1
    if choice is ComposeChoice.V2:
        raise UsageError("COMPOSE=v2, but `docker compose version` fails; install the plugin")
    if choice is ComposeChoice.V1:
        raise UsageError("COMPOSE=v1, but `docker-compose` is not installed")
    raise UsageError(
        "neither `docker compose` (v2) nor `docker-compose` (v1) is installed; "
        "install one, or use the local backend: --local"
    )


class Compose:
    """One Compose project: its files, its environment, and the commands the backend needs."""

    def __init__(
        self, config: SimConfig, choice: ComposeChoice, image: str, state_dir: Path
    ) -> None:
        self.config = config
        self.choice = choice
        self.image = image
        self.override = state_dir / "compose-override.yml"

    @cached_property
    def argv(self) -> list[str]:
        return detect_compose(self.choice)

    @property
    def version(self) -> str:
        return "v2" if self.argv == V2 else "v1"

    def command(self, *args: str) -> list[str]:
        files = ["-f", str(COMPOSE_FILE)]
        if self.override.is_file():
            files += ["-f", str(self.override)]
        return [*self.argv, *files, "-p", self.config.project, *args]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "CLUSTER_IMAGE": self.image,
            "MONITOR_PORT": str(self.config.ports.monitor),
        }

    def run(self, *args: str, **popen: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(*args), env=self.environment(), **popen)

    def up(self, services: Sequence[str]) -> None:
        done = self.run("up", "-d", "--no-build", *services, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SimError(f"`compose up` failed (exit {done.returncode}); see its output above")

    def down(self, *extra: str) -> None:
        """`compose down` in a session of its own (the terminal's Ctrl-C cannot reach it), its
        output in a file (a closed stdout cannot kill it half-way), shown only if it fails."""
        args = ["down", "--remove-orphans", "--timeout", str(DOWN_TIMEOUT_S), *extra]
        with tempfile.TemporaryFile() as log:
            done = self.run(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if done.returncode != 0:
                log.seek(0)
                tail = " ".join(log.read().decode(errors="replace").splitlines()[-3:])
                raise SimError(f"compose down failed (exit {done.returncode}): {tail}")

    def write_override(self, workers: int, roles: Roles) -> None:
        """Every role's command line, and worker4..N extending worker1."""
        services: dict[str, Any] = {
            "coordinator": {
                "command": roles.coordinator("0.0.0.0", defaults.TASK_PORT, defaults.STATUS_PORT)
            },
            "monitor": {
                "command": roles.monitor(
                    "coordinator", defaults.STATUS_PORT, defaults.MONITOR_PORT, "0.0.0.0"
                )
            },
        }
        for index in range(1, workers + 1):
            node = f"worker{index}"
            service: dict[str, Any] = {
                "command": roles.worker(node, "coordinator", defaults.TASK_PORT)
            }
            if index > BASE_WORKERS:
                service.update(extends={"service": "worker1"}, environment={"NODE_ID": node})
            services[node] = service
        self.override.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Generated by {self.config.prog} start --workers {workers}; stop removes it.\n"
        # JSON is YAML: both Compose versions read this file, and nothing needs quoting.
        self.override.write_text(header + json.dumps({"services": services}, indent=2) + "\n")

    def remove_override(self) -> None:
        self.override.unlink(missing_ok=True)
