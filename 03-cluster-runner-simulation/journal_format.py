"""The journal file: scanning, recovery, repair, appends, and the in-process writer.

Nothing here touches the network. The collector (``journal_collector.py``) and
``FileJournalWriter`` below (the in-process baseline, shaped like cluster_runner's
``AsyncPerfTestJournalFileWriter``) both append to a journal through ``AppendOnlyFile``, and
both recover it the same way when they open it. What one line holds and how it is checked is
``journal_record.py``.

Recovery (the rules live in ``cluster_patterns.line_journal``): only an unterminated last line
is a torn append and is cut; any complete line that fails its check, or repeats a record id,
is corruption: ``JournalCorruption`` names its line and byte offset, nothing is modified,
and ``repair_journal`` (``zmq_journal.py repair PATH``) moves the damaged part aside.

Read a journal:  python 03-cluster-runner-simulation/zmq_journal.py read J.jsonl --format table
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cluster_patterns.file_io import fsync_directory
from cluster_patterns.line_journal import (
    AppendFailed,
    Appender,
    BadLine,
    Repair,
    lock_journal,
    recover_lines,
    repair_lines,
    scan_lines,
)
from cluster_runner_simulation.journal_record import (
    MAX_LINE_BYTES,
    JournalEntry,
    RecordBody,
    checked_line,
    decode_record,
    encode_record,
)
from cluster_runner_simulation.protocols import JournalError, PerfTestResult

T = TypeVar("T")


class JournalCorruption(JournalError):
    """A complete line fails its check: the journal needs a human (``repair``)."""

    def __init__(self, path: Path, line_no: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: line {line_no} (byte offset {offset}): {reason}. The journal is corrupt "
            f"and was not changed; 'zmq_journal.py repair {path}' keeps the records before "
            f"that line and moves the rest to a copy"
        )
        self.path = path
        self.line_no = line_no
        self.offset = offset
        self.reason = reason

    @classmethod
    def at(cls, path: Path, bad: BadLine) -> JournalCorruption:
        return cls(path, bad.line_no, bad.offset, bad.reason)


class JournalFileError(JournalError):
    """The journal file cannot be used: a directory, read-only, full, locked, missing..."""

    def __init__(self, message: str, path: Path, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    @classmethod
    def from_os_error(cls, path: Path, action: str, error: OSError) -> JournalFileError:
        return cls(f"{path}: {action}: {error.strerror or error}", path, error.errno)


def _checker(keep: Callable[[str, RecordBody], T]) -> Callable[[bytes], T]:
    """``decode_line`` plus the journal-wide rule: a record id appears once; ``keep`` says
    what a scan holds on to of each line (opening a journal keeps only its id)."""
    seen: set[str] = set()

    def check(line: bytes) -> T:
        record_id, record = decode_record(line)
        if record_id in seen:
            raise ValueError(f"duplicate record id {repr(record_id)[:80]}")
        seen.add(record_id)
        return keep(record_id, record)

    return check


def _record_id(record_id: str, record: RecordBody) -> str:
    return record_id


# --- Scanning, recovery and repair ------------------------------------------------------------


@dataclass
class JournalScan:
    """What a journal holds: its valid records, and the size of a torn tail if any."""

    path: Path
    entries: list[JournalEntry] = field(default_factory=list)
    valid_bytes: int = 0
    torn_bytes: int = 0
    torn_reason: str = ""

    @property
    def record_ids(self) -> list[str]:
        return [e.record_id for e in self.entries]


def _torn_reason(line_no: int, torn_bytes: int) -> str:
    return f"line {line_no}: {torn_bytes} bytes without a newline (torn append)"


def scan_journal(path: Path) -> JournalScan:
    """Read and verify ``path`` without changing it (a missing file is an empty journal).

    Raises ``JournalCorruption`` for any complete line that fails its check, and
    ``JournalFileError`` if the file cannot be read. An unterminated last line is reported
    through ``torn_bytes`` / ``torn_reason``.
    """
    try:
        with path.open("rb") as handle:
            lines = scan_lines(handle, _checker(JournalEntry.of), MAX_LINE_BYTES)
    except FileNotFoundError:
        return JournalScan(path)
    except OSError as exc:
        raise JournalFileError.from_os_error(path, "cannot read the journal", exc) from None
    if lines.bad is not None:
        raise JournalCorruption.at(path, lines.bad)
    entries = [JournalEntry(n, e.record_id, e.body) for n, e in enumerate(lines.items, 1)]
    scan = JournalScan(path, entries, lines.valid_bytes, lines.torn_bytes)
    if lines.torn_bytes:
        scan.torn_reason = _torn_reason(len(entries) + 1, lines.torn_bytes)
    return scan


def recover_journal(path: Path) -> JournalScan:
    """Open ``path`` as an appender would: cut a torn last line durably; corruption raises."""
    if not path.exists():
        return JournalScan(path)
    journal = AppendOnlyFile(path)
    journal.close()
    scan = scan_journal(path)
    scan.torn_bytes, scan.torn_reason = journal.recovery.torn_bytes, journal.recovery.torn_reason
    return scan


def repair_journal(path: Path, now: float | None = None) -> Repair:
    """Keep the valid records before the first bad line; move the rest to a fsynced copy."""
    try:
        return repair_lines(path, _checker(JournalEntry.of), MAX_LINE_BYTES, now)
    except OSError as exc:
        raise JournalFileError.from_os_error(path, "cannot repair the journal", exc) from None


def iter_results(path: Path) -> Iterator[PerfTestResult]:
    """The reader API: every durable result in ``path``, in journal order."""
    for entry in scan_journal(path).entries:
        yield entry.result()


# --- Appending --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What opening a journal found: its records, and the torn tail it cut (if any)."""

    records: int
    torn_bytes: int
    torn_reason: str


