"""The simulator's configuration: typed, frozen, built once from the environment and flags.

Nothing else reads ``os.environ``: every default comes from ``cluster_patterns.defaults`` (the
cluster's ports, heartbeat interval and liveness), and an environment variable overrides it
per run (MONITOR_PORT, HEARTBEAT_INTERVAL, ...; see ``ENVIRONMENT`` below, which the help text
prints).
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from cluster_patterns import defaults
from cluster_simulator.output import UsageError

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DOCKER_DIR: Final = REPO_ROOT / "docker"
DEFAULT_PROJECT: Final = "zmqsim"
DEFAULT_STATE_DIR: Final = REPO_ROOT / ".cluster-state"
MAX_WORKERS: Final = 9
DEFAULT_WORKERS: Final = 3
PROJECT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
E = TypeVar("E", bound=enum.Enum)


class BackendChoice(str, enum.Enum):
    AUTO = "auto"
    LOCAL = "local"
    DOCKER = "docker"


class ComposeChoice(str, enum.Enum):
    """Which Compose runs the Docker backend: v2 is `docker compose`, v1 `docker-compose`."""

    AUTO = "auto"
    V1 = "v1"
    V2 = "v2"


class CurveChoice(str, enum.Enum):
    """CURVE on the coordinator's ports: the backend's default, or forced on or off."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


# The environment variables the simulator reads, with what they default to (for --help).
ENVIRONMENT: Final = {
    "CLUSTER_BACKEND": "auto: local if a local cluster runs, else docker if an engine answers",
    "COMPOSE_PROJECT_NAME": f"{DEFAULT_PROJECT} (the same as -p)",
    "COMPOSE": "auto (v2 `docker compose` if it answers, else v1 `docker-compose`); v1|v2",
    "CLUSTER_CURVE": "auto (docker: CURVE on 5570/5571; local: off, it binds 127.0.0.1); on|off",
    "MONITOR_PORT": f"{defaults.MONITOR_PORT} (the dashboard's host port, on 127.0.0.1)",
    "COORDINATOR_PORT": f"{defaults.TASK_PORT} (local backend)",
    "STATUS_PORT": f"{defaults.STATUS_PORT} (local backend)",
    "HEARTBEAT_INTERVAL": f"{defaults.HEARTBEAT_INTERVAL_S} (seconds, every node)",
    "LIVENESS": f"{defaults.LIVENESS} (missed intervals before a node is dead, every node)",
    "CLUSTER_STATE_DIR": ".cluster-state (state, pid and log files)",
    "DEMO_SECONDS": "0 (demo runs until Ctrl-C)",
    "PYTHON": ".venv/bin/python, else python3 (read by the wrapper)",
}


@dataclass(frozen=True)
class Ports:
    """Where the local cluster binds on 127.0.0.1 (Docker publishes only the monitor's)."""

    coordinator: int = defaults.TASK_PORT
    status: int = defaults.STATUS_PORT
    monitor: int = defaults.MONITOR_PORT

    def named(self) -> list[tuple[str, int]]:
        """(environment variable, port) pairs, for messages that say how to change one."""
        return [
            ("COORDINATOR_PORT", self.coordinator),
            ("STATUS_PORT", self.status),
            ("MONITOR_PORT", self.monitor),
        ]


@dataclass(frozen=True)
class Liveness:
    """The failure detector's settings, given to every node."""

    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    liveness: int = defaults.LIVENESS


@dataclass(frozen=True)
class SimConfig:
    project: str = DEFAULT_PROJECT
    backend: BackendChoice = BackendChoice.AUTO
    compose: ComposeChoice = ComposeChoice.AUTO
    curve: CurveChoice = CurveChoice.AUTO
    state_root: Path = DEFAULT_STATE_DIR
    ports: Ports = Ports()
    liveness: Liveness = Liveness()
    wait_for_verdict: bool = True
    demo_seconds: int = 0
    # How the user called us, for messages such as "run `PROG start` first".
    prog: str = "simulate-cluster.sh"
    python: str = sys.executable


def _port(name: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{name} must be a port number from 1 to 65535, not {text!r}")
    return int(text)


def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def _whole(name: str, text: str, minimum: int, unit: str) -> int:
    if not text.isdigit() or int(text) < minimum:
        raise UsageError(f"{name} must be a whole number of {unit}, not {text!r}")
    return int(text)


def _choice(name: str, text: str, kind: type[E]) -> E:
    try:
        return kind(text)
    except ValueError:
        allowed = "|".join(str(member.value) for member in kind)
        raise UsageError(f"{name} must be {allowed}, not {text!r}") from None


def build_config(
    env: Mapping[str, str],
    *,
    backend: str | None,
    project: str | None,
    no_wait: bool,
) -> SimConfig:
    """The configuration of one run: flags win over the environment, which wins over defaults."""
    name = project if project is not None else env.get("COMPOSE_PROJECT_NAME", DEFAULT_PROJECT)
    if not PROJECT_NAME.fullmatch(name):
        raise UsageError(f"project name {name!r} must be lowercase letters, digits, '-' or '_'")
    chosen = backend or env.get("CLUSTER_BACKEND", "auto")
    if chosen not in {choice.value for choice in BackendChoice}:
        raise UsageError(f"CLUSTER_BACKEND must be local or docker, not {chosen!r}")
    ports = Ports(
        coordinator=_port("COORDINATOR_PORT", env.get("COORDINATOR_PORT", str(Ports.coordinator))),
        status=_port("STATUS_PORT", env.get("STATUS_PORT", str(Ports.status))),
        monitor=_port("MONITOR_PORT", env.get("MONITOR_PORT", str(Ports.monitor))),
    )
    interval = env.get("HEARTBEAT_INTERVAL", str(Liveness.heartbeat_interval_s))
    liveness = Liveness(
        heartbeat_interval_s=_positive_float("HEARTBEAT_INTERVAL", interval),
        liveness=_whole("LIVENESS", env.get("LIVENESS", str(Liveness.liveness)), 1, "intervals"),
    )
    return SimConfig(
        project=name,
        backend=BackendChoice(chosen),
        compose=_choice("COMPOSE", env.get("COMPOSE", "auto"), ComposeChoice),
        curve=_choice("CLUSTER_CURVE", env.get("CLUSTER_CURVE", "auto"), CurveChoice),
        state_root=Path(env.get("CLUSTER_STATE_DIR") or DEFAULT_STATE_DIR),
        ports=ports,
        liveness=liveness,
        wait_for_verdict=not no_wait,
        demo_seconds=_whole("DEMO_SECONDS", env.get("DEMO_SECONDS", "0"), 0, "seconds"),
        prog=env.get("SIMULATE_CLUSTER_PROG") or SimConfig.prog,
    )
