"""The journal benchmark: group commit against fsync per record, side by side in one run.

It starts a collector process twice, once with group commit and once with ``--fsync-each``,
drives each with the same writers (``WRITERS`` DEALERs in this process, ``INFLIGHT`` writes
in flight on each), then measures the in-process ``FileJournalWriter`` as well. Interleaved
rounds, so that a noisy neighbour slows every variant alike; the medians are printed.

    python 03-cluster-runner-simulation/journal_bench.py --writers 16 --records 20000
    python 03-cluster-runner-simulation/zmq_journal.py bench --writers 16 --records 20000

``--json PATH`` also writes the figures with the date, the machine and the load average
(docs/results/journal-bench-N.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from cluster_patterns.cli_args import ErrorExit, output_directory, output_file, positive_int
from cluster_patterns.cli_args import run_interruptible
from cluster_runner_simulation.journal_format import FileJournalWriter, scan_journal
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.protocols import PerfTestResult

WRITERS: Final = 16
RECORDS: Final = 20_000
INFLIGHT: Final = 8
REPEAT: Final = 3
CLI: Final = Path(__file__).resolve().parent / "zmq_journal.py"
GROUP, EACH, IN_PROCESS = (
    "zmq group commit",
    "zmq fsync per record",
    "in-process file, fsync per record",
)
LISTENING = re.compile(r"listening on (\S+)")
# A journal directory that cannot be made or written (a full disk, say): one line, exit 2.
EXITS: Final = (ErrorExit(OSError, 2),)


@dataclass(frozen=True)
class BenchConfig:
    writers: int = WRITERS
    records: int = RECORDS  # in all, per variant
    inflight: int = INFLIGHT  # concurrent writes per writer
    repeat: int = REPEAT
    dir: Path | None = None  # where the journals go; None: TMPDIR
    json: Path | None = None  # also write the figures here

    @property
    def per_writer(self) -> int:
        return max(1, self.records // self.writers)


class _Writer(Protocol):
    async def write(self, test_result: PerfTestResult) -> None: ...

    async def close(self) -> None: ...


def bench_result(writer_no: int, seq: int, run: str) -> PerfTestResult:
    now = time.time()
    return PerfTestResult(
        record_id=f"{run}-w{writer_no}-{seq}",
        schedule="bench",
        test="all_reduce_perf",
        nodes=(f"node-{writer_no:02d}",),
        exit_status=0,
        result_line="   134217728    33554432  float  sum  -1  1200.0  111.85  209.72  0",
        started_at=now,
        finished_at=now,
        metrics={"busbw_gbps": 209.72},
    )


async def _drive(make_writer: Callable[[], _Writer], config: BenchConfig) -> float:
    """Run the writers, each with ``inflight`` concurrent writes; return durable records/s."""
    run = f"{os.getpid()}-{time.monotonic_ns()}"
    writers = [make_writer() for _ in range(config.writers)]

    async def one_lane(w: int, lane: int) -> None:
        for seq in range(lane, config.per_writer, config.inflight):
            await writers[w].write(bench_result(w, seq, run))

    lanes = [one_lane(w, lane) for w in range(config.writers) for lane in range(config.inflight)]
    start = time.perf_counter()
    await asyncio.gather(*lanes)
    elapsed = time.perf_counter() - start
    for writer in writers:
        await writer.close()
    return config.writers * config.per_writer / elapsed


def _start_collector(path: Path, fsync_each: bool) -> tuple[subprocess.Popen[str], str]:
    """A collector process on a port the kernel picks; returns it and its endpoint."""
    argv = [sys.executable, "-u", str(CLI), "collector", "--path", str(path), "--port", "0"]
    proc = subprocess.Popen(
        argv + (["--fsync-each"] if fsync_each else []), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:  # a Ctrl-C or SIGTERM while it starts must not leave it running
        line = proc.stdout.readline()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    found = LISTENING.search(line)
    if found is None:
        proc.kill()
        raise SystemExit(f"bench: collector did not start: {line.strip()}")
    return proc, found[1]


def _bench_collector(tmp: Path, config: BenchConfig, each: bool) -> float:
    path = tmp / f"{'each' if each else 'group'}-{time.monotonic_ns()}.jsonl"
    proc, endpoint = _start_collector(path, each)
    try:
        rate = asyncio.run(_drive(lambda: ZmqJournalWriter(endpoint), config))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    stored = len(scan_journal(path).entries)
    if stored != config.writers * config.per_writer:
        raise SystemExit(f"bench: error: the collector stored {stored} records, not all")
    return rate


class _Shared:
    """All writers share one file journal, as cluster_runner's tasks would."""

    def __init__(self, journal: FileJournalWriter) -> None:
        self.journal = journal

    async def write(self, test_result: PerfTestResult) -> None:
        await self.journal.write(test_result)

    async def close(self) -> None:
        pass


