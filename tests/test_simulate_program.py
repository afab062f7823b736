"""The simulator program's logic, without processes or containers (the real runs are in
test_simulate_local*.py, test_simulate_cleanup.py and test_docker_simulator.py).

A FakeBackend that records what it was asked to do stands in for Docker and the local
processes, as a fake network stands in for sockets elsewhere: the fault vocabulary, the
node checks, the invariants, the Compose override, the configuration and the signal rules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns import defaults
from cluster_simulator.backend import Backend, ClientRun, StatusRow, Topology
from cluster_simulator.cli import explain
from cluster_simulator.compose import Compose, detect_compose
from cluster_simulator.config import ComposeChoice, SimConfig, build_config
from cluster_simulator.faults import Faults
from cluster_simulator.lifecycle import Interrupted, Signals, Undo
from cluster_simulator.output import PortTaken, SimError, UsageError
from cluster_simulator.ports import require_free_ports
from cluster_simulator.roles import Roles, Workload
from cluster_simulator.scenario import check_invariants, format_table


def recorded_fault(what: str) -> Callable[[FakeBackend, str], None]:
    """A FakeBackend fault method that records (what, node) in its calls."""

    def fault(self: FakeBackend, node: str) -> None:
        self._record(what, node)

    return fault


class FakeBackend(Backend):
    """Every operation is recorded in ``calls``; nothing runs."""

    name = "fake"

    def __init__(self, state_root: Path, workers: int = 3) -> None:
        signals = Signals()
        super().__init__(SimConfig(state_root=state_root), signals, Undo(signals))
        self.workers = workers
        self.calls: list[tuple[str, str]] = []
        self.state_dir.mkdir(parents=True)

    def is_started(self) -> bool:
        return True

    def worker_count(self) -> int:
        return self.workers

    def monitor_port(self) -> int:
        return defaults.MONITOR_PORT

    def _record(self, what: str, node: str = "") -> None:
        self.calls.append((what, node))

    def build(self) -> None:
        self._record("build")

    def start(self, workers: int) -> None:
        self._record("start", str(workers))

    def stop(self) -> None:
        self._record("stop")

    def cleanup(self) -> None:
        self._record("cleanup")

    def status_rows(self, topology: Topology) -> list[StatusRow]:
        return [StatusRow(node, "running", "") for node in topology.nodes()]

    def show_logs(self, node: str | None, follow: bool) -> int:
        return 0

    # The six node faults only note that they were asked for, and on which node.
    kill, restart = recorded_fault("kill"), recorded_fault("restart")
    disconnect, reconnect = recorded_fault("disconnect"), recorded_fault("reconnect")
    freeze, thaw = recorded_fault("freeze"), recorded_fault("thaw")

    def traffic_control(self, node: str, action: str, *netem: str) -> Any:
        self._record(f"tc {action} {' '.join(netem)}".strip(), node)
        return subprocess.CompletedProcess([], 0, "", "")

    def in_node_netns(self, node: str) -> list[str]:
        return []

    def start_client(
        self, work: Workload, json_path: Path | None, stdout: Any = None, stderr: Any = None
    ) -> ClientRun:
        raise AssertionError("no client in these tests")


@pytest.fixture
def fake(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path / "state")


def test_faults_drive_the_backend_and_keep_partition_state(fake: FakeBackend) -> None:
    faults = Faults(fake, "partition", wait=False)
    faults.fail("worker1")
    faults.recover("worker1")
    faults.partition("worker2")
    with pytest.raises(UsageError, match="worker2 is already partitioned"):
        faults.partition("worker2")
    faults.heal("worker2")
    with pytest.raises(UsageError, match="worker2 is not partitioned"):
        faults.heal("worker2")
    faults.slow("coordinator", 100)
    faults.flaky("worker3", 5)
    assert fake.calls == [
        ("kill", "worker1"),
        ("restart", "worker1"),
        ("disconnect", "worker2"),
        ("reconnect", "worker2"),
        ("tc replace netem delay 100ms", "coordinator"),
        ("tc replace netem loss 5%", "worker3"),
    ]


@pytest.mark.parametrize(
    "node, workers_only, message",
    [
        (
            "worker7",
            False,
            "unknown node 'worker7'; valid nodes: coordinator worker1 worker2 " "worker3 monitor",
        ),
        ("monitor", True, "partition works on workers only; valid nodes: worker1 worker2 worker3"),
    ],
)
def test_unknown_nodes_are_refused_with_the_valid_names(
    node: str, workers_only: bool, message: str
) -> None:
    with pytest.raises(UsageError) as refused:
        Topology(3).check("partition", node, workers_only)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "argparse_message, command, ours",
    [
        (
            "argument COMMAND: invalid choice: 'explode' (choose from 'build')",
            "",
            "unknown command 'explode' (see `help`)",
        ),
        ("the following arguments are required: NODE", "fail", "fail: missing NODE (see --help)"),
        (
            "argument --workers: --workers needs a number from 1 to 9, not '0'",
            "start",
            "start: --workers needs a number from 1 to 9, not '0'",
        ),
        ("argument -p/--project: expected one argument", "", "-p/--project: expected one argument"),
    ],
)
def test_argparse_errors_in_the_simulators_words(
    argparse_message: str, command: str, ours: str
) -> None:
    assert explain(argparse_message, command) == ours


def test_invariants_name_every_violation() -> None:
    good = {"submitted": 200, "done": 200, "lost": 0, "duplicates": 0, "failed": 0}
    assert check_invariants(good, 200) == []
    assert check_invariants({}, 200) == ["the workload wrote no summary"]
    bad = {**good, "done": 197, "lost": 3, "duplicates": 1}
    assert check_invariants(bad, 200) == [
        "3 acknowledged task(s) lost",
        "1 result(s) recorded twice",
        "done 197 of submitted 200 (wanted 200)",
    ]


def test_the_figures_table_keeps_its_columns() -> None:
    """docs/results/simulate-*-test.md quote this header; runs stay comparable with it."""
    header = format_table([]).splitlines()[0]
    assert header == (
        "step               tasks  done lost  dup retried  p50 ms  p99 ms  tasks/s  figure"
    )


def test_compose_override_sets_every_role_and_extra_workers(tmp_path: Path) -> None:
    config = SimConfig(state_root=tmp_path)
    compose = Compose(config, ComposeChoice.V2, "x-node:latest", tmp_path)
    for keys in ("/keys/coordinator", None):
        compose.write_override(5, Roles(["python"], config.liveness, keys))
        services = json.loads(compose.override.read_text().split("\n", 1)[1])["services"]
        assert sorted(services) == sorted(Topology(5).nodes())
        assert services["worker5"]["extends"] == {"service": "worker1"}
        assert "extends" not in services["worker3"]
        for service in services.values():
            command = service["command"]
            assert ("--keys" in command) == (keys is not None), command
            interval = command[command.index("--heartbeat-interval") + 1]
            assert float(interval) == defaults.HEARTBEAT_INTERVAL_S
    compose.remove_override()
    assert not compose.override.exists()


def test_compose_choice_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither docker nor docker-compose here
    with pytest.raises(UsageError, match="COMPOSE=v1, but `docker-compose` is not installed"):
        detect_compose(ComposeChoice.V1)
    with pytest.raises(UsageError, match="COMPOSE=v2, but `docker compose version` fails"):
        detect_compose(ComposeChoice.V2)
    with pytest.raises(UsageError, match="neither `docker compose` .* nor `docker-compose`"):
        detect_compose(ComposeChoice.AUTO)


def test_configuration_defaults_come_from_cluster_patterns() -> None:
    config = build_config({}, backend=None, project=None, no_wait=False)
    assert config.ports.coordinator == defaults.TASK_PORT
    assert config.ports.monitor == defaults.MONITOR_PORT
    assert config.liveness.heartbeat_interval_s == defaults.HEARTBEAT_INTERVAL_S
    assert config.liveness.liveness == defaults.LIVENESS


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("MONITOR_PORT", "99999", "MONITOR_PORT must be a port number from 1 to 65535"),
        ("HEARTBEAT_INTERVAL", "nan", "HEARTBEAT_INTERVAL must be a positive number"),
        ("LIVENESS", "0", "LIVENESS must be a whole number of intervals"),
        ("COMPOSE", "v3", "COMPOSE must be auto|v1|v2, not 'v3'"),
        ("CLUSTER_CURVE", "maybe", "CLUSTER_CURVE must be auto|on|off"),
        ("CLUSTER_BACKEND", "vm", "CLUSTER_BACKEND must be local, docker or swarm"),
    ],
)
def test_bad_environment_is_a_usage_error(variable: str, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_config({variable: value}, backend=None, project=None, no_wait=False)


def test_a_taken_port_is_exit_3_naming_its_holder(free_port: Any) -> None:
    import socket

    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        with pytest.raises(PortTaken, match=rf"port {port} \(MONITOR_PORT\) .* pid {os.getpid()}"):
            require_free_ports([("MONITOR_PORT", port)])
    require_free_ports([("MONITOR_PORT", port)])  # free again: no error


@pytest.fixture
def signals() -> Iterator[Signals]:
    """Our handler for SIGINT/SIGTERM/SIGHUP during the test, pytest's own again after."""
    saved = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    handler = Signals()
    handler.install()
    yield handler
    for signum, previous in saved.items():
        signal.signal(signum, previous)


