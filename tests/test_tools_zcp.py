"""zcp as a real process against real agents on loopback, each with its own --files-root.

100 MB to 8 nodes with equal checksums; several files into a directory, or one under a new
name; --gather into per-node folders with the mode kept; paths outside a node's root
refused (status 1, the reason named); an unreachable node (255, the others still get the
file); Ctrl-C (a real SIGINT) and SIGKILL mid-transfer leave no file under its final name
and, after the agent's idle timeout, no temporary file either; bad input is status 2.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cluster_runner_simulation.descriptor import ClusterDescriptor, render_descriptor
from cluster_runner_simulation.testing import LocalAgents, free_port, local_nodes
from conftest import REPO, AgentCluster

BIN = Path(sys.executable).parent
NODES = 8
IDLE_S = 2.0
BIG_BYTES = 100 * 1024 * 1024
TIMEOUT_S = 120.0


class Cluster(AgentCluster):
    def zcp(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.tool([str(BIN / "zcp"), "--no-progress", *args], **env)

    def root(self, index: int) -> Path:
        return self.agents.files_root(index)


def squeezed(text: str) -> str:
    return " ".join(text.split())


def leftovers(directory: Path) -> list[Path]:
    return [path for path in directory.rglob(".zcp-*")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("zcp")
    args = ["--transfer-idle-s", str(IDLE_S)]
    with LocalAgents(NODES, extra_args=args, files_roots=True) as agents:
        path = base / "cluster.toml"
        path.write_text(render_descriptor(ClusterDescriptor("t", local_nodes(NODES, None, agents))))
        yield Cluster(agents, path, {**os.environ, "ZRSH_DESCRIPTOR": str(path)}, TIMEOUT_S)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "payload.bin"
    path.write_bytes(os.urandom(BIG_BYTES))
    return path


def test_100_megabytes_reach_8_nodes_with_equal_checksums(cluster: Cluster, big_file: Path) -> None:
    done = cluster.zcp(str(big_file), f"node[0-{NODES - 1}]:.")
    assert done.returncode == 0, done.stderr
    assert f"ok node[0-{NODES - 1}] ({NODES})" in squeezed(done.stderr)
    want = hashlib.sha256(big_file.read_bytes()).hexdigest()
    for index in range(NODES):
        copy = cluster.root(index) / big_file.name
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == want
        assert not leftovers(cluster.root(index))


def test_several_files_into_a_directory_and_one_under_a_new_name(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, two = tmp_path / "one.sh", tmp_path / "two.cfg"
    one.write_text("#!/bin/sh\necho one\n")
    one.chmod(0o755)
    two.write_text("key = 2\n")
    for index in (0, 1):
        (cluster.root(index) / "etc").mkdir(exist_ok=True)
    done = cluster.zcp(str(one), str(two), "node[0-1]:etc")
    assert done.returncode == 0, done.stderr
    for index in (0, 1):
        assert (cluster.root(index) / "etc" / "two.cfg").read_text() == "key = 2\n"
        assert (cluster.root(index) / "etc" / "one.sh").stat().st_mode & 0o777 == 0o755
    root0 = str(cluster.root(0))
    assert cluster.zcp(str(two), f"node0:{root0}/etc/renamed.cfg").returncode == 0
    assert (cluster.root(0) / "etc" / "renamed.cfg").read_text() == "key = 2\n"
    done = cluster.zcp(str(one), str(two), "node0:etc/renamed.cfg")
    assert done.returncode == 1 and "not a directory" in done.stderr


def test_gather_fetches_into_per_node_folders(cluster: Cluster, tmp_path: Path) -> None:
    for index in range(3):
        log = cluster.root(index) / "run.log"
        log.write_text(f"log of node{index}\n")
        log.chmod(0o640)
    done = cluster.zcp("--gather", "node[0-2]:run.log", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr
    for index in range(3):
        copy = tmp_path / "logs" / f"node{index}" / "run.log"
        assert copy.read_text() == f"log of node{index}\n"
        assert copy.stat().st_mode & 0o777 == 0o640
    assert not leftovers(tmp_path / "logs")
    done = cluster.zcp("--gather", "node[0-3]:run.log", str(tmp_path / "more"))
    assert done.returncode == 1
    assert "node3: run.log: cannot open: No such file or directory" in done.stderr
    assert (tmp_path / "more" / "node0" / "run.log").exists()


def test_gather_onto_a_local_directory_fails_that_node_only(
    cluster: Cluster, tmp_path: Path
) -> None:
    for index in range(2):
        (cluster.root(index) / "out.txt").write_text(f"out of node{index}\n")
    (tmp_path / "node1" / "out.txt").mkdir(parents=True)  # where node1's file would land
    done = cluster.zcp("--gather", "node[0-1]:out.txt", str(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"node1: {tmp_path}/node1/out.txt: Is a directory" in squeezed(done.stderr)
    assert (tmp_path / "node0" / "out.txt").read_text() == "out of node0\n"
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("node0:../escape", "'..' is not allowed"),
        ("node0:/etc", "outside the agent's files root"),
        ("node0:missing-dir/x", "No such file or directory"),
    ],
)
def test_bad_remote_paths_are_refused_with_status_1(
    cluster: Cluster, tmp_path: Path, destination: str, message: str
) -> None:
    source = tmp_path / "f"
    source.write_text("x")
    done = cluster.zcp(str(source), destination)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "failed node0 (1)" in squeezed(done.stderr)


def test_an_unreachable_node_is_255_and_the_others_get_the_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    nodes = local_nodes(2, None, cluster.agents)
    ghost = replace(nodes[0], id="ghost", zmq_port=free_port())
    path = tmp_path / "ghost.toml"
    path.write_text(render_descriptor(ClusterDescriptor("g", (*nodes, ghost))))
    source = tmp_path / "for-all"
    source.write_text("hello\n")
    done = cluster.zcp(
        "--connect-timeout", "1", str(source), "node[0-1],ghost:.", ZRSH_DESCRIPTOR=str(path)
    )
    assert done.returncode == 255
    assert "unreachable ghost (1)" in squeezed(done.stderr) and "did not answer within 1s" in (
        done.stderr
    )
    assert (cluster.root(1) / "for-all").read_text() == "hello\n"


def start_big_copy(cluster: Cluster, big_file: Path, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "zcp"), "--no-progress", str(big_file), f"node[0-{NODES - 1}]:{name}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    deadline = time.monotonic() + 20
    while not leftovers(cluster.root(0)) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the first node has a temporary file: mid-transfer
    return proc


def wait_for_no_leftovers(cluster: Cluster, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while any(leftovers(cluster.root(i)) for i in range(NODES)):
        assert time.monotonic() < deadline, [leftovers(cluster.root(i)) for i in range(NODES)]
        time.sleep(0.05)


def test_ctrl_c_mid_transfer_leaves_no_file(cluster: Cluster, big_file: Path) -> None:
    proc = start_big_copy(cluster, big_file, "interrupted.bin")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "cancelled" in err
    wait_for_no_leftovers(cluster, 5.0)  # cancelled at once, not after the idle timeout
    assert not any((cluster.root(i) / "interrupted.bin").exists() for i in range(NODES))


def test_a_killed_zcp_leaves_no_file_under_its_name(cluster: Cluster, big_file: Path) -> None:
    proc = start_big_copy(cluster, big_file, "killed.bin")
    proc.kill()
    proc.wait(TIMEOUT_S)
    assert not any((cluster.root(i) / "killed.bin").exists() for i in range(NODES))
    wait_for_no_leftovers(cluster, IDLE_S + 5.0)  # the agents' idle timeout cuts them
    assert not any((cluster.root(i) / "killed.bin").exists() for i in range(NODES))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "node0:."], "nope: not a regular file (or no such file)"),
        (["{f}", "node[3-1]:."], "bad node set in 'node[3-1]:.'"),
        (["{f}", "node99:."], "unknown node(s) node99"),
        (["{f}", "node0:"], "'node0:': a path is needed after the ':'"),
        (["{f}", "/local/dir"], "usage: zcp FILE... NODESET:DIR"),
        (["--gather", "node0:x", "node1:y"], "usage: zcp --gather NODESET:PATH... LOCALDIR"),
        (["--gather", "node0:dir/", "{d}"], "dir/: --gather fetches files, not directories"),
    ],
)
def test_bad_input_is_status_2(
    cluster: Cluster, tmp_path: Path, args: list[str], message: str
) -> None:
    source = tmp_path / "f"
    source.write_text("x")
    filled = [a.format(f=source, d=tmp_path / "out") for a in args]
    done = cluster.zcp(*filled)
    assert done.returncode == 2 and f"zcp: error: {message}" in done.stderr, done.stderr


def test_the_python_file_runs_too(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "tiny"
    source.write_text("tiny\n")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "03-cluster-runner-simulation" / "zcp.py"),
            str(source),
            "node5:.",
        ],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0 and (cluster.root(5) / "tiny").read_text() == "tiny\n"