def _bench_file(tmp: Path, config: BenchConfig) -> float:
    shared = FileJournalWriter(tmp / f"local-{time.monotonic_ns()}.jsonl")
    rate = asyncio.run(_drive(lambda: _Shared(shared), config))
    asyncio.run(shared.close())
    return rate


def run_bench(config: BenchConfig) -> int:
    runs: dict[str, list[float]] = {GROUP: [], EACH: [], IN_PROCESS: []}
    if config.dir is not None:
        config.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=config.dir) as tmp:
        for _ in range(config.repeat):  # interleaved rounds
            runs[GROUP].append(_bench_collector(Path(tmp), config, False))
            runs[EACH].append(_bench_collector(Path(tmp), config, True))
            runs[IN_PROCESS].append(_bench_file(Path(tmp), config))
    figures = {label: statistics.median(rates) for label, rates in runs.items()}
    print(
        f"journal bench: {config.writers} writers x {config.per_writer} records, "
        f"{config.inflight} in flight per writer, durable records/s "
        f"(median of {config.repeat} interleaved run(s))"
    )
    for label, rate in figures.items():
        print(f"  {label:<36} {rate:>10,.0f}")
    print(f"  group commit / zmq fsync per record:   {figures[GROUP] / figures[EACH]:.1f}x")
    print(f"  group commit / in-process per record:  {figures[GROUP] / figures[IN_PROCESS]:.1f}x")
    if config.json:
        config.json.write_text(json.dumps(bench_record(config, figures), indent=2))
    return 0


def bench_record(config: BenchConfig, figures: dict[str, float]) -> dict[str, object]:
    """The figures plus where and when they were measured, for docs/results/."""
    group = figures[GROUP]
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
            "load_average_1m": round(os.getloadavg()[0], 2),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        },
        "writers": config.writers,
        "records_per_writer": config.per_writer,
        "inflight_per_writer": config.inflight,
        "repeat": config.repeat,
        "records_per_s": {label: round(rate) for label, rate in figures.items()},
        "group_vs_zmq_fsync_per_record": round(group / figures[EACH], 1),
        "group_vs_in_process_per_record": round(group / figures[IN_PROCESS], 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench flags, for this script and for ``zmq_journal.py bench``."""
    parser.add_argument("--writers", type=positive_int, default=WRITERS, help="writers (DEALERs)")
    parser.add_argument(
        "--records", type=positive_int, default=RECORDS, help="records in all, per variant"
    )
    parser.add_argument(
        "--inflight", type=positive_int, default=INFLIGHT, help="concurrent writes per writer"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=REPEAT, help="interleaved rounds; medians shown"
    )
    parser.add_argument(
        "--dir",
        type=output_directory,
        help="where the bench journals go, created if missing " "(unset: TMPDIR)",
    )
    parser.add_argument(
        "--json", type=output_file, help="also write the figures, date and machine here"
    )


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(args.writers, args.records, args.inflight, args.repeat, args.dir, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    config = config_from(parser.parse_args(argv))
    # SIGTERM takes the Ctrl-C path: the collector is stopped and the journals removed.
    return run_interruptible("bench", lambda: run_bench(config), EXITS)


if __name__ == "__main__":
    sys.exit(main())