def test_the_first_signal_interrupts_and_the_rest_are_ignored(signals: Signals) -> None:
    with pytest.raises(Interrupted) as interrupted:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raises
    assert interrupted.value.exit_code == 143
    os.kill(os.getpid(), signal.SIGINT)  # ignored now: a stop in progress runs to the end
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_signal_inside_deferred_interrupts_at_its_end(signals: Signals) -> None:
    reached_end_of_block = False
    with pytest.raises(Interrupted):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached_end_of_block = True
    assert reached_end_of_block


def test_flag_only_just_records_and_the_undo_runs_once(signals: Signals, fake: FakeBackend) -> None:
    signals.flag_only = True
    os.kill(os.getpid(), signal.SIGHUP)
    assert signals.interrupted
    fake.arm_stop()
    assert fake.undo.armed and "stopping what this run started" in fake.undo.description
    fake.undo.run()
    fake.undo.run()
    assert fake.calls == [("stop", "")]


def test_a_start_arms_what_the_run_asked_for(fake: FakeBackend) -> None:
    fake.undo.started()
    assert not fake.undo.armed  # `start`: the cluster stays up
    fake.undo.after_start = (fake.stop, "stopping the demo's cluster")
    fake.undo.started()
    assert fake.undo.armed  # the demo: stopped however the run ends


def test_simerror_kinds_carry_their_exit_codes() -> None:
    assert (SimError().exit_code, UsageError().exit_code, PortTaken().exit_code) == (1, 2, 3)
