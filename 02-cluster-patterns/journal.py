"""The coordinator's append-only state log (``--state-dir DIR``): durable submissions and results.

The coordinator writes one JSON line per accepted task and one per recorded outcome,
buffers them for one turn of its loop, then ``flush()`` writes and fsyncs them together
(group commit) BEFORE it sends the ACCEPTED / COMPLETED messages of that turn. So:

  * a task the client saw ACCEPTED survives a SIGKILL of the coordinator;
  * an outcome the client saw COMPLETED is in the log, and a restarted coordinator answers
    a re-submission of that task id with the logged outcome.

Recovery follows the rules of every journal in this repository (line_journal.py, shared
with 03's journal): only an unterminated last line is a torn append, and opening the log cuts
exactly those bytes and says how many; a complete line that fails its check is corruption,
wherever it is: opening raises ``JournalCorruption`` naming the line and byte offset, and
touches nothing (the coordinator exits 3). ``repair`` keeps the valid lines before the first
bad one and moves the rest to ``journal.jsonl.corrupt-<UTC time>``, fsynced before the log is
cut. One coordinator at a time: the log is locked while open.

File: DIR/journal.jsonl, lines like
    {"op":"submit","task_id":"...","kind":"echo","ms":0,"payload":"","client":"client:c1"}
    {"op":"result","task_id":"...","ok":true,"output":"","error":"","tries":1,...}

Check or repair one (exit 0 clean or repaired, 2 unusable directory, 3 corrupt):
    python 02-cluster-patterns/journal.py check /tmp/state
    python 02-cluster-patterns/journal.py repair /tmp/state
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Final, Protocol, Union

import msgspec
from msgspec import Meta

from cluster_patterns.cli_args import make_parser
from cluster_patterns.line_journal import AppendFailed, Appender, BadLine, LineScan
from cluster_patterns.line_journal import lock_journal, recover_lines, repair_lines, scan_lines
from cluster_patterns.protocol import TaskOutcome, TaskSpec

JOURNAL_NAME: Final = "journal.jsonl"
# A line holds one task or one outcome: ids, a 1,024-character payload or output and a
# 1,024-character error, at most 6 bytes per character once escaped. Far below this.
MAX_LINE_BYTES: Final = 64 << 10
CORRUPT_EXIT: Final = 3
UNUSABLE_EXIT: Final = 2


class SubmitEntry(TaskSpec, tag_field="op", tag="submit"):
    """An accepted task and the routing id of the client that submitted it (as text)."""

    client: Annotated[str, Meta(max_length=255)] = ""


class ResultEntry(TaskOutcome, tag_field="op", tag="result"):
    """A recorded outcome."""


Entry = Union[SubmitEntry, ResultEntry]
_DECODER: Final = msgspec.json.Decoder(Entry)
_ENCODER: Final = msgspec.json.Encoder()


class Journal(Protocol):
    """Where accepted tasks and recorded outcomes go before anyone is told."""

    def submitted(self, spec: TaskSpec, client: bytes) -> None: ...

    def recorded(self, outcome: TaskOutcome) -> None: ...


class NullJournal:
    """No persistence: a restarted coordinator relies on clients re-submitting."""

    def submitted(self, spec: TaskSpec, client: bytes) -> None:
        pass

    def recorded(self, outcome: TaskOutcome) -> None:
        pass


class StateLogError(Exception):
    """The state directory cannot be used: not a directory, read-only, full, locked."""


class JournalCorruption(Exception):
    """A complete line of the log fails its check: a human decides (``repair``)."""

    def __init__(self, path: Path, bad: BadLine) -> None:
        super().__init__(
            f"{path}: {bad}. The state log is corrupt and was not changed; "
            f"'journal.py repair {path.parent}' keeps the lines before that one and moves "
            "the rest to a copy"
        )
        self.bad = bad


def check_line(line: bytes) -> Entry:
    """One line (without its newline) as an entry; ValueError saying what is wrong."""
    try:
        return _DECODER.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)[:200]) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _line(entry: Entry) -> bytes:
    return _ENCODER.encode(entry) + b"\n"


class FileJournal:
    """Append-only, group-committed, locked log of submissions and outcomes.

    Opening it recovers the log (see the module docstring): ``entries`` is what it held,
    ``torn_bytes`` how much of a torn last line was cut.
    """

    def __init__(self, state_dir: Path, fsync: bool = True) -> None:
        self.path = state_dir / JOURNAL_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise StateLogError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            lock_journal(self._fd, self.path)
            scan = recover_lines(self._fd, check_line, MAX_LINE_BYTES)
        except OSError as exc:
            os.close(self._fd)
            raise StateLogError(f"{self.path}: {exc.strerror or exc}") from None
        if scan.bad is not None:
            os.close(self._fd)
            raise JournalCorruption(self.path, scan.bad)
        self.entries: list[Entry] = scan.items
        self.torn_bytes = scan.torn_bytes
        self._appender = Appender(self._fd, scan.valid_bytes)
        self._buffer: list[bytes] = []
        self._fsync = fsync
        self.commits = 0

    def submitted(self, spec: TaskSpec, client: bytes) -> None:
        client_text = client.decode("utf-8", "replace")
        entry = SubmitEntry(spec.task_id, spec.kind, spec.ms, spec.payload, client_text)
        self._buffer.append(_line(entry))

    def recorded(self, outcome: TaskOutcome) -> None:
        self._buffer.append(_line(ResultEntry(*msgspec.structs.astuple(outcome))))

    def flush(self) -> None:
        """Write everything buffered this turn with one write and one fsync."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            self._appender.append(data, sync=self._fsync)
        except AppendFailed as failed:
            raise StateLogError(f"{self.path}: {failed}") from None
        self.commits += 1

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self._fd)


def replay(state_dir: Path | str) -> Iterator[Entry]:
    """Every entry of the log, read-only: a torn tail is left alone, corruption raises."""
    path = Path(state_dir) / JOURNAL_NAME
    if not path.exists():
        return iter(())
    with path.open("rb") as handle:
        scan: LineScan[Entry] = scan_lines(handle, check_line, MAX_LINE_BYTES)
    if scan.bad is not None:
        raise JournalCorruption(path, scan.bad)
    return iter(scan.items)


# --- CLI: check and repair --------------------------------------------------------------------


def run_check(path: Path) -> int:
    try:
        entries = list(replay(path.parent))
    except JournalCorruption as exc:
        print(f"check: error: {exc}", file=sys.stderr)
        return CORRUPT_EXIT
    print(f"check: {path}: {len(entries)} entries, all valid")
    return 0


def run_repair(path: Path) -> int:
    for line in repair_lines(path, check_line, MAX_LINE_BYTES).report(path, "entries"):
        print(f"repair: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(description="Check or repair a coordinator's state log (--state-dir).")
    parser.add_argument("command", choices=["check", "repair"], help="what to do")
    parser.add_argument("state_dir", type=Path, help=f"the --state-dir holding {JOURNAL_NAME}")
    args = parser.parse_args(argv)
    path = args.state_dir / JOURNAL_NAME
    if not path.is_file():
        print(f"{args.command}: error: {path}: no such state log", file=sys.stderr)
        return UNUSABLE_EXIT
    try:
        return run_check(path) if args.command == "check" else run_repair(path)
    except OSError as exc:
        print(f"{args.command}: error: {path}: {exc.strerror or exc}", file=sys.stderr)
        return UNUSABLE_EXIT


if __name__ == "__main__":
    sys.exit(main())
