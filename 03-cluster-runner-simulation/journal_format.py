"""The journal's on-disk format: one checksummed JSON record per line, recovery, reading.

Nothing here touches the network. ``zmq_journal.py`` (the collector) and
``FileJournalWriter`` below (the in-process baseline, shaped like cluster_runner's
``AsyncPerfTestJournalFileWriter``) both write this format, and both recover a
journal the same way when they open it.

Line layout (UTF-8, ASCII-only JSON, ``\\n`` terminated, ``body`` always last):

    {"v":1,"id":"<record id>","len":<bytes of body>,"crc":"<crc32 of body, 8 hex>","body":{...}}

``body`` is ``PerfTestResult.to_record()`` serialised canonically (sorted keys, no
spaces). Its exact bytes are the last ``len`` bytes before the closing brace, so the
checksum is verified over the bytes as written, not over a re-serialisation.

Recovery rules (``recover_journal``):
  * the LAST line may be torn (a crash mid-append): if it has no newline, or fails
    its length/checksum/JSON check, it is cut off and everything before it is kept;
  * any OTHER bad line is corruption: ``JournalCorruption`` names its line number and
    nothing is modified, because silently skipping a record would lose data;
  * a record id that appears twice is corruption too (writers never store a duplicate).

Read a journal:  python 03-cluster-runner-simulation/zmq_journal.py read J.jsonl --format table
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_runner_simulation.protocols import JournalError, PerfTestResult

FORMAT_VERSION = 1
BODY_KEY = b',"body":'
MAX_LINE_BYTES = 1 << 20  # a perf-test result is tiny; a megabyte line means garbage


class JournalCorruption(JournalError):
    """A record before the last line is damaged; the journal needs a human."""

    def __init__(self, path: Path, line_no: int, reason: str) -> None:
        super().__init__(f"{path}: line {line_no}: {reason} (corruption before the last line)")
        self.path = path
        self.line_no = line_no
        self.reason = reason


# --- Encoding ---------------------------------------------------------------------------------


# One encoder for every record: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_body(record: Mapping[str, Any]) -> bytes:
    """The bytes a record body is stored as: sorted keys, compact, ASCII only."""
    return _CANONICAL.encode(record).encode()


def encode_line(record_id: str, body: bytes) -> bytes:
    """One journal line for ``body`` (already canonical JSON bytes without newlines)."""
    if b"\n" in body or b"\r" in body:
        raise ValueError("a record body must not contain line breaks")
    quoted_id = json.dumps(record_id, ensure_ascii=True)
    head = (
        f'{{"v":{FORMAT_VERSION},"id":{quoted_id},"len":{len(body)},"crc":"{zlib.crc32(body):08x}"'
    )
    return head.encode() + BODY_KEY + body + b"}\n"


@dataclass(frozen=True)
class JournalEntry:
    line_no: int
    record_id: str
    body: dict[str, Any]

    def result(self) -> PerfTestResult:
        return PerfTestResult.from_record(self.body)


def decode_line(line: bytes) -> JournalEntry:
    """Parse and verify one line (without its newline); ``ValueError`` says what is wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line is {len(line)} bytes, over the {MAX_LINE_BYTES} limit")
    try:
        outer = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(outer, dict):
        raise ValueError("not a JSON object")
    if outer.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown format version {outer.get('v')!r}")
    record_id, length, crc, body = (outer.get(k) for k in ("id", "len", "crc", "body"))
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("missing record id")
    if not isinstance(length, int) or not isinstance(crc, str) or not isinstance(body, dict):
        raise ValueError("missing len, crc or body")
    raw = line[-(length + 1) : -1]
    if len(raw) != length or line[-(length + 1 + len(BODY_KEY)) : -(length + 1)] != BODY_KEY:
        raise ValueError(f"body length does not match len={length}")
    if f"{zlib.crc32(raw):08x}" != crc:
        raise ValueError(f"checksum mismatch (stored {crc}, computed {zlib.crc32(raw):08x})")
    if body.get("record_id") != record_id:
        raise ValueError("record id of the line and of its body differ")
    return JournalEntry(0, record_id, body)


# --- Scanning and recovery --------------------------------------------------------------------


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


def scan_journal(path: Path) -> JournalScan:
    """Read and verify ``path`` without changing it.

    Raises ``JournalCorruption`` for a bad line before the last one. A bad last
    line is reported through ``torn_bytes`` / ``torn_reason``.
    """
    scan = JournalScan(path)
    if not path.exists():
        return scan
    data = path.read_bytes()
    lines = data.split(b"\n")
    # ``split`` leaves b"" after a final newline; anything else there is an unterminated tail.
    tail = lines.pop()
    seen: set[str] = set()
    offset = 0
    for index, line in enumerate(lines):
        is_last = index == len(lines) - 1 and not tail
        try:
            entry = decode_line(line)
            if entry.record_id in seen:
                raise ValueError(f"duplicate record id {entry.record_id!r}")
        except ValueError as exc:
            if is_last:
                scan.torn_bytes = len(data) - offset
                scan.torn_reason = f"line {index + 1}: {exc}"
                return scan
            raise JournalCorruption(path, index + 1, str(exc)) from None
        seen.add(entry.record_id)
        scan.entries.append(JournalEntry(index + 1, entry.record_id, entry.body))
        offset += len(line) + 1
    scan.valid_bytes = offset
    if tail:
        scan.torn_bytes = len(tail)
        scan.torn_reason = f"line {len(lines) + 1}: no newline (torn append)"
    return scan


def recover_journal(path: Path) -> JournalScan:
    """Scan ``path`` and cut off a torn last line, durably; corruption raises."""
    scan = scan_journal(path)
    if scan.torn_bytes:
        with path.open("r+b") as handle:
            handle.truncate(scan.valid_bytes)
            handle.flush()
            os.fsync(handle.fileno())
    return scan


def iter_results(path: Path) -> Iterator[PerfTestResult]:
    """The reader API: every durable result in ``path``, in journal order."""
    for entry in scan_journal(path).entries:
        yield entry.result()


# --- Appending --------------------------------------------------------------------------------


class AppendOnlyFile:
    """An O_APPEND file descriptor plus the set of record ids it already holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        self.recovery = recover_journal(path)
        self.ids: set[str] = set(self.recovery.record_ids)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            # The new file's directory entry must be durable too, or an fsync'd record
            # could vanish with the file after a power loss.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def append(self, data: bytes, *, sync: bool = True) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        if sync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileJournalWriter:
    """An in-process ``AsyncJournalWriterProtocol``: fsync per record, like the original.

    This is the baseline the ZeroMQ collector's group commit is measured against,
    and the journal the SSH context uses when no collector runs. A lock serialises
    appends; the blocking write+fsync runs in a worker thread so the event loop
    keeps serving other tasks.
    """

    def __init__(self, path: Path | str) -> None:
        self._file = AppendOnlyFile(Path(path))
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._file.path

    async def write(self, test_result: PerfTestResult) -> None:
        record_id = test_result.record_id
        line = encode_line(record_id, canonical_body(test_result.to_record()))
        async with self._lock:
            if record_id in self._file.ids:
                return
            try:
                await asyncio.to_thread(self._file.append, line)
            except OSError as exc:
                raise JournalError(f"{self.path}: cannot append {record_id!r}: {exc}") from exc
            self._file.ids.add(record_id)

    async def close(self) -> None:
        async with self._lock:
            self._file.close()