class AppendOnlyFile:
    """An O_APPEND file descriptor (locked, recovered) plus the record ids it already holds.

    Every ``OSError`` becomes ``JournalFileError``. A failed append is cut back to where it
    started, so a full disk leaves no partial line for a later record to be glued to.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        existed = path.exists()
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            lock_journal(self.fd, path)
            ids = recover_lines(self.fd, _checker(_record_id), MAX_LINE_BYTES)
            if not existed:
                # The new file's directory entry must be durable too, or an fsync'd record
                # could vanish with the file after a power loss.
                fsync_directory(path.parent)
        except OSError as exc:
            self.close()
            raise JournalFileError.from_os_error(path, "cannot open the journal", exc) from None
        if ids.bad is not None:
            self.close()
            raise JournalCorruption.at(path, ids.bad)
        self.ids: set[str] = set(ids.items)
        self._appender = Appender(self.fd, ids.valid_bytes)
        reason = _torn_reason(len(ids.items) + 1, ids.torn_bytes) if ids.torn_bytes else ""
        self.recovery = Recovery(len(ids.items), ids.torn_bytes, reason)

    def append(self, data: bytes, *, sync: bool = True) -> None:
        try:
            self._appender.append(data, sync=sync)
        except AppendFailed as failed:
            if failed.repeated:  # an earlier failure could not be cut back
                raise JournalError(f"{self.path}: {failed}") from None
            raise JournalFileError.from_os_error(self.path, "cannot append", failed.error) from None

    @property
    def size(self) -> int:
        return self._appender.size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileJournalWriter:
    """An in-process ``AsyncJournalWriterProtocol``: fsync per record, like the original.

    This is the baseline the ZeroMQ collector's group commit is measured against,
    and the journal the SSH context uses when no collector runs. A lock serialises
    appends; the blocking write+fsync runs in a worker thread so the event loop
    keeps serving other tasks. Every failure is a ``JournalError`` that says why.
    """

    def __init__(self, path: Path | str) -> None:
        self._file = AppendOnlyFile(Path(path))
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._file.path

    async def write(self, test_result: PerfTestResult) -> None:
        record_id = test_result.record_id
        line = checked_line(record_id, encode_record(test_result))
        async with self._lock:
            if record_id in self._file.ids:
                return
            await asyncio.to_thread(self._file.append, line)
            self._file.ids.add(record_id)

    async def close(self) -> None:
        async with self._lock:
            self._file.close()
