"""One file to or from one node, for zcp: the client's side of ``put`` and ``get``.

Nothing here polls or prints: zcp.py drives these from its loop through agent_client.py's
Hub. The wire exchange is docs/agent-protocol.md's "Files".

* ``SourceFile`` reads a local file once, in order, however many nodes it goes to: each
  chunk is read when the first node needs it and kept until the last one sent it; a node
  may run at most LEAD_BYTES ahead of the slowest, so memory stays bounded. The SHA-256 is
  computed on the way, and sent with the last chunk.
* ``PutJob`` sends a file to a node as ``data`` chunks within the agent's ``data_credit``;
  ``file_end`` (with the node's own SHA-256, compared here too) ends it.
* ``GetJob`` receives ``file_data`` into a temporary file next to its destination, and on
  ``file_end`` checks size and SHA-256, sets the mode, fsyncs and renames it into place;
  anything else removes the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cluster_patterns.file_io import fsync_directory, write_all
from cluster_runner_simulation.agent_client import Session
from cluster_runner_simulation.agent_protocol import (
    DATA_CHUNK_BYTES,
    CancelRequest,
    DataChunk,
    DataCredit,
    ErrorReply,
    FileData,
    FileEnd,
    GetRequest,
    Message,
    PutRequest,
    transfer_temp_name,
)

LEAD_BYTES: Final = 16 * 1024 * 1024  # how far the fastest node may run ahead of the slowest


class JobState:
    SENT = "sent"  # nothing heard yet
    MOVING = "moving"
    DONE = "done"
    FAILED = "failed"  # the agent said no, or the check failed
    UNREACHABLE = "unreachable"
    LOST = "lost"
    CANCELLED = "cancelled"  # we asked the agent to stop it (Ctrl-C)


class SourceFile:
    """A local file read once, in chunks, for every node it goes to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(self.fd)
        self.size = info.st_size
        self.mode = info.st_mode & 0o7777
        self.chunks: dict[int, bytes] = {}  # offset -> chunk, still needed by some node
        self.read_to = 0
        self._hash = hashlib.sha256()
        self.digest: str | None = None if self.size else self._hash.hexdigest()

    def chunk(self, offset: int, slowest: int) -> bytes | None:
        """The chunk at ``offset``; None while ``offset`` is too far ahead of ``slowest``."""
        if offset in self.chunks:
            return self.chunks[offset]
        if offset != self.read_to or offset - slowest >= LEAD_BYTES:
            return None
        data = os.pread(self.fd, min(DATA_CHUNK_BYTES, self.size - offset), offset)
        if len(data) != min(DATA_CHUNK_BYTES, self.size - offset):
            raise OSError(f"{self.path} changed size while being sent")
        self.chunks[offset] = data
        self.read_to += len(data)
        self._hash.update(data)
        if self.read_to == self.size:
            self.digest = self._hash.hexdigest()
        return data

    def release_below(self, offset: int) -> None:
        """Every node has sent the bytes below ``offset``: drop their chunks."""
        for start in [start for start in self.chunks if start + DATA_CHUNK_BYTES <= offset]:
            del self.chunks[start]

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class PutJob:
    """One local file to one node."""

    session: Session
    source: SourceFile
    request: PutRequest
    sent_at: float
    state: str = JobState.SENT
    credit: int = 0
    offset: int = 0
    sent_eof: bool = False
    error: str = ""
    landed: FileEnd | None = None
    cancelling: bool = False

    @property
    def finished(self) -> bool:
        return self.state not in (JobState.SENT, JobState.MOVING)

    def start(self) -> None:
        self.session.send(self.request)

    def pump(self, slowest: int) -> int:
        """Send what the credit (and the lead limit) allows; the bytes sent."""
        sent = 0
        source = self.source
        while not self.finished and not self.sent_eof:
            left = source.size - self.offset
            size = min(DATA_CHUNK_BYTES, left)
            if size > self.credit:
                break
            chunk = source.chunk(self.offset, slowest) if size else b""
            if chunk is None:
                break
            self.offset += len(chunk)
            self.credit -= len(chunk)
            last = self.offset == source.size
            digest = source.digest if last else None
            self.session.send(DataChunk(id=self.request.id, eof=last, sha256=digest), chunk)
            self.sent_eof = last
            sent += len(chunk)
        return sent

    def take(self, message: Message, body: bytes | None) -> int:
        """Account for a reply; 0 bytes received (a put's bytes count as they are sent)."""
        if self.finished:
            return 0
        self.state = JobState.MOVING
        if isinstance(message, DataCredit):
            self.credit += message.nbytes
        elif isinstance(message, FileEnd):
            if message.sha256 != self.source.digest or message.size != self.source.size:
                self.fail(
                    f"{message.path}: the node reports {message.size} bytes, SHA-256 "
                    f"{message.sha256}; sent {self.source.size}, {self.source.digest}"
                )
            else:
                self.landed, self.state = message, JobState.DONE
        elif isinstance(message, ErrorReply):
            self.fail(message.message, JobState.CANCELLED if self.cancelling else JobState.FAILED)
        return 0

    def fail(self, reason: str, state: str = JobState.FAILED) -> None:
        self.error, self.state = reason, state

    def cancel(self) -> None:
        if not self.finished:
            self.cancelling = True
            self.session.send(CancelRequest(id=self.request.id))


