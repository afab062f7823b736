"""zrsh, the rsh for MPI launchers, run as a real process against real agents on loopback.

Exit statuses as ssh gives them (the remote status, 128+N for a signal, 255 when the node
cannot be reached), live output, stdin forwarded, the options launchers pass, Ctrl-C and
SIGTERM that kill the remote process group, unknown nodes and broken descriptors with a
clear line, and Open MPI's mpirun starting its daemons through it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_runner_simulation.mpi_job import MpiJobSpec, mpirun_launch_argv
from cluster_runner_simulation.testing import (
    LocalAgents,
    free_port,
    processes_with,
    unique_sleep,
    write_local_descriptor,
)
from conftest import REPO, AgentCluster

BIN = Path(sys.executable).parent
ZRSH_SCRIPT = REPO / "03-cluster-runner-simulation" / "zrsh.py"
TIMEOUT_S = 60.0


class Cluster(AgentCluster):
    def popen(self, *args: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
        """zrsh started in the background: stdin closed, stdout a pipe to read it live."""
        return subprocess.Popen(
            [str(BIN / "zrsh"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self.env,
        )

    def zrsh(
        self, *args: str, stdin: bytes | None = None, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN / "zrsh"), *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            env={**self.env, **env},
            timeout=TIMEOUT_S,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("zrsh")
    descriptor = base / "cluster.toml"
    # The agents' own environment finds zrsh and the descriptor too: Open MPI's daemons
    # may start further daemons through it (tree spawn).
    env = {**os.environ, "ZRSH_DESCRIPTOR": str(descriptor), "PATH": f"{BIN}:{os.environ['PATH']}"}
    with LocalAgents(2, env=env) as agents:
        write_local_descriptor(None, agents, descriptor)
        yield Cluster(agents, descriptor, env, TIMEOUT_S)


def test_exit_status_stdout_and_stderr(cluster: Cluster) -> None:
    done = cluster.zrsh("node0", "echo out;", "echo err >&2;", "exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")
    assert cluster.zrsh("node1", "true").returncode == 0


def test_words_are_joined_for_the_remote_shell_as_ssh_does(cluster: Cluster) -> None:
    """Open MPI passes ' orted' with a leading space and values in double quotes."""
    done = cluster.zrsh("-x", "node0", " printf", "'%s|'", '"env"', "-mca", "a b")
    assert done.stdout == b"env|-mca|a|b|"


def test_the_options_launchers_pass_are_accepted(cluster: Cluster) -> None:
    done = cluster.zrsh(
        "-o", "StrictHostKeyChecking=no", "-x", "-q", "-T", "-p22", "-l", "mpiuser",
        "mpiuser@node1", "echo", "ok",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"ok\n"), done.stderr


def test_stdin_is_forwarded_and_n_keeps_it_away(cluster: Cluster) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    done = cluster.zrsh("node0", "sha256sum", stdin=payload)
    assert done.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    assert cluster.zrsh("-n", "node0", "wc -c", stdin=b"never sent").stdout.strip() == b"0"


def test_a_signal_death_is_128_plus_the_signal(cluster: Cluster) -> None:
    assert cluster.zrsh("node0", "kill -9 $$").returncode == 128 + 9


def test_the_python_file_runs_too(cluster: Cluster) -> None:
    done = subprocess.run(
        [sys.executable, str(ZRSH_SCRIPT), "node1", "echo", "file"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=cluster.env,
        timeout=TIMEOUT_S,
    )
    assert (done.returncode, done.stdout) == (0, b"file\n")


def test_output_is_live(cluster: Cluster) -> None:
    marker = unique_sleep()
    proc = cluster.popen("node0", f"echo first; sleep {marker}")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"  # while the remote sleep still runs
        assert processes_with(marker)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT_S)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_the_remote_process_group(cluster: Cluster, signum: int) -> None:
    marker = unique_sleep()
    proc = cluster.popen(
        "node1", f"echo started; sleep {marker} & sleep {marker}; wait", stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    deadline = time.monotonic() + 10
    while len(processes_with(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(TIMEOUT_S) == 128 + signum
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker)


def test_unknown_nodes_and_missing_commands_fail_with_255(cluster: Cluster) -> None:
    done = cluster.zrsh("node9", "true")
    assert done.returncode == 255 and b"node9: no such node in" in done.stderr
    done = cluster.zrsh("node0")
    assert done.returncode == 255 and b"a COMMAND is needed" in done.stderr
    done = cluster.zrsh("-Z", "node0", "true")
    assert done.returncode == 255 and b"unrecognized arguments: -Z" in done.stderr


def test_descriptor_problems_fail_with_255(cluster: Cluster, tmp_path: Path) -> None:
    done = cluster.zrsh("node0", "true", ZRSH_DESCRIPTOR=str(tmp_path / "missing.toml"))
    assert done.returncode == 255 and b"cannot read" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[[nodes]]\nid = 'n1'\nhost = 'h'\nzmq_port = 99999\n")
    done = cluster.zrsh("n1", "true", ZRSH_DESCRIPTOR=str(broken))
    assert done.returncode == 255 and b"nodes[0].zmq_port" in done.stderr
    env = {k: v for k, v in cluster.env.items() if k != "ZRSH_DESCRIPTOR"}
    done = subprocess.run(
        [str(BIN / "zrsh"), "node0", "true"],
        capture_output=True,
        env={**env, "HOME": str(tmp_path)},
    )
    assert done.returncode == 255 and b"no cluster descriptor" in done.stderr
    assert b"Traceback" not in done.stderr


def test_an_unreachable_node_fails_with_255_within_its_connect_timeout(
    cluster: Cluster, tmp_path: Path
) -> None:
    ghost = NodeSpec(
        "ghost", "127.0.0.1", zmq_port=free_port(), curve_keys_dir=cluster.agents.keys_dir
    )
    path = tmp_path / "ghost.toml"
    path.write_text(render_descriptor(ClusterDescriptor("ghosts", (ghost,))))
    started = time.monotonic()
    done = cluster.zrsh("-o", "ConnectTimeout=1", "ghost", "true", ZRSH_DESCRIPTOR=str(path))
    assert time.monotonic() - started < 1.0 + 3.0
    assert done.returncode == 255
    assert b"ghost: agent at tcp://127.0.0.1:" in done.stderr
    assert b"did not answer within 1s" in done.stderr


def test_an_agent_that_dies_mid_run_is_a_lost_connection(cluster: Cluster) -> None:
    proc = cluster.popen("node1", "echo started; sleep 60", stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        cluster.agents.stop_one(1, signal.SIGKILL)
        assert proc.wait(TIMEOUT_S) == 255
        assert proc.stderr is not None
        assert b"connection lost" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.agents.restart(1)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI missing (openmpi-bin)")
def test_open_mpi_starts_its_daemons_through_zrsh(cluster: Cluster, tmp_path: Path) -> None:
    """mpirun with the options run_mpi.py gives Open MPI on one machine posing as several
    nodes (daemons attached to their zrsh, loopback only, a startup timeout): rank 0 where
    mpirun runs ("here", which mpirun calls localhost), the daemons of node0 and node1
    started through zrsh and their agents."""
    spec = MpiJobSpec(
        hosts=("here", "node0", "node1"),
        bench="sh",
        interfaces="lo",
        shared_machine=True,
        allow_run_as_root=True,
        startup_timeout_s=30,
    )
    program = ["sh", "-c", "echo rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE"]
    # A session directory of its own: the daemons of one host share /tmp/ompi.HOST, and a
    # leftover of another run made mkdir fail (the agents here share this machine's /tmp).
    own_session = ["--mca", "orte_tmpdir_base", str(tmp_path)]
    done = subprocess.run(
        [*mpirun_launch_argv(spec), *own_session, *program],
        capture_output=True,
        env=cluster.env,
        cwd="/tmp",
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(done.stdout.decode().splitlines()) == [f"rank {r} of 3" for r in range(3)]
