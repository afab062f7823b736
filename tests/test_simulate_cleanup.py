"""The demo and the simulator clean up after themselves, whatever happens to the terminal.

Driven as a user would drive docker/simulate-cluster.sh, with real processes and sockets:
- a port the cluster needs is already taken (a real listening socket held by this test): one
  line names the port and the process holding it, nothing is left running, exit code 3;
- stdout is a pipe whose reader goes away (`make demo | tee log`, then Ctrl-C, which kills tee
  too): the test closes its end of the pipe, then sends SIGINT to the command's process group
  twice, as a terminal does; afterwards no process, container or namespace of the cluster
  survives (``ClusterSimulator.survivors`` looks for them for real).
The local tests run everywhere; the Docker one is marked `docker` and skips without an engine.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from conftest import compose_problem, docker_engine_problem

REPO = Path(__file__).resolve().parent.parent
PORT_IN_USE_EXIT = 3
# A second Ctrl-C this long after the first lands while the cluster is being stopped.
SECOND_CTRL_C_AFTER_S = 0.3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sim(new_simulator: Any) -> Iterator[Any]:
    """A local-backend simulator on free ports with its own project and state directory."""
    simulator = new_simulator("local", "zsimclean", {"DEMO_SECONDS": "0"})
    yield simulator
    simulator("cleanup", timeout=120)


def hold_port(port: int) -> socket.socket:
    """Occupy 127.0.0.1:PORT with a real listening socket, as another program would."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def read_until(sim: Any, popen: Popen[bytes], text: str, timeout: float = 120) -> str:
    """Read the command's stdout until ``text`` shows up; return everything read."""
    assert popen.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(popen.stdout, selectors.EVENT_READ)
        while text.encode() not in seen:
            problem = "" if time.monotonic() < deadline else "in time"
            if not problem and selector.select(timeout=0.5):
                chunk = os.read(popen.stdout.fileno(), 65536)
                problem = "" if chunk else "before stdout closed"
                seen += chunk
            assert not problem, (
                f"no {text!r} {problem}; stdout:\n{seen.decode(errors='replace')}\n"
                f"stderr:\n{sim.stderr_of(popen)}"
            )
    return seen.decode(errors="replace")


def close_reader(popen: Popen[bytes]) -> None:
    """The reader of the command's stdout goes away, as `tee` does on Ctrl-C."""
    assert popen.stdout is not None
    popen.stdout.close()


def ctrl_c(popen: Popen[bytes]) -> None:
    """SIGINT to the whole foreground process group, as the terminal sends it on Ctrl-C."""
    try:
        os.killpg(popen.pid, signal.SIGINT)
    except ProcessLookupError:
        pass


def wait_exit(popen: Popen[bytes], sim: Any, timeout: float = 120) -> int:
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
        raise AssertionError(f"no exit within {timeout} s; stderr:\n{sim.stderr_of(popen)}")


def interrupt_twice(popen: Popen[bytes], sim: Any, want_exit: int, timeout: float = 120) -> None:
    """Ctrl-C, and a second one while the first is being handled: the command must still
    exit ``want_exit`` and leave nothing of the cluster behind."""
    ctrl_c(popen)
    time.sleep(SECOND_CTRL_C_AFTER_S)
    ctrl_c(popen)
    code = wait_exit(popen, sim, timeout=timeout)
    assert_nothing_left(sim)
    assert code == want_exit, sim.stderr_of(popen)


def assert_nothing_left(sim: Any) -> None:
    """No process, container or namespace of the cluster, and the wrapper agrees it is gone."""
    deadline = time.monotonic() + 10
    while sim.survivors() and time.monotonic() < deadline:
        time.sleep(0.2)  # a SIGKILLed process may need a moment to be reaped
    assert sim.survivors() == []
    status = sim("status")
    assert status.returncode == 2 and "was never started" in status.stderr, status


