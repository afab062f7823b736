"""What the Docker and the Swarm backends share: the docker CLI, the node image, a client
run inside a container, and ``ContainerBackend``, the faults and the client that work the same
on any container whoever started it (Compose or Swarm).

Both run the same image (docker/Dockerfile), tagged ``PROJECT-node:latest`` and labelled with
the project, and both run client.py inside the coordinator's container, where it talks to
127.0.0.1 as it would on the coordinator's host.
"""

from __future__ import annotations

import abc
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from dataclasses import asdict
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from cluster_patterns import defaults
from cluster_simulator.backend import Backend, ClientRun, Output
from cluster_simulator.config import DOCKER_DIR, REPO_ROOT, CurveChoice
from cluster_simulator.lifecycle import child_ignores_sigint
from cluster_simulator.output import SimError
from cluster_simulator.roles import Roles, Workload

IMAGE_LABEL: Final = "com.zmqsim.project"


def docker(*args: str) -> str:
    """`docker ARGS`, its stdout; a failure is a SimError that quotes docker's message.

    The query runs in a session of its own: a Ctrl-C at the terminal reaches this program,
    which decides what to do, and not a `docker ps` that would die of it half-way and turn an
    ordinary interrupt into a failed command.
    """
    done = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise SimError(f"`docker {args[0]}` failed: {' '.join(message[-2:])}")
    return done.stdout


def docker_json(*args: str) -> Any:
    """`docker ARGS` whose output is one JSON document (inspect, --format '{{json .}}')."""
    return json.loads(docker(*args))


def engine_answers() -> bool:
    """Whether a Docker engine answers `docker info` (DOCKER_HOST is honoured)."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def project_image(project: str) -> str:
    return f"{project}-node:latest"


def build_image(project: str, image: str, quiet: bool) -> None:
    """`docker build` of docker/Dockerfile into ``image``, labelled with the project."""
    argv = ["docker", "build", "--label", f"{IMAGE_LABEL}={project}"]
    argv += ["-f", str(DOCKER_DIR / "Dockerfile"), "-t", image, str(REPO_ROOT)]
    if quiet:
        argv.insert(2, "-q")
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet else None
    )
    if done.returncode != 0:
        raise SimError(f"docker build failed (exit {done.returncode}); see its output above")


def remove_project_images(project: str, image: str) -> None:
    """The tagged image plus older builds of this project that a rebuild left untagged."""
    images = docker("images", "-q", image.split(":")[0]).split()
    images += docker("images", "-q", "--filter", f"label={IMAGE_LABEL}={project}").split()
    if images:
        docker("image", "rm", "-f", *sorted(set(images)))


def inspect(*ids: str) -> list[dict[str, Any]]:
    """`docker inspect` of containers (or tasks, or services): one document each."""
    if not ids:
        return []
    documents: list[dict[str, Any]] = docker_json("inspect", *ids)
    return documents


def inspect_present(*ids: str) -> list[dict[str, Any]]:
    """`docker inspect` of the objects that still exist: a task that a scale-down removed
    between the listing and this call is left out instead of failing the whole call."""
    if not ids:
        return []
    done = subprocess.run(
        ["docker", "inspect", *ids],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # as docker(): a Ctrl-C is this program's to handle
    )
    try:
        documents: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    except ValueError:
        raise SimError(f"`docker inspect` failed: {done.stderr.strip()}") from None
    if done.returncode != 0 and "No such object" not in done.stderr:
        raise SimError(f"`docker inspect` failed: {done.stderr.strip()}")
    return documents


def client_in_container(
    cid: str,
    roles: Roles,
    work: Workload,
    json_path: Path | None,
    stdout: Output = None,
    stderr: Output = None,
) -> ClientRun:
    """client.py inside container ``cid`` (the coordinator's); its summary is copied out to
    ``json_path`` when it ends."""
    inside = f"/tmp/workload-{uuid.uuid4().hex[:12]}.json"
    argv = ["docker", "exec", cid, *roles.client(defaults.TASK_PORT, work, inside)]
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=child_ignores_sigint,
    )

    def collect() -> None:
        if json_path is not None:
            copy_out(cid, inside, json_path)
        subprocess.run(["docker", "exec", cid, "rm", "-f", inside], capture_output=True)

    return ClientRun(popen, json_path, collect)


def copy_out(cid: str, inside: str, target: Path) -> None:
    """A file from the container to ``target``, whole or not at all."""
    part = target.with_name(target.name + ".part")
    with part.open("wb") as out:
        done = subprocess.run(
            ["docker", "exec", cid, "cat", inside], stdout=out, stderr=subprocess.DEVNULL
        )
    if done.returncode == 0:
        part.replace(target)
    else:
        part.unlink(missing_ok=True)


def container_pid(cid: str) -> int:
    """The host pid of the container's first process: ``nsenter -t PID`` enters its netns."""
    return int(inspect(cid)[0]["State"]["Pid"])


class StartRecord(Protocol):
    """What a container backend's start records (a frozen dataclass, kept as JSON)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def curve(self) -> bool: ...


S = TypeVar("S", bound=StartRecord)


class ContainerBackend(Backend, Generic[S]):
    """A backend whose nodes are containers of the node image (``container(node)``), and
    whose start is recorded in ``recorded`` (None: not started from here)."""

    recorded: S | None

    @abc.abstractmethod
    def container(self, node: str) -> str:
        """The id of ``node``'s container; a SimError if it has none."""

    @abc.abstractmethod
    def roles(self) -> Roles:
        """How the node image's roles are started in this cluster."""

    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _read_state(self, record: type[S]) -> S | None:
        try:
            return record(**json.loads(self._state_file().read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _record(self, state: S) -> None:
        self.recorded = state
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file().write_text(json.dumps(asdict(state)) + "\n")

    def curve(self) -> bool:
        """CURVE on 5570/5571: on unless CLUSTER_CURVE=off (as the cluster was started)."""
        if self.recorded is not None:
            return self.recorded.curve
        return self.config.curve is not CurveChoice.OFF

    def freeze(self, node: str) -> None:
        docker("pause", self.container(node))

    def thaw(self, node: str) -> None:
        docker("unpause", self.container(node))

    def in_node_netns(self, node: str) -> list[str]:
        return ["nsenter", "-t", str(container_pid(self.container(node))), "-n"]

    def start_client(
        self, work: Workload, json_path: Path | None, stdout: Output = None, stderr: Output = None
    ) -> ClientRun:
        cid = self.container("coordinator")
        return client_in_container(cid, self.roles(), work, json_path, stdout, stderr)
