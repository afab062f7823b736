"""The MPI all-reduce timing program: build it on demand with mpicc, and parse what it prints.

Nothing here binds or connects. ``mpi/allreduce_bench.c`` times ``MPI_Allreduce`` per message
size and prints one line per size the way nccl-tests' ``all_reduce_perf`` does (size, count,
type, redop, root, time, algbw, busbw, #wrong) and a ``# Avg bus bandwidth`` line.

* ``bench_binary()``: the path of a built program. ``$ALLREDUCE_BENCH`` names a prebuilt one
  (the node image sets it); otherwise the source is compiled once into a cache directory
  keyed by the source, the flags and the mpicc in use, so an edit rebuilds and nothing else
  does. ``MpiBuildError`` says what is missing (mpicc, a compiler) and how to get it.
* ``parse_bench_output(text)``: a ``BenchReport`` (rows, ranks, average busbw); it also reads
  real nccl-tests output, whose lines carry an in-place group after the out-of-place one.

This file uses the standard library only, so the image's build stage runs it before the
project is installed:
    python 03-cluster-runner-simulation/mpi_bench.py build [--build-dir DIR]
    python 03-cluster-runner-simulation/mpi_bench.py parse OUTPUT.txt [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).resolve().parent / "mpi" / "allreduce_bench.c"
PROGRAM: Final = "allreduce_bench"
PREBUILT_ENV: Final = "ALLREDUCE_BENCH"
MPICC: Final = "mpicc"
CFLAGS: Final = ("-O2", "-std=c11", "-Wall", "-Wextra")
BUILD_TIMEOUT_S: Final = 120.0
CACHE_SUBDIR: Final = Path("zmq-cluster-learning") / "mpi"

ROW = re.compile(
    r"^\s*(?P<size>\d+)\s+(?P<count>\d+)\s+(?P<type>\w+)\s+(?P<redop>\w+)\s+(?P<root>-?\d+)\s+"
    r"(?P<time>[\d.]+)\s+(?P<algbw>[\d.]+)\s+(?P<busbw>[\d.]+)\s+(?P<wrong>\d+|N/A)"
    r"(?:\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(?:\d+|N/A))?\s*$"
)
AVERAGE = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*(?P<busbw>[\d.]+)\s*$")
OUT_OF_BOUNDS = re.compile(r"^#\s*Out of bounds values\s*:\s*(?P<count>\d+)")
RANK = re.compile(
    r"^#\s+Rank\s+(?P<rank>\d+)\s+(?:Group\s+\d+\s+)?Pid\s+(?P<pid>\d+)\s+on\s+(?P<node>\S+)"
)
NRANKS = re.compile(r"\bnranks (?P<n>\d+)\b")


class MpiBuildError(RuntimeError):
    """The program could not be built; the message says what to install or fix."""


class BenchOutputError(ValueError):
    """The text is not the program's output (no result line, or no average)."""


# --- Building ---------------------------------------------------------------------------------


def default_build_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / CACHE_SUBDIR


