"""The recovery rules of an append-only line journal, in one place.

A journal is a file of ``\\n``-terminated lines, each written by one append and verified by a
format-specific ``check(line) -> item`` that raises ``ValueError`` saying what is wrong. The
rules below are the same for every such journal, whatever its record format:

  * Only an unterminated last line is a torn append (a crash in the middle of a write):
    ``recover_lines`` cuts exactly those bytes, durably, and reports how many. A torn append is
    shorter than one line, so an unterminated tail longer than ``max_line`` is not one.
  * A complete line that fails its check is corruption, wherever it is, and so is an
    unterminated tail that is too long: the scan names the line number and byte offset, and
    ``recover_lines`` touches nothing. A human decides, with ``repair_lines``.
  * ``repair_lines`` keeps every valid line before the first bad one and moves every byte after
    them to ``PATH.corrupt-<UTC timestamp>``, which is written and fsynced before the journal
    is truncated. Nothing is deleted without a copy.
  * ``Appender`` appends: a write or fsync that fails (a full disk) is cut back, durably, to
    where it began, so no partial line is left for the next record to be glued to. If even
    the cut fails, the journal takes no more appends until it is reopened and recovered.

Every opener takes an exclusive ``flock``, so a second collector, writer or repair on the same
file is refused instead of interleaving its appends. Standard library only: no format, no
network. OS errors are raised as they are, for the caller to word.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from cluster_patterns.file_io import fsync_directory, write_all

T = TypeVar("T")

COPY_CHUNK_BYTES = 1 << 20
CORRUPT_SUFFIX = ".corrupt-"


@dataclass(frozen=True)
class BadLine:
    """The first line that fails its check: where it is and why."""

    line_no: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no} (byte offset {self.offset}): {self.reason}"


@dataclass(frozen=True)
class LineScan(Generic[T]):
    """What a scan found. ``items[i]`` is what ``check`` returned for line ``i + 1``."""

    items: list[T]
    valid_bytes: int  # the valid complete lines before the first bad line or the torn tail
    torn_bytes: int  # an unterminated last line that recovery may cut (0: none)
    bad: BadLine | None  # the first bad line; then torn_bytes is 0 and nothing may be cut


def scan_lines(handle: BinaryIO, check: Callable[[bytes], T], max_line: int) -> LineScan[T]:
    """Read ``handle`` from its current position, line by line, in bounded memory."""
    items: list[T] = []
    offset = 0
    while line := handle.readline(max_line + 1):
        if line.endswith(b"\n"):
            try:
                items.append(check(line[:-1]))
            except ValueError as exc:
                return LineScan(items, offset, 0, BadLine(len(items) + 1, offset, str(exc)))
            offset += len(line)
            continue
        if len(line) <= max_line:  # a short line without a newline can only be the end
            return LineScan(items, offset, len(line), None)
        length, terminated = _measure_rest(handle, len(line))
        reason = (
            f"line is {length - 1} bytes, over the {max_line}-byte limit"
            if terminated
            else f"unterminated last line of {length} bytes is longer than any line "
            f"({max_line} bytes), so it is not a torn append"
        )
        return LineScan(items, offset, 0, BadLine(len(items) + 1, offset, reason))
    return LineScan(items, offset, 0, None)


def _measure_rest(handle: BinaryIO, length: int) -> tuple[int, bool]:
    """Skip to the end of an over-long line: its length (newline included), and whether it ends."""
    while chunk := handle.readline(COPY_CHUNK_BYTES):
        length += len(chunk)
        if chunk.endswith(b"\n"):
            return length, True
    return length, False


def lock_journal(fd: int, path: Path) -> None:
    """An exclusive lock for the life of ``fd``: one appender (or repair) per journal."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BlockingIOError(
            errno.EWOULDBLOCK, "in use by another collector, writer or repair", str(path)
        ) from None


def recover_lines(fd: int, check: Callable[[bytes], T], max_line: int) -> LineScan[T]:
    """Scan the journal open read-write on ``fd``; cut a torn tail durably, and only that."""
    with open(fd, "rb", closefd=False) as handle:
        handle.seek(0)
        scan = scan_lines(handle, check, max_line)
    if scan.bad is None and scan.torn_bytes:
        os.ftruncate(fd, scan.valid_bytes)
        os.fsync(fd)
    return scan


class AppendFailed(Exception):
    """An append did not become durable. ``error`` says why; ``undo_error`` is set when the
    partial line could not be cut back either, and ``repeated`` on every later append refused
    because of that."""

    def __init__(self, error: OSError, undo_error: OSError | None, repeated: bool) -> None:
        super().__init__(error.strerror or str(error))
        self.error, self.undo_error, self.repeated = error, undo_error, repeated

    def __str__(self) -> str:
        if self.undo_error is None:
            return f"cannot append: {self.error.strerror or self.error}"
        return (
            f"an append failed ({self.error.strerror}) and could not be cut back "
            f"({self.undo_error.strerror}); restart to recover the journal"
        )


