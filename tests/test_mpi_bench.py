"""mpi_bench.py: allreduce_bench built with the real mpicc, run with the real mpirun, parsed.

Skips only when Open MPI's compiler wrapper or mpirun is absent (CI installs both).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation import mpi_bench
from cluster_runner_simulation.mpi_bench import (
    BenchOutputError,
    MpiBuildError,
    bench_binary,
    parse_bench_output,
)

SCRIPT = "03-cluster-runner-simulation/mpi_bench.py"
LOOPBACK_MPI = ["--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]
LOOPBACK_MPI += ["--mca", "oob_tcp_if_include", "lo"]  # mpirun and its ranks: loopback too

# Hand-written in the shape of nccl-tests' all_reduce_perf: out-of-place and in-place groups.
OUT_OF_PLACE = "      size         count      type   redop    root     time   algbw   busbw #wrong"
IN_PLACE = "     time   algbw   busbw #wrong"
NCCL_TESTS_SAMPLE = "\n".join(
    [
        "# nThread 1 nGpus 1 minBytes 8 maxBytes 134217728 step: 2(factor) warmup iters: 5",
        "#",
        "# Using devices",
        "#  Rank  0 Group  0 Pid   1234 on    gpu-01 device  0 [0x07] NVIDIA A100-SXM4-80GB",
        "#  Rank  1 Group  0 Pid   2345 on    gpu-02 device  0 [0x07] NVIDIA A100-SXM4-80GB",
        "#",
        "#" + OUT_OF_PLACE + IN_PLACE,
        "     1048576        262144     float     sum      -1    40.12   26.14   26.14      0"
        "    39.80   26.35   26.35      0",
        "   134217728      33554432     float     sum      -1   1020.3  131.55  131.55    N/A"
        "   1018.9  131.73  131.73    N/A",
        "# Out of bounds values : 0 OK",
        "# Avg bus bandwidth    : 78.9425",
        "#",
        "",
    ]
)


def mpi_tools_problem() -> str | None:
    for tool in ("mpicc", "mpirun"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install libopenmpi-dev openmpi-bin)"
    return None


@pytest.fixture
def built(tmp_path: Path) -> Path:
    problem = mpi_tools_problem()
    if problem:
        pytest.skip(problem)
    return bench_binary(tmp_path / "build")


def mpirun(binary: Path, *args: str, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    argv = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), *LOOPBACK_MPI]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    return subprocess.run(
        [*argv, str(binary), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_ID": "here"},
        stdin=subprocess.DEVNULL,
    )


def test_the_build_is_cached_and_rebuilt_only_when_forced(built: Path, tmp_path: Path) -> None:
    assert built.is_file() and os.access(built, os.X_OK)
    mtime = built.stat().st_mtime_ns
    assert bench_binary(tmp_path / "build") == built and built.stat().st_mtime_ns == mtime
    assert bench_binary(tmp_path / "build", force=True) == built
    leftovers = [p.name for p in built.parent.iterdir() if p.name != built.name]
    assert leftovers == []  # the temporary name was renamed, never left behind


def test_a_real_run_parses_into_rows_ranks_and_the_average(built: Path) -> None:
    done = mpirun(built, "-b", "1K", "-e", "64K", "-f", "4", "-n", "3", "-w", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    report = parse_bench_output(done.stdout)
    assert [row.size_bytes for row in report.rows] == [1024, 4096, 16384, 65536]
    assert all(
        row.wrong == 0 and row.dtype == "float" and row.redop == "sum" for row in report.rows
    )
    assert all(row.busbw_gbps == pytest.approx(row.algbw_gbps, abs=0.011) for row in report.rows)
    assert report.nranks == 2 and [p.rank for p in report.ranks] == [0, 1]
    assert report.nodes == ["here"] and report.wrong == 0 and report.out_of_bounds == 0
    assert "# Avg bus bandwidth" in done.stdout and report.avg_busbw_gbps >= 0


def test_the_program_refuses_bad_options_with_exit_2(built: Path) -> None:
    for args in (["-b", "0"], ["-e", "1T"], ["-b", "4M", "-e", "1K"], ["-f", "1"], ["--what"]):
        done = mpirun(built, *args, ranks=1)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "allreduce_bench" in done.stderr


def test_nccl_tests_output_parses_too() -> None:
    report = parse_bench_output(NCCL_TESTS_SAMPLE)
    assert [(r.size_bytes, r.busbw_gbps, r.wrong) for r in report.rows] == [
        (1048576, 26.14, 0),
        (134217728, 131.55, None),
    ]
    assert report.avg_busbw_gbps == pytest.approx(78.9425)
    assert report.nodes == ["gpu-01", "gpu-02"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "no result line"),
        ("# just a header\n", "no result line"),
        (NCCL_TESTS_SAMPLE.split("# Out of bounds")[0], "did not finish"),
    ],
)
def test_output_that_is_not_a_finished_run_is_refused(text: str, problem: str) -> None:
    with pytest.raises(BenchOutputError, match=problem):
        parse_bench_output(text)


def test_a_missing_mpicc_is_a_clear_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ALLREDUCE_BENCH", raising=False)
    with pytest.raises(MpiBuildError, match="mpicc not found on PATH.*libopenmpi-dev"):
        bench_binary(tmp_path / "build")


def test_a_prebuilt_program_must_be_executable(tmp_path: Path, monkeypatch: Any) -> None:
    program = tmp_path / "allreduce_bench"
    program.write_text("not a program")
    monkeypatch.setenv("ALLREDUCE_BENCH", str(program))
    with pytest.raises(MpiBuildError, match="not an executable file"):
        bench_binary()
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    assert bench_binary() == program


def test_a_compile_error_quotes_the_compiler(tmp_path: Path, monkeypatch: Any, built: Path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return nope; }\n")
    monkeypatch.setattr(mpi_bench, "SOURCE", broken)
    with pytest.raises(MpiBuildError, match="failed \\(exit 1\\).*nope"):
        bench_binary(tmp_path / "other-build")
    assert not any((tmp_path / "other-build").rglob("allreduce_bench*"))


def test_the_command_line_builds_and_parses(tmp_path: Path, run: Any, built: Path) -> None:
    done = run(SCRIPT, "build", "--build-dir", str(tmp_path / "build"))
    assert done.returncode == 0 and done.stdout.strip() == str(built)
    sample = tmp_path / "out.txt"
    sample.write_text(NCCL_TESTS_SAMPLE)
    parsed = run(SCRIPT, "parse", str(sample))
    assert parsed.returncode == 0 and "avg busbw 78.942 GB/s over 2 sizes" in parsed.stdout
    sample.write_text("garbage\n")
    bad = run(SCRIPT, "parse", str(sample))
    assert bad.returncode == 1 and "mpi_bench: error: no result line" in bad.stderr
    missing = run(SCRIPT, "parse", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "No such file" in missing.stderr