def _mpicc_identity(mpicc: str) -> str:
    """What mpicc runs (compiler, include and library flags): part of the cache key."""
    try:
        shown = subprocess.run(
            [mpicc, "--showme"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MpiBuildError(f"{mpicc} does not run: {exc}") from None
    return shown.stdout.strip()


def bench_binary(build_dir: Path | None = None, *, force: bool = False) -> Path:
    """The built program: $ALLREDUCE_BENCH if set, else a cached build (compiled when needed)."""
    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt and build_dir is None and not force:
        path = Path(prebuilt)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise MpiBuildError(f"${PREBUILT_ENV} is {prebuilt}, which is not an executable file")
        return path
    mpicc = shutil.which(MPICC)
    if mpicc is None:
        raise MpiBuildError(
            f"{MPICC} not found on PATH: the all-reduce program is built with Open MPI's "
            "compiler wrapper (Debian: apt-get install libopenmpi-dev openmpi-bin), or set "
            f"${PREBUILT_ENV} to a built {PROGRAM}"
        )
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        raise MpiBuildError(f"cannot read {SOURCE}: {exc.strerror}") from None
    key = hashlib.sha256(source + " ".join(CFLAGS).encode() + _mpicc_identity(mpicc).encode())
    target = (build_dir or default_build_dir()) / key.hexdigest()[:16] / PROGRAM
    if target.is_file() and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpiBuildError(f"cannot create {target.parent}: {exc.strerror}") from None
    _compile(mpicc, target)
    return target


def _compile(mpicc: str, target: Path) -> None:
    """Compile to a temporary name beside ``target``, then rename: never half a binary."""
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{PROGRAM}-", dir=target.parent)
    except OSError as exc:  # a read-only or foreign build directory
        raise MpiBuildError(f"cannot write in {target.parent}: {exc.strerror}") from None
    os.close(fd)
    argv = [mpicc, *CFLAGS, "-o", partial, str(SOURCE)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise MpiBuildError(f"{' '.join(argv)} failed (exit {done.returncode}): {tail}")
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    except subprocess.TimeoutExpired:
        raise MpiBuildError(f"{mpicc} took more than {BUILD_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise MpiBuildError(f"building {target}: {exc}") from None
    finally:
        Path(partial).unlink(missing_ok=True)


# --- Parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRow:
    """One message size: the out-of-place figures of one result line."""

    line: str
    size_bytes: int
    count: int
    dtype: str
    redop: str
    time_us: float
    algbw_gbps: float
    busbw_gbps: float
    wrong: int | None  # None when the program printed N/A


@dataclass(frozen=True)
class RankPlace:
    rank: int
    pid: int
    node: str


@dataclass(frozen=True)
class BenchReport:
    rows: tuple[BenchRow, ...]
    avg_busbw_gbps: float
    nranks: int | None = None
    out_of_bounds: int | None = None
    ranks: tuple[RankPlace, ...] = field(default=())

    @property
    def nodes(self) -> list[str]:
        """The distinct nodes the ranks ran on, in rank order."""
        return list(dict.fromkeys(place.node for place in self.ranks))

    @property
    def wrong(self) -> int:
        """Wrong elements over every size (the program's own total when it printed one)."""
        if self.out_of_bounds is not None:
            return self.out_of_bounds
        return sum(row.wrong or 0 for row in self.rows)


def _row(match: re.Match[str]) -> BenchRow:
    wrong = match["wrong"]
    return BenchRow(
        line=match.group(0).strip(),
        size_bytes=int(match["size"]),
        count=int(match["count"]),
        dtype=match["type"],
        redop=match["redop"],
        time_us=float(match["time"]),
        algbw_gbps=float(match["algbw"]),
        busbw_gbps=float(match["busbw"]),
        wrong=None if wrong == "N/A" else int(wrong),
    )


def parse_bench_output(text: str) -> BenchReport:
    """The rows, ranks and average of allreduce_bench's (or nccl-tests') output."""
    rows: list[BenchRow] = []
    ranks: list[RankPlace] = []
    average: float | None = None
    out_of_bounds: int | None = None
    nranks: int | None = None
    for line in text.splitlines():
        if match := ROW.match(line):
            rows.append(_row(match))
        elif match := AVERAGE.match(line):
            average = float(match["busbw"])
        elif match := OUT_OF_BOUNDS.match(line):
            out_of_bounds = int(match["count"])
        elif match := RANK.match(line):
            ranks.append(RankPlace(int(match["rank"]), int(match["pid"]), match["node"]))
        elif nranks is None and (match := NRANKS.search(line)) and line.startswith("#"):
            nranks = int(match["n"])
    if not rows:
        raise BenchOutputError("no result line (size count type redop root time algbw busbw)")
    if average is None:
        raise BenchOutputError("no '# Avg bus bandwidth' line: the run did not finish")
    return BenchReport(tuple(rows), average, nranks, out_of_bounds, tuple(ranks))


# --- Command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compile the program (cached)", formatter_class=formatter)
    build.add_argument(
        "--build-dir", type=Path, default=None, help=f"cache directory; None: {default_build_dir()}"
    )
    build.add_argument("--force", action="store_true", help="compile even if a build is cached")
    parse = sub.add_parser("parse", help="parse the program's output", formatter_class=formatter)
    parse.add_argument("path", help="a file with the output, or - for stdin")
    parse.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(bench_binary(args.build_dir, force=args.force))
            return 0
        text = sys.stdin.read() if args.path == "-" else Path(args.path).read_text(errors="replace")
        report = parse_bench_output(text)
    except (MpiBuildError, BenchOutputError) as exc:
        print(f"mpi_bench: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mpi_bench: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        for row in report.rows:
            print(
                f"{row.size_bytes:>12} B  busbw {row.busbw_gbps:8.2f} GB/s  {row.time_us:10.1f} us"
            )
        print(f"avg busbw {report.avg_busbw_gbps:.3f} GB/s over {len(report.rows)} sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