@dataclass
class GetJob:
    """One remote file from one node into a local directory (the node's own folder)."""

    session: Session
    request: GetRequest
    destination: Path  # the final local path
    sent_at: float
    state: str = JobState.SENT
    error: str = ""
    size: int = 0
    landed: FileEnd | None = None
    cancelling: bool = False
    _fd: int | None = None
    _temp: Path | None = None
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def finished(self) -> bool:
        return self.state not in (JobState.SENT, JobState.MOVING)

    def start(self) -> None:
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self._temp = self.destination.parent / transfer_temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self._temp, flags, 0o600)
        self.session.send(self.request)

    def take(self, message: Message, body: bytes | None) -> int:
        """Account for a reply; the bytes received."""
        if self.finished:
            return 0
        self.state = JobState.MOVING
        try:
            return self._take(message, body)
        except OSError as exc:  # our side: a full disk, a directory where the file goes
            if not isinstance(message, FileEnd):
                self.session.send(CancelRequest(id=self.request.id))
            self.fail(f"{self.destination}: {exc.strerror or exc}")
            return len(body) if body is not None else 0

    def _take(self, message: Message, body: bytes | None) -> int:
        if isinstance(message, FileData) and body is not None and self._fd is not None:
            write_all(self._fd, body)
            self._hash.update(body)
            self.size += len(body)
            return len(body)
        if isinstance(message, FileEnd):
            self._finish(message)
        elif isinstance(message, ErrorReply):
            self.fail(message.message, JobState.CANCELLED if self.cancelling else JobState.FAILED)
        return 0

    def _finish(self, end: FileEnd) -> None:
        digest = self._hash.hexdigest()
        if end.size != self.size or end.sha256 != digest:
            self.fail(
                f"{end.path}: {self.size} bytes came with SHA-256 {digest}; the node "
                f"sent {end.size}, {end.sha256}"
            )
            return
        assert self._fd is not None and self._temp is not None
        os.fchmod(self._fd, end.mode)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self._temp, self.destination)
        self._temp = None
        fsync_directory(self.destination.parent)
        self.landed, self.state = end, JobState.DONE

    def fail(self, reason: str, state: str = JobState.FAILED) -> None:
        self.error, self.state = reason, state
        self.discard()

    def discard(self) -> None:
        """Remove the temporary file (never the destination)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._temp is not None:  # None once renamed to the destination
            with contextlib.suppress(OSError):
                self._temp.unlink()
            self._temp = None

    def cancel(self) -> None:
        if not self.finished:
            self.cancelling = True
            self.session.send(CancelRequest(id=self.request.id))


Job = PutJob | GetJob
