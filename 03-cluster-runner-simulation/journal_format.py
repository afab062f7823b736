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

Every line is checked the same way wherever it comes from (``decode_line``): at most
``MAX_LINE_BYTES``, ASCII JSON without NaN or Infinity, integers of at most
``MAX_INT_DIGITS`` digits, nesting of at most ``MAX_DEPTH`` levels, no lone surrogates,
the length and checksum, and a body of the ``PerfTestResult`` record's fields and types.
The writers and the collector run the same check before they acknowledge a record
(``checked_line``), so an acknowledged record can always be read back.

Recovery (the rules live in ``cluster_patterns.line_journal``): only an unterminated last line is a
torn append and is cut; any complete line that fails its check, or repeats a record id,
is corruption: ``JournalCorruption`` names its line and byte offset, nothing is modified,
and ``repair_journal`` (``zmq_journal.py repair PATH``) moves the damaged part aside.

Read a journal:  python 03-cluster-runner-simulation/zmq_journal.py read J.jsonl --format table
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_patterns.line_journal import (
    BadLine,
    Repair,
    fsync_directory,
    lock_journal,
    recover_lines,
    repair_lines,
    scan_lines,
)
from cluster_runner_simulation.protocols import JournalError, PerfTestResult

FORMAT_VERSION = 1
BODY_KEY = b',"body":'
MAX_LINE_BYTES = 1 << 20  # a perf-test result is tiny; a megabyte line means garbage
MAX_ID_CHARS = 4096
MAX_DEPTH = 32  # nesting levels of a line, its own object included; deeper is an attack
MAX_INT_DIGITS = 20  # enough for any 64-bit integer; longer ones are refused unparsed
MAX_EXIT_STATUS = 1 << 31


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


class RecordRejected(JournalError):
    """A record no journal line could hold; ``reason`` says why (retrying will not help)."""

    def __init__(self, record_id: object, reason: str) -> None:
        shown = repr(record_id)
        shown = shown if len(shown) <= 64 else shown[:60] + "...'"
        super().__init__(f"record {shown} rejected: {reason}")
        self.reason = reason


# --- Encoding ---------------------------------------------------------------------------------


# One encoder for every record: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_STRICT_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


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


def encode_record(result: PerfTestResult) -> bytes:
    """The canonical body of ``result``; ``RecordRejected`` if no journal line could hold it.

    The writers call this before anything is sent or stored, so a record that is too big,
    not finite or badly named fails at once with the reason instead of being acknowledged.
    """
    record_id = result.record_id
    try:
        check_record_id(record_id)
        body = _STRICT_CANONICAL.encode(result.to_record()).encode()
    except RecursionError:
        raise RecordRejected(record_id, f"nested deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        if "Out of range float" in reason:
            reason = "a number is NaN or infinite, which JSON cannot carry (not finite)"
        raise RecordRejected(record_id, reason) from None
    if len(body) + 6 * len(record_id) + 100 > MAX_LINE_BYTES:  # near the limit: measure
        size = len(encode_line(record_id, body)) - 1
        if size > MAX_LINE_BYTES:
            reason = f"its journal line would be {size} bytes, over the {MAX_LINE_BYTES}-byte limit"
            raise RecordRejected(record_id, reason)
    return body


def checked_line(record_id: str, body: bytes) -> bytes:
    """The journal line for a record, checked as every later start will check it.

    This is the collector's and ``FileJournalWriter``'s boundary. It runs the checks of
    ``decode_line`` on the body (the wrapper around it is the one ``encode_line`` has just
    built), so whatever passes here, every later start accepts. ``RecordRejected`` says why not.
    """
    try:
        check_record_id(record_id)
        if len(body) > MAX_LINE_BYTES:
            raise ValueError(f"the body is {len(body)} bytes, over the {MAX_LINE_BYTES}-byte limit")
        line = encode_line(record_id, body)
        if len(line) - 1 > MAX_LINE_BYTES:
            raise ValueError(f"line is {len(line) - 1} bytes, over the {MAX_LINE_BYTES}-byte limit")
        check_record_body(strict_loads(body, levels_above=1), record_id)
    except ValueError as exc:
        raise RecordRejected(record_id, str(exc)) from None
    return line


# --- Decoding and checking --------------------------------------------------------------------


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:24]} is not a finite number")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


# The hooks see every number's text before it is converted: a record holds a handful, so they
# cost well under a microsecond, and a 5,000-digit integer is refused without being parsed.
_STRICT_JSON = json.JSONDecoder(
    parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def strict_loads(data: bytes, levels_above: int = 0) -> Any:
    """Parse ASCII JSON that any reader can load again: ``ValueError`` says what is wrong.

    ``levels_above``: the nesting levels that the journal line adds around ``data``.
    """
    if not data.isascii():
        raise ValueError("not ASCII JSON (other characters must be \\u escapes; invalid UTF-8?)")
    too_deep = f"nested deeper than {MAX_DEPTH} levels (the journal line included)"
    try:
        value = _STRICT_JSON.decode(data.decode("ascii"))
    except RecursionError:
        raise ValueError(too_deep) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    max_depth = MAX_DEPTH - levels_above
    if data.count(b"{") + data.count(b"[") > max_depth and _depth(value) > max_depth:
        raise ValueError(too_deep)
    if _SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate, which is not valid Unicode")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (only called for bracket-rich data)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_record_id(record_id: object) -> str:
    """A record id is 1-MAX_ID_CHARS characters of valid Unicode without a line break."""
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("the record id is missing or empty")
    if len(record_id) > MAX_ID_CHARS:
        raise ValueError(f"the record id is {len(record_id)} characters (at most {MAX_ID_CHARS})")
    if "\n" in record_id or "\r" in record_id:
        raise ValueError("the record id contains a line break")
    try:
        record_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "the record id holds a lone surrogate, which is not valid Unicode"
        ) from None
    return record_id


