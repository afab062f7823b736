"""zrun as a real process against real agents on loopback: output, folding, JSON, failures.

Streamed lines with a node prefix, ``-b`` folding identical outputs, ``--json``, the exit
table and status (0, 1 failed, 124 timed out, 255 not reached, 130 after Ctrl-C, 2 for bad
input), unreachable and lost nodes named, the fan-out limit, @groups, Ctrl-C (a real SIGINT)
and a closed stdout that cancel every remote command, and the progress line on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_runner_simulation.testing import (
    LocalAgents,
    free_port,
    local_nodes,
    processes_with,
    unique_sleep,
)
from conftest import REPO, AgentCluster

BIN = Path(sys.executable).parent
NODES = 4
TIMEOUT_S = 60.0


class Cluster(AgentCluster):
    def argv(self, *args: str) -> list[str]:
        return [str(BIN / "zrun"), "--no-progress", *args]

    def zrun(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.tool(self.argv(*args), **env)

    def pid(self, index: int) -> int:
        return self.agents.agents[index].proc.pid


def squeezed(text: str) -> str:
    """White space runs as one space: the table's columns are padded."""
    return " ".join(text.split())


def write_descriptor(path: Path, nodes: tuple[NodeSpec, ...], groups: str = "") -> Path:
    path.write_text(render_descriptor(ClusterDescriptor("test", nodes)) + groups)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("zrun")
    with LocalAgents(NODES) as agents:
        nodes = local_nodes(NODES, None, agents)
        path = write_descriptor(base / "cluster.toml", nodes, '[groups]\npair = "node[1-2]"\n')
        yield Cluster(agents, path, {**os.environ, "ZRSH_DESCRIPTOR": str(path)}, TIMEOUT_S)


def test_streamed_output_has_a_node_prefix_and_a_table(cluster: Cluster) -> None:
    done = cluster.zrun("-w", "node[0-3]", "echo out; echo err >&2; printf partial")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines) == sorted(
        [f"node{i}: {text}" for i in range(NODES) for text in ("out", "partial")]
    )
    assert sorted(line for line in done.stderr.splitlines() if ": err" in line) == [
        f"node{i}: err" for i in range(NODES)
    ]
    assert "exit 0  node[0-3] (4)" in done.stderr


def test_gathered_output_folds_identical_outputs(cluster: Cluster) -> None:
    done = cluster.zrun("-b", "-a", "echo same")
    assert done.stdout == "---------------\nnode[0-3] (4)\n---------------\nsame\n"
    done = cluster.zrun("-b", "-a", "echo $PPID")  # the agent's pid: different on every node
    assert done.stdout.count("---------------\n") == 2 * NODES
    for index in range(NODES):
        assert f"node{index} (1)\n---------------\n{cluster.pid(index)}\n" in done.stdout


def test_json_document_and_failures(cluster: Cluster) -> None:
    command = f'echo "x"; [ $PPID != {cluster.pid(1)} ] || exit 3'
    done = cluster.zrun("--json", "-a", command)
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["exit_status"] == 1 and document["counts"] == {"ok": 3, "failed": 1}
    by_node = {n["node"]: n for n in document["nodes"]}
    assert list(by_node) == [f"node{i}" for i in range(NODES)]
    assert by_node["node1"]["exit_status"] == 3 and by_node["node1"]["outcome"] == "failed"
    assert by_node["node0"]["stdout"] == "x\n"
    table = cluster.zrun("-a", command).stderr
    assert "exit 0 node[0,2-3] (3)" in squeezed(table) and "exit 3 node1 (1)" in squeezed(table)


def test_a_signal_death_is_reported(cluster: Cluster) -> None:
    done = cluster.zrun("-w", "node0", "kill -9 $$")
    assert done.returncode == 1 and "signal KILL node0 (1)" in squeezed(done.stderr)


def test_timeout_is_124_and_kills_the_commands(cluster: Cluster) -> None:
    marker = unique_sleep()
    started = time.monotonic()
    done = cluster.zrun("-t", "1", "-w", "node[0-1]", f"sleep {marker}")
    assert done.returncode == 124 and "timeout node[0-1] (2)" in squeezed(done.stderr)
    assert time.monotonic() - started < 1.0 + 5.0
    assert not processes_with(marker)


def test_unreachable_nodes_are_named_and_the_others_still_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    nodes = local_nodes(NODES, None, cluster.agents)
    ghost = replace(nodes[0], id="ghost", zmq_port=free_port())
    path = write_descriptor(tmp_path / "ghost.toml", (*nodes, ghost))
    started = time.monotonic()
    done = cluster.zrun(
        "--connect-timeout", "1", "-b", "-w", "node[0-1],ghost", "echo up",
        ZRSH_DESCRIPTOR=str(path),
    )  # fmt: skip
    assert time.monotonic() - started < 1.0 + 4.0
    assert done.returncode == 255
    assert "node[0-1] (2)\n---------------\nup\n" in done.stdout
    assert "unreachable ghost (1)" in squeezed(done.stderr)
    assert f"ghost: agent at tcp://127.0.0.1:{ghost.zmq_port} did not answer within 1s" in (
        done.stderr
    )


