"""mpi_job.py: the mpirun command line, one run through an executor, the journal records.

Fake executors here (no network); the real job over agents and zrsh is in test_mpi_agents.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec
from cluster_runner_simulation.mpi_job import (
    BenchSizes,
    MpiJobSpec,
    descriptor_job,
    mpi_results,
    mpirun_argv,
    mpirun_command,
    run_mpi_job,
)
from cluster_runner_simulation.protocols import (
    CommandResult,
    Env,
    NodeUnreachable,
    SystemConfiguration,
)

GOOD_OUTPUT = """\
# allreduce_bench (MPI_Allreduce, float sum): nranks 2 minBytes 1024 maxBytes 4096 step: 4(factor)
#  Rank  0 Pid   101 on a
#  Rank  1 Pid   202 on b
        1024           256     float     sum      -1     52.1    0.02    0.02       0
        4096          1024     float     sum      -1    113.7    0.04    0.04       0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 0.030
"""


class Canned:
    """An executor that answers every command with one result, or raises."""

    def __init__(self, result: CommandResult | None = None, error: Exception | None = None):
        self.result, self.error = result, error
        self.calls: list[tuple[str, float | None, dict[str, str]]] = []

    @property
    def node_id(self) -> str:
        return "a"

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        self.calls.append((command, timeout, dict(env or {})))
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    async def system_facts(self) -> SystemConfiguration:
        return SystemConfiguration("a", "a", 1, 1, "3.11")

    async def close(self) -> None:
        pass


def spec(**options: object) -> MpiJobSpec:
    fields: dict[str, object] = {"launcher": "/usr/bin/zrsh", **options}
    return MpiJobSpec(("a", "b"), "/opt/bench", **fields)  # type: ignore[arg-type]


def test_the_mpirun_command_line_names_every_choice() -> None:
    argv = mpirun_argv(spec(interfaces="lo", allow_run_as_root=True, shared_machine=True))
    line = " ".join(argv)
    assert argv[:6] == ["mpirun", "--host", "localhost:1,b:1", "-np", "2", "--map-by"]
    for expected in (
        "--bind-to none",
        "--leave-session-attached",
        "--mca orte_startup_timeout 60",
        "--allow-run-as-root",
        "--mca plm_rsh_agent /usr/bin/zrsh",
        "--mca plm_rsh_no_tree_spawn 1",
        "--mca pml ob1",
        "--mca btl self,tcp",
        "--mca btl_tcp_if_include lo",
        "--mca oob_tcp_if_include lo",
        "--mca mpi_yield_when_idle 1",
        "--mca rtc_hwloc_vmhole none",
    ):
        assert expected in line, expected
    assert argv[-11:] == ["/opt/bench", "-b", "1K", "-e", "4M", "-f", "4", "-n", "10", "-w", "3"]
    assert mpirun_command(spec()) == shlex.join(mpirun_argv(spec()))
    plain = " ".join(mpirun_argv(spec(ranks_per_node=2)))
    assert "-np 4" in plain and "localhost:2,b:2" in plain and "btl self,vader,tcp" in plain
    assert "allow-run-as-root" not in plain and "if_include" not in plain


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"hosts": ()}, "at least one host"),
        ({"hosts": ("a", "a")}, "hosts repeat"),
        ({"hosts": ("a,b",)}, "letters, digits"),
        ({"ranks_per_node": 0}, "ranks_per_node"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"startup_timeout_s": 0}, "startup_timeout_s"),
    ],
)
def test_a_bad_job_is_refused(options: dict[str, object], problem: str) -> None:
    fields: dict[str, object] = {"hosts": ("a", "b"), "bench": "/b", **options}
    with pytest.raises(ValueError, match=problem):
        MpiJobSpec(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="byte count"):
        BenchSizes(max_bytes="4 MB")
    with pytest.raises(ValueError, match="factor"):
        BenchSizes(factor=1)


def test_a_descriptor_job_points_zrsh_at_the_descriptor(tmp_path: Path) -> None:
    nodes = (NodeSpec("a", "127.0.0.1"), NodeSpec("b", "127.0.0.2"), NodeSpec("c", "10.0.0.3"))
    descriptor = ClusterDescriptor("t", nodes, tmp_path / "cluster.toml")
    local = descriptor_job(descriptor, ["a", "b"], bench="/b", launcher="zrsh")
    assert local.launcher_env == {"ZRSH_DESCRIPTOR": str((tmp_path / "cluster.toml").resolve())}
    assert local.interfaces == "lo"  # every node on loopback
    mixed = descriptor_job(descriptor, ["a", "c"], bench="/b", launcher="zrsh")
    assert mixed.interfaces is None
    named = descriptor_job(
        descriptor, ["a", "c"], bench="/b", launcher_descriptor="/etc/c.toml", interfaces="ib0"
    )
    assert named.launcher_env["ZRSH_DESCRIPTOR"] == "/etc/c.toml" and named.interfaces == "ib0"
    with pytest.raises(ValueError, match="no file for zrsh"):
        descriptor_job(ClusterDescriptor("t", nodes), ["a", "b"], bench="/b")


async def test_a_good_run_becomes_one_record_per_result_line() -> None:
    executor = Canned(CommandResult("mpirun ...", 0, GOOD_OUTPUT.encode()))
    run = await run_mpi_job(executor, spec(launcher_env={"ZRSH_DESCRIPTOR": "/d.toml"}))
    ((command, timeout, env),) = executor.calls
    assert command.startswith("mpirun --host localhost:1,b:1") and timeout == 300.0
    assert env == {"ZRSH_DESCRIPTOR": "/d.toml"}
    assert run.ok and run.report is not None and run.report.nodes == ["a", "b"]
    records = mpi_results(run, run_id="r1", schedule="pairs", launcher="zrsh")
    assert [r.record_id for r in records] == [
        "r1/pairs/mpi_allreduce/a+b/1024",
        "r1/pairs/mpi_allreduce/a+b/4096",
    ]
    first = records[0]
    assert first.exit_status == 0 and first.nodes == ("a", "b") and first.test == "mpi_allreduce"
    assert first.result_line.startswith("1024") and first.metrics["busbw_gbps"] == 0.02
    assert first.extra["rank_nodes"] == ["a", "b"] and first.extra["avg_busbw_gbps"] == 0.03


@pytest.mark.parametrize(
    "result, error, problem",
    [
        (None, NodeUnreachable("a", "gone"), "NodeUnreachable: a: gone"),
        (CommandResult("m", 1, b"", b"zrsh: b: unreachable\n"), None, "exit 1: zrsh: b"),
        (CommandResult("m", 0, b"garbage\n"), None, "no result line"),
        (CommandResult("m", 0, GOOD_OUTPUT.replace("0 OK", "5 FAILED").encode()), None, "5 wrong"),
        (CommandResult("m", 3, GOOD_OUTPUT.encode(), b"late"), None, "mpirun exited 3: late"),
    ],
)
async def test_a_failed_run_is_journaled_not_lost(
    result: CommandResult | None, error: Exception | None, problem: str
) -> None:
    run = await run_mpi_job(Canned(result, error), spec())
    assert not run.ok and problem in str(run.error)
    records = mpi_results(run, run_id="r1", schedule="pairs")
    assert records and all(r.exit_status != 0 for r in records)
    assert all(problem in str(r.extra["errors"]["a"]) for r in records)
