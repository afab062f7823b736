"""Shared pytest fixtures: free ports, real subprocesses, and the no-skip rule in CI.

Every test in this repository drives real things (sockets, processes, sshd,
Docker, Chromium). The fixtures here make that safe: ports are picked free,
processes run in their own process group and are always reaped, and in CI
(``CI`` set in the environment) a skipped test fails the run, because a skip
there means a component that CI was supposed to install is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import IO, Any

import psutil
import pytest
import zmq
from hypothesis import settings as hypothesis_settings

from cluster_runner_simulation.protocols import CommandResult, Env, NodeUnreachable
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.testing.wire_client import Ctx

# A TCP port on 127.0.0.1 that nothing listens on right now (the harness's one definition).
from cluster_runner_simulation.testing import free_port as free_tcp_port

REPO = Path(__file__).resolve().parent
PYTHON = sys.executable
IN_CI = bool(os.environ.get("CI"))
STACK_LABEL = "com.docker.stack.namespace"
SIGNAL_SETTLE_S = 0.3  # stop_cleanly: from a daemon's first line until it blocks in its poll

# Fuzz tests are deterministic in CI (same examples every run, no flaky first failure) and
# explore freely on a developer's machine. HYPOTHESIS_PROFILE=ci reproduces CI locally.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


@dataclass
class Proc:
    """A running subprocess whose output goes to files that tests can poll."""

    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until ``pattern`` (a regex) shows up in stdout or stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                match = re.search(pattern, self.output())
                if match:
                    return match
                raise AssertionError(
                    f"{self.argv} exited {self.popen.returncode} before printing {pattern!r}:\n"
                    f"{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {pattern!r} from {self.argv}:\n{self.output()}"
        )

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT, then SIGKILL for the whole process group if it lingers."""
        if self.popen.poll() is None:
            self.signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.popen.pid)
                self.popen.wait(timeout=5)
        _kill_group(self.popen.pid)
        return self.popen.returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Spawner:
    """Starts processes for one test and reaps all of them afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        python: bool = True,
    ) -> Proc:
        argv = [PYTHON, "-u", *args] if python else list(args)
        index = len(self.procs)
        out = self.workdir / f"proc{index}.out"
        err = self.workdir / f"proc{index}.err"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with out.open("wb") as out_file, err.open("wb") as err_file:
            popen = subprocess.Popen(
                argv,
                stdout=out_file,
                stderr=err_file,
                stdin=subprocess.DEVNULL,
                cwd=cwd or REPO,
                env=full_env,
                start_new_session=True,
            )
        proc = Proc(popen, out, err, argv)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """``spawn("01-zmq-basics/req_rep.py", "server")`` runs a real process."""
    logs = tmp_path / "procs"
    logs.mkdir()
    spawner = Spawner(logs)
    yield spawner
    spawner.stop_all()


def run_script(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python SCRIPT ARGS`` from the repository root to completion."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return run_in_repo([PYTHON, "-u", *args], full_env, timeout)


# The documentation pages that the docs tests read (test_docs_commands.py and
# test_docs_excerpts.py also run as scripts, without this file, and keep their own copy).
DOC_GLOBS = ["README.md", "docs/*.md", "integration-plan/*.md", "examples/**/README.md"]


def doc_files() -> list[Path]:
    """Every page the globs name, sorted, none from inside a virtual environment."""
    found: set[Path] = set()
    for pattern in DOC_GLOBS:
        found.update(p for p in REPO.glob(pattern) if ".venv" not in p.parts)
    return sorted(found)


def run_in_repo(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from the repository root to completion: stdin closed, output captured as
    text. ``env`` is the whole environment (None: this process's)."""
    return subprocess.run(
        argv,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def run() -> object:
    """The ``run_script`` helper as a fixture, for tests that prefer injection."""
    return run_script


@pytest.fixture
def port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_tcp_port()


@pytest.fixture
def free_port() -> object:
    """A factory: call ``free_port()`` for as many free ports as a test needs."""
    return free_tcp_port


def free_tcp_ports(span: int) -> int:
    """The first of ``span`` consecutive free TCP ports on 127.0.0.1 (lessons use PORT+1...)."""
    for _ in range(200):
        first = free_tcp_port()
        if first + span > 65536:
            continue
        try:
            probes = []
            for port in range(first, first + span):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {span} consecutive free ports on 127.0.0.1")


@pytest.fixture
def free_ports() -> object:
    """A factory: ``free_ports(2)`` is a port P such that P and P+1 are free."""
    return free_tcp_ports


def tcp_port_is_free(port: int) -> bool:
    """Can a listener bind 127.0.0.1:port right now (a documented default port, say)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def port_is_free() -> object:
    """``port_is_free(5555)``: whether a test may use a lesson's default port as documented."""
    return tcp_port_is_free


# --- A fake NodeExecutor's common part, for tests without a network ----------------------------


class FakeNode:
    """Its id, a ``down`` switch that makes every call unreachable, and the commands it was
    asked to run. Subclasses say what running a command does (``answer``)."""

    def __init__(self, node_id: str, *, down: bool = False) -> None:
        self._node_id = node_id
        self.down = down
        self.commands: list[str] = []

    @property
    def node_id(self) -> str:
        return self._node_id

    def unreachable(self, why: str = "down") -> NodeUnreachable:
        return NodeUnreachable(self._node_id, f"fake: {why}")

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        if self.down:
            raise self.unreachable()
        self.commands.append(command)
        return await self.answer(command)

    async def answer(self, command: str) -> CommandResult:
        raise NotImplementedError


# --- Wire-level tests' own sockets ------------------------------------------------------------


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    """A pyzmq context for the test's own sockets, destroyed (linger 0) when it ends."""
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)