class Appender:
    """Appends to an ``O_APPEND`` descriptor that holds ``size`` valid bytes (as recovered).
    The caller owns the descriptor and holds its lock, so ``size`` is never re-read."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._broken: AppendFailed | None = None

    # --8<-- [start:append]
    def append(self, data: bytes, *, sync: bool = True) -> None:
        if self._broken is not None:
            broken = self._broken
            raise AppendFailed(broken.error, broken.undo_error, repeated=True)
        try:
            write_all(self.fd, data)
            if sync:
                os.fsync(self.fd)
        except OSError as exc:
            try:  # no half line for the next record, or the next start, to trip on
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
            except OSError as undo:
                self._broken = AppendFailed(exc, undo, repeated=False)
                raise self._broken from None
            raise AppendFailed(exc, None, repeated=False) from None
        self.size += len(data)

    # --8<-- [end:append]


@dataclass(frozen=True)
class Repair:
    """What ``repair_lines`` kept, and what it moved where (``copy_path`` None: nothing)."""

    kept_records: int
    kept_bytes: int
    moved_bytes: int
    moved_lines: int  # lines in the copy, an unterminated last one included
    moved_valid: int  # of those, lines that pass the check on their own: records to look at
    copy_path: Path | None
    bad: BadLine | None
    torn_bytes: int

    def report(self, path: Path, noun: str = "records") -> list[str]:
        """What a ``repair`` command prints, a line each (both journals' CLIs say the same)."""
        if self.copy_path is None:
            return [f"nothing to repair: {self.kept_records} {noun} in {path}, all valid"]
        if self.bad is not None:
            found = f"{path}: first bad line: {self.bad}"
        else:
            found = f"{path}: torn last line: {self.torn_bytes} bytes without a newline"
        return [
            found,
            f"kept {self.kept_records} {noun} ({self.kept_bytes} bytes) in {path}",
            f"moved {self.moved_bytes} bytes ({self.moved_lines} lines, {self.moved_valid} of "
            f"them valid {noun}) to {self.copy_path}",
        ]


def repair_lines(
    path: Path, check: Callable[[bytes], object], max_line: int, now: float | None = None
) -> Repair:
    """Keep the valid prefix of ``path``; move the rest to a fsynced copy, then cut it."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        lock_journal(fd, path)
        with open(fd, "rb", closefd=False) as handle:
            scan = scan_lines(handle, check, max_line)
        size = os.fstat(fd).st_size
        keep = scan.valid_bytes
        kept = len(scan.items)
        if keep == size:
            return Repair(kept, keep, 0, 0, 0, None, scan.bad, scan.torn_bytes)
        copy_path, lines = _copy_tail(fd, path, keep, now)
        os.ftruncate(fd, keep)  # only now that the copy is durable
        os.fsync(fd)
    finally:
        os.close(fd)
    with copy_path.open("rb") as handle:
        valid = count_valid_lines(handle, check, max_line)
    return Repair(kept, keep, size - keep, lines, valid, copy_path, scan.bad, scan.torn_bytes)


def count_valid_lines(handle: BinaryIO, check: Callable[[bytes], object], max_line: int) -> int:
    """How many complete lines pass ``check``, reading past bad ones (bounded memory)."""
    valid = 0
    while line := handle.readline(max_line + 1):
        if not line.endswith(b"\n"):
            if len(line) > max_line:
                _measure_rest(handle, len(line))
            continue
        try:
            check(line[:-1])
        except ValueError:
            continue
        valid += 1
    return valid


def _copy_tail(fd: int, path: Path, start: int, now: float | None) -> tuple[Path, int]:
    """Copy ``fd`` from ``start`` to a new file beside ``path``; fsync it and the directory."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    copy_path, out = _create_unique(path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}"))
    newlines = 0
    last = b"\n"
    try:
        position = start
        while chunk := os.pread(fd, COPY_CHUNK_BYTES, position):
            write_all(out, chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
            position += len(chunk)
        os.fsync(out)
        fsync_directory(path.parent)
    except BaseException:
        os.close(out)
        copy_path.unlink(missing_ok=True)
        raise
    os.close(out)
    return copy_path, newlines + (last != b"\n")


def _create_unique(wanted: Path) -> tuple[Path, int]:
    """Create ``wanted``, or ``wanted-2``, ``-3``...: an earlier copy is never overwritten."""
    candidate, number = wanted, 1
    while True:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return candidate, os.open(candidate, flags, 0o644)
        except FileExistsError:
            number += 1
            candidate = wanted.with_name(f"{wanted.name}-{number}")