def test_a_node_lost_while_running_is_named(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        cluster.argv("-w", "node[2-3]", "echo started; sleep 30"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith("started\n")
        assert proc.stdout.readline().endswith("started\n")
        cluster.agents.stop_one(3, signal.SIGKILL)
        cluster.agents.stop_one(2, signal.SIGTERM)  # a clean stop: its exit says cancelled
        _, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 255
        assert "lost node3 (1)" in squeezed(err) and "silent for" in err
        assert "cancelled node2 (1)" in squeezed(err)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.agents.restart(2)
        cluster.agents.restart(3)


def test_ctrl_c_cancels_every_remote_command(cluster: Cluster) -> None:
    marker = unique_sleep()
    proc = subprocess.Popen(
        cluster.argv("-a", f"echo started; sleep {marker}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    assert proc.stdout is not None
    for _ in range(NODES):
        assert proc.stdout.readline().endswith("started\n")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130
    assert "cancelled node[0-3] (4)" in squeezed(err) and "Traceback" not in err
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker)


def test_a_closed_stdout_cancels_the_remote_commands(cluster: Cluster) -> None:
    marker = f"zrun-yes-{unique_sleep()}"
    shell = f"{' '.join(cluster.argv('-w', 'node[0-1]', f'yes {marker}'))} | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=TIMEOUT_S,
    )
    assert done.stdout.endswith(f": {marker}\n") and done.returncode == 141
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker)


def test_the_fanout_limit_is_kept(cluster: Cluster) -> None:
    done = cluster.zrun("--json", "-f", "1", "-a", "date +%s.%N; sleep 0.3; date +%s.%N")
    spans = sorted(tuple(map(float, n["stdout"].split())) for n in json.loads(done.stdout)["nodes"])
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans  # one node at a time


def test_groups_and_excludes(cluster: Cluster) -> None:
    assert "node[1-2] (2)" in cluster.zrun("-b", "-w", "@pair", "true").stderr
    assert "node[0,2] (2)" in cluster.zrun("-w", "@leaf-a", "true").stderr
    assert "node[0,3] (2)" in cluster.zrun("-a", "-x", "@pair", "true").stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "node[3-1]", "true"], "bad node set: node[3-1]: range 3-1 goes down"),
        (["-w", "node9", "true"], "unknown node(s) node9; the descriptor has node[0-3]"),
        (["-w", "@gpu", "true"], "bad node set: no group @gpu; groups: @all, @leaf-a"),
        (["-w", "node0", "-x", "node0", "true"], "no nodes left after -x"),
        (["true"], "no nodes: give -w NODESET or -a"),
        (["-w", "node0"], "a COMMAND is needed"),
        (["-t", "0", "-w", "node0", "true"], "argument -t/--timeout: must be > 0, got 0"),
        (["-t", "1e9", "-w", "node0", "true"], "argument -t/--timeout: must be at most"),
        (["-f", "x", "-w", "node0", "true"], "argument -f/--fanout: 'x' is not an integer"),
    ],
)
def test_bad_input_is_a_clear_error_with_status_2(
    cluster: Cluster, args: list[str], message: str
) -> None:
    done = cluster.zrun(*args)
    assert done.returncode == 2 and f"zrun: error: {message}" in done.stderr, done.stderr


def test_descriptor_problems_are_status_2(cluster: Cluster, tmp_path: Path) -> None:
    done = cluster.zrun("-a", "true", ZRSH_DESCRIPTOR=str(tmp_path / "none.toml"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    nokeys = write_descriptor(tmp_path / "nokeys.toml", (NodeSpec("n1", "127.0.0.1"),))
    done = cluster.zrun("-a", "true", ZRSH_DESCRIPTOR=str(nokeys))
    assert done.returncode == 2 and "node 'n1': the descriptor gives no curve_keys_dir" in (
        done.stderr
    )


def test_the_python_file_runs_too(cluster: Cluster) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "03-cluster-runner-simulation" / "zrun.py"),
            "-b",
            "-a",
            "true",
        ],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0 and "exit 0  node[0-3] (4)" in done.stderr


def test_a_terminal_gets_a_progress_line(cluster: Cluster) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "zrun"), "-b", "-a", "sleep 1.6"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=cluster.env,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.1)[0]:
            try:
                seen += os.read(leader, 4096)
            except OSError:
                break
    proc.wait(TIMEOUT_S)
    os.close(leader)
    assert b"zrun: 0/4 done, 0 failed, 4 running" in seen
    assert proc.returncode == 0