_TEXT_FIELDS = ("schedule", "test", "result_line")
_TIME_FIELDS = ("started_at", "finished_at")
_REQUIRED_FIELDS = frozenset({"record_id", "nodes", "exit_status", *_TEXT_FIELDS, *_TIME_FIELDS})
_ALL_FIELDS = _REQUIRED_FIELDS | {"metrics", "extra"}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record_body(body: object, record_id: str) -> dict[str, Any]:
    """The body is a ``PerfTestResult.to_record()``: its fields, with their types."""
    if not isinstance(body, dict):
        raise ValueError("the body is not a JSON object")
    if body.get("record_id") != record_id:
        raise ValueError("record id of the line and of its body differ")
    if body.keys() != _ALL_FIELDS:  # what to_record() writes; anything else is looked at closely
        if missing := sorted(_REQUIRED_FIELDS - body.keys()):
            raise ValueError(f"the body is missing {', '.join(missing)}")
        if unknown := sorted(body.keys() - _ALL_FIELDS):
            raise ValueError(f"the body has unknown fields {', '.join(unknown)[:200]}")
    for name in _TEXT_FIELDS:
        if not isinstance(body[name], str):
            raise ValueError(f"{name} must be a string")
    nodes = body["nodes"]
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ValueError("nodes must be a list of strings")
    status = body["exit_status"]
    if status is not None and not (
        isinstance(status, int) and not isinstance(status, bool) and abs(status) < MAX_EXIT_STATUS
    ):
        raise ValueError(f"exit_status must be null or an integer below {MAX_EXIT_STATUS}")
    for name in _TIME_FIELDS:
        if not _is_number(body[name]):
            raise ValueError(f"{name} must be a number")
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        raise ValueError("metrics must be an object of numbers")
    if not isinstance(body.get("extra", {}), dict):
        raise ValueError("extra must be an object")
    return body


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
        raise ValueError(f"line is {len(line)} bytes, over the {MAX_LINE_BYTES}-byte limit")
    outer = strict_loads(line)
    if not isinstance(outer, dict):
        raise ValueError("not a JSON object")
    if outer.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown format version {repr(outer.get('v'))[:40]}")
    record_id = check_record_id(outer.get("id"))
    length, crc, body = (outer.get(k) for k in ("len", "crc", "body"))
    if not isinstance(length, int) or not isinstance(crc, str):
        raise ValueError("missing len or crc")
    if not isinstance(body, dict):
        raise ValueError("the body is missing or not a JSON object")
    raw = line[-(length + 1) : -1]
    if len(raw) != length or line[-(length + 1 + len(BODY_KEY)) : -(length + 1)] != BODY_KEY:
        raise ValueError(f"body length does not match len={length}")
    if f"{zlib.crc32(raw):08x}" != crc:
        raise ValueError(f"checksum mismatch (stored {crc[:16]}, computed {zlib.crc32(raw):08x})")
    return JournalEntry(0, record_id, check_record_body(body, record_id))


def _entry_checker() -> Callable[[bytes], JournalEntry]:
    """``decode_line`` plus the journal-wide rule: a record id appears once."""
    seen: set[str] = set()

    def check(line: bytes) -> JournalEntry:
        entry = decode_line(line)
        if entry.record_id in seen:
            raise ValueError(f"duplicate record id {repr(entry.record_id)[:80]}")
        seen.add(entry.record_id)
        return entry

    return check


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
            lines = scan_lines(handle, _entry_checker(), MAX_LINE_BYTES)
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
        return repair_lines(path, _entry_checker(), MAX_LINE_BYTES, now)
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
        self._broken = ""
        existed = path.exists()
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            lock_journal(self.fd, path)
            ids = recover_lines(self.fd, _id_checker(), MAX_LINE_BYTES)
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
        self.size = ids.valid_bytes
        reason = _torn_reason(len(ids.items) + 1, ids.torn_bytes) if ids.torn_bytes else ""
        self.recovery = Recovery(len(ids.items), ids.torn_bytes, reason)

    def append(self, data: bytes, *, sync: bool = True) -> None:
        if self._broken:
            raise JournalError(self._broken)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            if sync:
                os.fsync(self.fd)
        except OSError as exc:
            self._undo_partial_append(exc)
            raise JournalFileError.from_os_error(self.path, "cannot append", exc) from None
        self.size += len(data)

    def _undo_partial_append(self, error: OSError) -> None:
        try:
            os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        except OSError as undo:
            self._broken = (
                f"{self.path}: an append failed ({error.strerror}) and could not be cut back "
                f"({undo.strerror}); restart to recover the journal"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _id_checker() -> Callable[[bytes], str]:
    check = _entry_checker()
    return lambda line: check(line).record_id


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