def assert_no_tracebacks(sim: Any) -> None:
    """No node, relay or helper died noisily on the way down (logs stay after stop)."""
    for log in Path(sim.env["CLUSTER_STATE_DIR"]).glob("*/*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log


# --- a port already in use -------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["MONITOR_PORT", "COORDINATOR_PORT", "STATUS_PORT"])
def test_demo_with_a_port_in_use_names_it_and_leaves_nothing(sim: Any, variable: str) -> None:
    port = int(sim.env[variable])
    with hold_port(port):
        done = sim("demo", timeout=180)
        assert_nothing_left(sim)
        assert done.returncode == PORT_IN_USE_EXIT, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr  # one line, not a log tail
        assert f"port {port}" in lines[0] and variable in lines[0], lines[0]
        assert f"pid {os.getpid()}" in lines[0] and "python" in lines[0], lines[0]
        assert "Traceback" not in done.stdout + done.stderr


def test_make_demo_with_port_5572_taken(sim: Any) -> None:
    """`make demo` itself: it fails, names the port and its holder, and starts nothing."""
    with hold_port(sim.monitor_port):
        done = subprocess.run(
            ["make", "-s", "demo"],
            cwd=REPO,
            env={**sim.env, "CLUSTER_BACKEND": "local"},
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert_nothing_left(sim)
        assert done.returncode != 0, done
        ours = [line for line in done.stderr.splitlines() if line.startswith("simulate-cluster:")]
        assert len(ours) == 1, done.stderr
        assert f"port {sim.monitor_port}" in ours[0] and f"pid {os.getpid()}" in ours[0], ours


# --- a closed stdout and a second Ctrl-C -----------------------------------------------------


def test_demo_cleanup_survives_a_closed_stdout_and_a_second_ctrl_c(sim: Any) -> None:
    """`make demo | tee log`, then Ctrl-C: tee dies with the demo, which must still stop all."""
    demo = sim.popen("demo")
    read_until(sim, demo, "press Ctrl-C to stop")
    assert sim.survivors(), "the demo cluster should be running now"
    close_reader(demo)
    interrupt_twice(demo, sim, want_exit=0)
    assert "Traceback" not in sim.stderr_of(demo)
    assert_no_tracebacks(sim)


def test_a_second_ctrl_c_while_the_demo_stops_its_cluster(sim: Any) -> None:
    """Stdout stays open here: the second Ctrl-C arrives just as the demo starts stopping."""
    demo = sim.popen("demo")
    read_until(sim, demo, "press Ctrl-C to stop")
    ctrl_c(demo)
    read_until(sim, demo, "stopping the demo cluster", timeout=60)
    ctrl_c(demo)
    code = wait_exit(demo, sim)
    assert_nothing_left(sim)
    assert code == 0, sim.stderr_of(demo)


def test_start_interrupted_with_a_closed_stdout_stops_what_it_started(sim: Any) -> None:
    """Ctrl-C while `start` waits for its nodes: everything started so far is stopped."""
    start = sim.popen("start")
    read_until(sim, start, "starting cluster")
    coordinator = ("127.0.0.1", int(sim.env["COORDINATOR_PORT"]))
    deadline = time.monotonic() + 60
    while not accepts(coordinator):
        assert time.monotonic() < deadline and start.poll() is None, sim.stderr_of(start)
        time.sleep(0.05)
    close_reader(start)
    interrupt_twice(start, sim, want_exit=130)
    assert "Traceback" not in sim.stderr_of(start)


def test_stop_and_status_with_a_closed_stdout(sim: Any) -> None:
    """`simulate-cluster.sh stop | head -0`: the stop completes and says nothing it cannot."""
    sim.ok("start")
    codes = {}
    for command in ("status", "stop"):
        reader, writer = os.pipe()
        os.close(reader)
        try:
            run = sim.popen(command, stdout=writer)
        finally:
            os.close(writer)
        codes[command] = wait_exit(run, sim)
        assert "Traceback" not in sim.stderr_of(run), sim.stderr_of(run)
    assert_nothing_left(sim)
    assert codes["stop"] == 0, codes
    assert_no_tracebacks(sim)


def accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


# --- the Docker backend ----------------------------------------------------------------------


@pytest.fixture(params=["v1", "v2"])
def docker_sim(
    request: pytest.FixtureRequest, new_simulator: Any, node_image_layers: None
) -> Iterator[Any]:
    """The Docker backend with each Compose version (`docker compose down` is what must
    survive the closed stdout and the second Ctrl-C, and v1 and v2 are different programs)."""
    problem = docker_engine_problem() or compose_problem(request.param)
    if problem:
        pytest.skip(f"the Docker backend with Compose {request.param}: {problem}")
    simulator = new_simulator("docker", "zsimclean", {"DEMO_SECONDS": "0"}, compose=request.param)
    yield simulator
    simulator("cleanup", timeout=300)


@pytest.mark.docker
@pytest.mark.timeout(1200)
def test_docker_demo_port_taken_then_closed_stdout_and_second_ctrl_c(docker_sim: Any) -> None:
    """Both rows on the Docker backend, in one test so the image is built once."""
    sim = docker_sim
    with hold_port(sim.monitor_port):
        done = sim("demo", timeout=900)
        assert sim.survivors() == [], done.stderr
        assert done.returncode == PORT_IN_USE_EXIT, done
        line = done.stderr.strip()
        assert f"port {sim.monitor_port}" in line and f"pid {os.getpid()}" in line, line
        assert len(line.splitlines()) == 1, line

    demo = sim.popen("demo")
    read_until(sim, demo, "press Ctrl-C to stop", timeout=900)
    assert sim.survivors(), "the demo's containers should be running now"
    close_reader(demo)
    interrupt_twice(demo, sim, want_exit=0, timeout=180)