# --- zrun, zcp and zrsh against real agents on loopback -----------------------------------------


@dataclass
class AgentCluster:
    """Real node agents on loopback, the descriptor that names them, and the environment in
    which the tools find it (``ZRSH_DESCRIPTOR``)."""

    agents: LocalAgents
    descriptor: Path
    env: dict[str, str]
    timeout_s: float = 60.0

    def tool(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        """Run a tool to completion: stdin closed, output captured as text, ``env`` added."""
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=self.timeout_s,
        )


# --- What every command-line program promises, checked the same way everywhere --------------


def assert_exits_with(result: subprocess.CompletedProcess[str], code: int, reason: str) -> None:
    """A clear failure: exit ``code``, ``reason`` on stderr, and no traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr


def stop_cleanly(proc: Proc, signum: int) -> str:
    """Send ``signum`` (Ctrl-C's SIGINT, or SIGTERM): ``proc`` must exit 0 within 10 s with no
    traceback. Returns its stdout, for what it says when interrupted.

    It waits SIGNAL_SETTLE_S first, so that the daemon has reached its blocking poll or recv,
    as it has when a person types Ctrl-C. A signal that lands in the microseconds between
    Python's last signal check and libzmq's epoll_wait is acted on only at the next signal
    (CPython's handler merely sets a flag, and libzmq does not watch Python's wakeup fd): a
    second Ctrl-C always works, and a test that signals at once would hang on that race."""
    time.sleep(SIGNAL_SETTLE_S)
    proc.signal(signum)
    assert proc.wait(timeout=10) == 0
    assert "Traceback" not in proc.stderr()
    return proc.stdout()


# --- docker/simulate-cluster.sh, driven as a user would ----------------------------------------


class ClusterSimulator:
    """Runs ``./docker/simulate-cluster.sh --BACKEND ...`` with an isolated project and ports.

    ``compose`` ("v1" or "v2") forces the Docker backend's Compose version; None leaves the
    choice to the simulator (``COMPOSE`` from the environment, else v2 when it answers), so
    ``COMPOSE=v1 pytest -m docker`` runs every Docker test with docker-compose 1.29.
    """

    def __init__(
        self,
        backend: str,
        project: str,
        monitor_port: int,
        env: dict[str, str],
        compose: str | None = None,
    ) -> None:
        self.backend = backend
        self.project = project
        self.monitor_port = monitor_port
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": project,
            "MONITOR_PORT": str(monitor_port),
            **env,
        }
        if compose is not None:
            self.env["COMPOSE"] = compose
        self._stderr: dict[int, IO[bytes]] = {}

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [str(REPO / "docker" / "simulate-cluster.sh"), f"--{self.backend}", *args]
        return run_in_repo(argv, self.env, timeout)

    def ok(self, *args: str, timeout: float = 300) -> str:
        """Run a command that must succeed; return its stdout."""
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def cluster(self) -> dict[str, object]:
        """The monitor's /api/cluster document."""
        url = f"http://127.0.0.1:{self.monitor_port}/api/cluster"
        with urllib.request.urlopen(url, timeout=5) as response:
            document: dict[str, object] = json.loads(response.read())
        return document

    def scenario_steps(self, figures: Path, timeout: float) -> tuple[str, dict[str, Any]]:
        """Run ``test --json FIGURES``, which must pass with no invariant violated; return its
        output (also printed: the figures table, for the log) and its steps by name."""
        out = self.ok("test", "--json", str(figures), timeout=timeout)
        print(out)
        report = json.loads(figures.read_text())
        assert report["violations"] == []
        return out, {step["step"]: step for step in report["steps"]}

    def shape_then_pause(self, node: str, flaky_percent: str) -> None:
        """Blockade's vocabulary on one running node: slow (100 ms), flaky, fast, then pause.
        Some kernels (this project's CI VM) ship no sch_netem: then `slow` must say so, exit 2.
        """
        slow = self("slow", node, "100")
        assert slow.returncode == 0 or (slow.returncode == 2 and "no netem" in slow.stderr), slow
        self.ok("flaky", node, flaky_percent)
        self.ok("fast", node)
        self.ok("pause", node)

    def assert_refuses_unknown_node(self, node: str) -> None:
        """``fail NODE`` for a node the cluster does not have: exit 2, listing the valid ones."""
        bad = self("fail", node)
        assert bad.returncode == 2
        assert "valid nodes: coordinator worker1 worker2 worker3 monitor" in bad.stderr

    def node_state(self, node: str) -> str:
        nodes = self.cluster()["nodes"]
        assert isinstance(nodes, list)
        return {str(n["id"]): str(n["state"]) for n in nodes}.get(node, "absent")

    def popen(self, *args: str, stdout: int | IO[bytes] = subprocess.PIPE) -> Popen[bytes]:
        """Start a command as a terminal's foreground job: in a process group of its own, so
        ``os.killpg(popen.pid, SIGINT)`` reaches it and every child it runs, as Ctrl-C does.
        Stderr goes to a file (``stderr_of``), so only stdout is the pipe a test may close."""
        stderr = tempfile.TemporaryFile()
        popen = subprocess.Popen(
            [str(REPO / "docker" / "simulate-cluster.sh"), f"--{self.backend}", *args],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self._stderr[popen.pid] = stderr
        return popen

    def stderr_of(self, popen: Popen[bytes]) -> str:
        stderr = self._stderr[popen.pid]
        stderr.seek(0)
        return stderr.read().decode(errors="replace")

    def survivors(self) -> list[str]:
        """What of this cluster still runs, found for real: every live process that carries the
        project's name in its environment (nodes, relays, helpers and the wrapper itself all
        inherit it), the project's containers and its network namespaces."""
        found = [
            f"process {proc.pid} {' '.join(proc.info['cmdline'] or [])}"
            for proc in psutil.process_iter(["cmdline", "status"])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and self._in_project(proc)
        ]
        if self.backend in ("docker", "swarm"):
            key = "com.docker.compose.project" if self.backend == "docker" else STACK_LABEL
            label = f"label={key}={self.project}"
            listing = subprocess.run(
                ["docker", "ps", "-a", "--filter", label, "--format", "{{.Names}} {{.Status}}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            found += [f"container {line}" for line in listing.stdout.splitlines()]
        found += [f"namespace {name}" for name in self.namespaces()]
        return found

    def namespaces(self) -> list[str]:
        """The network namespaces the local backend made for this project (as root)."""
        if shutil.which("ip") is None:
            return []
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        tag = hashlib.md5(self.project.encode()).hexdigest()[:6]
        return [line.split()[0] for line in listing.splitlines() if line.startswith(f"zsim-{tag}-")]

    def _in_project(self, proc: psutil.Process) -> bool:
        try:
            return proc.environ().get("COMPOSE_PROJECT_NAME") == self.project
        except (psutil.Error, OSError):
            return False


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when `docker info` answers."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return "no Docker engine answers `docker info`: " + probe.stderr.strip()[:200]
    return None


@pytest.fixture
def docker_engine() -> None:
    """Skips the test (saying why) when no Docker engine answers; CI forbids the skip."""
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"needs a Docker engine: {problem}")


def distinct_free_ports(count: int) -> list[int]:
    """``count`` free TCP ports on 127.0.0.1, no two the same, in ascending order."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_tcp_port())
    return sorted(ports)


@pytest.fixture
def new_simulator(tmp_path: Path) -> Callable[..., ClusterSimulator]:
    """``new_simulator("docker", "zsimtest")``: a ClusterSimulator with a project of its own
    (the prefix plus a random tag), a free monitor port and its state under the test's
    tmp_path. The local backend also gets free coordinator and status ports (its nodes are
    host processes). ``env`` adds or overrides variables; ``compose`` forces a Compose version.
    """

    def make(
        backend: str, prefix: str, env: dict[str, str] | None = None, compose: str | None = None
    ) -> ClusterSimulator:
        coordinator, status, monitor = distinct_free_ports(3)
        base = {"CLUSTER_STATE_DIR": str(tmp_path / "state")}
        if backend == "local":
            base |= {"COORDINATOR_PORT": str(coordinator), "STATUS_PORT": str(status)}
        project = f"{prefix}{uuid.uuid4().hex[:8]}"
        return ClusterSimulator(backend, project, monitor, {**base, **(env or {})}, compose)

    return make


def compose_problem(version: str) -> str | None:
    """Why this Compose version ("v1": docker-compose, "v2": docker compose) cannot run here
    (None: it answers)."""
    argv = ["docker", "compose", "version"] if version == "v2" else ["docker-compose", "version"]
    try:
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return f"`{' '.join(argv)}` cannot run: {exc}"
    return None if probe.returncode == 0 else f"`{' '.join(argv)}` fails: {probe.stderr[:200]}"


@pytest.fixture(scope="session")
def node_image_layers() -> Iterator[None]:
    """docker/Dockerfile built once per session under a tag of its own, kept until the end.

    Every Docker test builds the node image of its project and deletes it with `cleanup`; the
    layers that take long (apt, pip) die with it unless another image holds them. This one
    does, so each later build is a cache hit and each Compose version's run costs its
    scenario, not a rebuild. Its label is not a project's: no test's leftovers check sees it.
    """
    if docker_engine_problem() is not None:
        yield  # the test that asked for it skips, saying why
        return
    tag = f"zsimlayers-{uuid.uuid4().hex[:8]}:latest"
    argv = ["docker", "build", "-q", "--label", "com.zmqsim.layer-cache=1"]
    argv += ["-f", str(REPO / "docker" / "Dockerfile"), "-t", tag, str(REPO)]
    subprocess.run(argv, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
    yield
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, timeout=120)


# --- The 02 cluster's status channel, read as it goes on the wire ------------------------------


class StatusTap:
    """A SUB socket on a coordinator's status port that reads STATUS frames as plain JSON.

    Tests that use it depend on the wire format only, not on the Python message classes.
    ``keys`` is a keys directory made by ``curve.py generate``: the tap then connects with
    CURVE, as any client of that directory would.
    """

    def __init__(self, port: int, keys: Path | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if keys is not None:
            from cluster_patterns.curve import curve_client, load_keypair, load_public

            server = load_public(keys / "coordinator.key")
            curve_client(self.sock, server, load_keypair(keys / "client.key_secret"))
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def wait_for(self, check: object = None, timeout: float = 20.0) -> dict[str, object]:
        """The first STATUS (as a dict) for which ``check(status)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching STATUS within {timeout} s")
            if not self.sock.poll(int(left * 1000) + 1):
                continue
            try:
                document = json.loads(self.sock.recv())
            except ValueError:
                continue
            if isinstance(document, dict) and document.get("type") == "STATUS":
                if check is None or check(document):  # type: ignore[operator]
                    return document

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def status_tap() -> Iterator[object]:
    """``status_tap(port, keys=None)`` opens a StatusTap; all are closed after the test."""
    taps: list[StatusTap] = []

    def open_tap(port: int, keys: Path | None = None) -> StatusTap:
        taps.append(StatusTap(port, keys))
        return taps[-1]

    yield open_tap
    for tap in taps:
        tap.close()


# --- No skips in CI -------------------------------------------------------------------------

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: object) -> None:
    if IN_CI and _skipped:
        writer = getattr(terminalreporter, "write_line")
        writer(f"CI forbids skips, but {len(_skipped)} test(s) skipped:", red=True)
        for nodeid in _skipped:
            writer(f"  {nodeid}", red=True)
