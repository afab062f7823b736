"""The durable ZeroMQ journal's command line: collector, read, repair, bench.

    writers (DEALER, connect) --WRITE index,bodies--> collector (ROUTER, bind :5590)
    writers                   <--ACK ids------------- collector, after fsync

The journal lives in layers, one module each:
    journal_record.py     one record and its line: schema (msgspec), encoding, checks
    journal_format.py     the file: scan, recovery, repair, appends, FileJournalWriter
    journal_protocol.py   the wire messages (WRITE, ACK, NACK) and their codec
    journal_collector.py  JournalCollector: ROUTER, group commit, ACK after fsync
    journal_writer.py     ZmqJournalWriter: cluster_runner's AsyncJournalWriterProtocol
    journal_bench.py      group commit against fsync per record
    zmq_journal.py        this command line

Without --keys the collector binds loopback only. With --keys DIR (made by
``zmq_node_agent.py keys generate DIR``) it speaks CURVE with DIR/agent.key_secret, and admits
only the writer keys in DIR/authorized_clients/. Run:

    python 03-cluster-runner-simulation/zmq_journal.py collector --path J.jsonl [--port 5590]
    python 03-cluster-runner-simulation/zmq_journal.py collector --path J.jsonl \\
        --bind 0.0.0.0 --keys /etc/cluster-keys          # writers: ZmqJournalWriter(..., keys_dir=)
    python 03-cluster-runner-simulation/zmq_journal.py read J.jsonl --format table
    python 03-cluster-runner-simulation/zmq_journal.py repair J.jsonl
    python 03-cluster-runner-simulation/zmq_journal.py bench --writers 16 --records 20000

Exit codes: 0 done; 1 cannot bind; 2 bad arguments, bad keys, or an unusable journal path;
3 the journal is corrupt (nothing was changed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import zmq

from cluster_patterns import defaults
from cluster_patterns.cli_args import bind_port, run_interruptible
from cluster_patterns.curve import KeyFileError
from cluster_patterns.transport import is_loopback
from cluster_runner_simulation import journal_bench
from cluster_runner_simulation.journal_collector import CollectorConfig, JournalCollector
from cluster_runner_simulation.journal_format import (
    FileJournalWriter,
    JournalCorruption,
    JournalFileError,
    repair_journal,
    scan_journal,
)
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.protocols import AsyncJournalWriterProtocol, JournalError

COLUMNS = ("record_id", "schedule", "test", "nodes", "exit_status", "busbw", "result_line")
FORMATS = ("jsonl", "csv", "table")


def journal_failure(command: str, error: JournalError | str) -> int:
    """One line on stderr; the exit code: 3 for a corrupt journal, 2 for an unusable path."""
    print(f"{command}: error: {error}", file=sys.stderr)
    return 3 if isinstance(error, JournalCorruption) else 2


def existing(path: Path) -> Path:
    """``path``, if there is a journal there (an empty journal is not made up for a typo)."""
    if not path.exists():
        raise JournalFileError(f"{path}: no such journal", path)
    return path


# --- collector --------------------------------------------------------------------------------


def collector_config(args: argparse.Namespace) -> CollectorConfig:
    return CollectorConfig(args.path, args.bind, args.port, not args.fsync_each, args.keys)


def run_collector(config: CollectorConfig) -> int:
    try:
        collector = JournalCollector(config)
    except JournalError as exc:
        return journal_failure("collector", exc)
    except KeyFileError as exc:
        return journal_failure("collector", str(exc))
    except zmq.ZMQError as exc:
        print(f"collector: error: cannot bind {config.endpoint}: {exc}", file=sys.stderr)
        return 1
    recovery = collector.file.recovery
    if recovery.torn_bytes:
        print(
            f"collector: cut {recovery.torn_bytes} bytes of a torn last line "
            f"({recovery.torn_reason})"
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        collector.stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    mode = "group commit" if config.group_commit else "fsync per record"
    mode += ", CURVE" if config.keys_dir else ", no encryption: loopback only"
    print(
        f"collector: {recovery.records} records in {config.path}; "
        f"listening on {collector.endpoint} ({mode})",
        flush=True,
    )
    try:
        collector.serve()
        if collector.failed is not None:
            return journal_failure("collector", collector.failed)
    finally:
        print(
            f"collector: stored {collector.stored}, duplicates {collector.duplicates}, "
            f"fsyncs {collector.commits}, bad messages {collector.bad.count}, "
            f"unexpected errors {collector.errors}",
            flush=True,
        )
        collector.close()
    return 0


# --- read -------------------------------------------------------------------------------------


def _row(body: dict[str, object]) -> list[str]:
    nodes = body.get("nodes")
    metrics = body.get("metrics")
    busbw = metrics.get("busbw_gbps", "") if isinstance(metrics, dict) else ""
    return [
        str(body.get("record_id", "")),
        str(body.get("schedule", "")),
        str(body.get("test", "")),
        " ".join(str(n) for n in nodes) if isinstance(nodes, list) else "",
        str(body.get("exit_status", "")),
        str(busbw),
        str(body.get("result_line", "")).strip(),
    ]


def run_read(path: Path, output_format: str) -> int:
    try:
        scan = scan_journal(existing(path))
    except JournalError as exc:
        return journal_failure("read", exc)
    bodies = [e.body for e in scan.entries]
    if output_format == "jsonl":
        for body in bodies:
            print(json.dumps(body, sort_keys=True))
    elif output_format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(COLUMNS)
        writer.writerows(_row(b) for b in bodies)
    else:
        rows = [list(COLUMNS), *(_row(b) for b in bodies)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
        for row in rows:
            cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
            print("  ".join(cells))
    if scan.torn_bytes:
        print(f"read: warning: torn last line ignored ({scan.torn_reason})", file=sys.stderr)
    return 0


# --- repair -----------------------------------------------------------------------------------


def run_repair(path: Path) -> int:
    """Keep the valid records before the first bad line; move the rest to a fsynced copy."""
    try:
        report = repair_journal(existing(path))
    except JournalError as exc:
        return journal_failure("repair", exc)
    for line in report.report(path):
        print(f"repair: {line}")
    return 0


# --- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        description="Durable ZeroMQ journal: collector, reader, repair, bench",
        formatter_class=formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    col = sub.add_parser(
        "collector", help="bind a ROUTER and write the journal", formatter_class=formatter
    )
    col.add_argument(
        "--path", type=Path, required=True, help="journal file (JSONL), created if missing"
    )
    col.add_argument(
        "--bind", default=defaults.LOOPBACK, help="address to bind (not loopback: needs --keys)"
    )
    col.add_argument(
        "--port", type=bind_port, default=defaults.JOURNAL_PORT, help="TCP port; 0: any free one"
    )
    col.add_argument("--fsync-each", action="store_true", help="fsync per record (baseline)")
    col.add_argument(
        "--keys", type=Path, help="CURVE keys dir ('zmq_node_agent.py keys generate DIR')"
    )
    read = sub.add_parser("read", help="print or export a journal", formatter_class=formatter)
    read.add_argument("path", type=Path, help="journal file (JSONL)")
    read.add_argument("--format", choices=FORMATS, default="table", help="output format")
    repair = sub.add_parser(
        "repair",
        help="keep the valid records, move the damaged rest to PATH.corrupt-<UTC time>",
        formatter_class=formatter,
    )
    repair.add_argument("path", type=Path, help="journal file (JSONL) that the collector refused")
    bench = sub.add_parser(
        "bench", help="group commit vs fsync per record, in one run", formatter_class=formatter
    )
    journal_bench.add_arguments(bench)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "collector" and not args.keys and not is_loopback(args.bind):
        parser.error(f"--bind {args.bind} is not loopback: writers must be authenticated (--keys)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    commands: dict[str, Callable[[], int]] = {
        "collector": lambda: run_collector(collector_config(args)),
        "read": lambda: run_read(args.path, args.format),
        "repair": lambda: run_repair(args.path),
        "bench": lambda: journal_bench.run_bench(journal_bench.config_from(args)),
    }
    # SIGTERM goes the Ctrl-C way (the collector installs its own stop handler over it);
    # an OSError none of the commands expected is one line and exit 2, as in the bench.
    return run_interruptible(args.command, commands[args.command], journal_bench.EXITS)


def _satisfies_protocol(
    zmq_writer: ZmqJournalWriter, file_writer: FileJournalWriter
) -> tuple[AsyncJournalWriterProtocol, AsyncJournalWriterProtocol]:
    """Never called: mypy proves here that both journals are AsyncJournalWriterProtocols."""
    return zmq_writer, file_writer


if __name__ == "__main__":
    sys.exit(main())
