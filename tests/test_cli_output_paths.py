"""Every option that names a file a tool writes when it is done is checked while parsing.

A path in a missing directory, a path that is a directory, or a directory option that is a
file: one usage line and exit 2 before anything runs (a benchmark must not run for minutes
and then fail on a typo), never a traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_patterns.cli_args import output_directory, output_file
from conftest import REPO

PY = sys.executable
# (tool argv, the option under test); the other arguments only get parsing that far.
FILE_OPTIONS = [
    (["01-zmq-basics/labs.py", "basics"], "--results"),
    (["02-cluster-patterns/benchmark.py", "--quick"], "--json"),
    (["02-cluster-patterns/client.py"], "--json"),
    (["03-cluster-runner-simulation/fanout_benchmark.py"], "--json"),
    (["03-cluster-runner-simulation/copy_benchmark.py"], "--json"),
    (["03-cluster-runner-simulation/journal_bench.py"], "--json"),
    (["03-cluster-runner-simulation/mpi_repeat.py"], "--json"),
    (["03-cluster-runner-simulation/mpi_repeat.py"], "--markdown"),
    (["03-cluster-runner-simulation/performance_comparison.py", "--smoke"], "--json"),
    (["03-cluster-runner-simulation/performance_comparison.py", "--smoke"], "--plot"),
    (["03-cluster-runner-simulation/run_mpi.py", "--local", "2"], "--json"),
    (["03-cluster-runner-simulation/env_parity.py", "--local", "1"], "--json"),
    (["03-cluster-runner-simulation/env_parity.py", "--local", "1"], "--write-env-file"),
    (["-m", "cluster_simulator", "--local", "test"], "--json"),
]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(("tool", "option"), FILE_OPTIONS, ids=lambda v: str(v))
def test_an_output_file_in_a_missing_directory_or_on_a_directory_is_a_usage_error(
    tool: list[str], option: str, tmp_path: Path
) -> None:
    for path, why in ((tmp_path / "missing" / "out.json", "does not exist"), (tmp_path, "is a")):
        done = run([*tool, option, str(path)])
        assert done.returncode == 2, done.stdout + done.stderr
        assert why in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "tool",
    [
        ["docker/simulator/scale_bench.py", "--quick", "--out"],
        ["03-cluster-runner-simulation/journal_bench.py", "--dir"],
    ],
)
def test_an_output_directory_that_is_a_file_is_a_usage_error(
    tool: list[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    done = run([*tool, str(a_file / "sub")])
    assert done.returncode == 2 and "is a file, not a directory" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_types_accept_what_a_run_can_write(tmp_path: Path) -> None:
    assert output_file(str(tmp_path / "new.json")) == tmp_path / "new.json"
    assert output_file("relative.json") == Path("relative.json")  # the current directory
    assert output_directory(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"  # created later
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        output_file(str(tmp_path))
