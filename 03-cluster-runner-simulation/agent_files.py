"""File transfers of the node agent: ``put`` and ``get``, only below its --files-root.

Nothing here binds or connects. ``FilesRoot`` decides which paths a client may touch:
absolute ones inside the root, or relative to it; never a ``..`` component, and never
anything a symlink leads out of the root to. Every check is made on what was actually
opened (the directory or file descriptor, through /proc/self/fd), so a symlink swapped in
between a check and an open cannot escape either.

``PutTransfer`` writes a file from a client's ``data`` chunks (granted as agent_input.py
grants stdin) into a temporary name in the target directory (``.zcp-<random>.part``), and
only when the last chunk came and the SHA-256 of everything received equals the one the
client sent does it set the mode, fsync, rename the file to its name and fsync the
directory. A transfer that is cut (cancel, the client gone silent for --transfer-idle-s,
the agent stopping, a bad chunk, a full disk) removes its temporary file: no partial file
ever appears under the final name. ``GetTransfer`` reads a file out as ``file_data``
chunks within the connection's credit window (agent_flow.py), then ``file_end`` with its
size, mode and SHA-256.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Final

from cluster_patterns.file_io import write_all
from cluster_runner_simulation.agent_flow import ConnectionWindow
from cluster_runner_simulation.agent_input import InputGrant, InputRefused
from cluster_runner_simulation.agent_protocol import (
    MAX_ERROR_MESSAGE_CHARS,
    OUTPUT_CHUNK_BYTES,
    ErrorCode,
    ErrorReply,
    FileData,
    FileEnd,
    GetRequest,
    Message,
    PutRequest,
    transfer_temp_name,
)

TRANSFER_IDLE_S: Final = 30.0  # a put or get that hears or sends nothing this long is cut
CHUNKS_PER_TURN: Final = 8  # a get sends this many chunks, then lets other work run

Send = Callable[..., None]  # (message, body=None): to the transfer's client


class FileRefused(Exception):
    """A put or get that cannot be done; the agent answers ``error`` with ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _os_error(what: str, exc: OSError) -> FileRefused:
    return FileRefused(ErrorCode.FILE_ERROR, f"{what}: {exc.strerror or exc}")


class FilesRoot:
    """The directory below which clients may read and write files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise ValueError(f"--files-root {root}: not a directory")

    def target(self, path: str) -> Path:
        """``path`` (absolute inside the root, or relative to it) as a path below the root."""
        parts = PurePosixPath(path).parts
        if ".." in parts:
            raise FileRefused(ErrorCode.PATH_REFUSED, f"{path}: '..' is not allowed")
        candidate = Path(os.path.normpath(path if path.startswith("/") else self.root / path))
        if not self.contains(candidate):
            raise FileRefused(
                ErrorCode.PATH_REFUSED, f"{path}: outside the agent's files root {self.root}"
            )
        return candidate

    def contains(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def check_opened(self, fd: int, shown: str) -> Path:
        """Where the descriptor ``fd`` really is; refused if that is outside the root."""
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not self.contains(real):
            os.close(fd)
            raise FileRefused(
                ErrorCode.PATH_REFUSED, f"{shown}: leads outside the files root (a symlink?)"
            )
        return real

    def open_directory(self, path: Path, shown: str) -> tuple[int, Path]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(f"{shown}: cannot open directory {path}", exc) from None
        return fd, self.check_opened(fd, shown)

    def place_for_put(self, req: PutRequest) -> tuple[int, str, Path]:
        """(directory fd, file name in it, final path shown to the client) for a put."""
        target = self.target(req.path)
        is_dir = target.is_dir()
        if req.directory and not is_dir:
            raise FileRefused(ErrorCode.FILE_ERROR, f"{req.path}: not a directory")
        if req.name is not None and is_dir:
            directory, name = target, req.name
        else:
            directory, name = target.parent, target.name
        if name in ("", ".", "..") or not self.contains(directory / name):
            raise FileRefused(ErrorCode.PATH_REFUSED, f"{req.path}: not a file name")
        fd, real_directory = self.open_directory(directory, req.path)
        try:
            existing = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            os.close(fd)
            raise _os_error(req.path, exc) from None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            os.close(fd)
            raise FileRefused(ErrorCode.FILE_ERROR, f"{real_directory / name}: is a directory")
        return fd, name, real_directory / name

    def open_for_get(self, req: GetRequest) -> tuple[int, Path]:
        target = self.target(req.path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(f"{req.path}: cannot open", exc) from None
        real = self.check_opened(fd, req.path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileRefused(ErrorCode.FILE_ERROR, f"{req.path}: not a regular file")
        return fd, real


class IdleTimer:
    """Calls ``expire`` once ``idle_s`` passed since the last ``restart``, unless stopped."""

    def __init__(self, idle_s: float, expire: Callable[[], None]) -> None:
        self.idle_s = idle_s
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None

    def restart(self) -> None:
        self.stop()
        self._handle = asyncio.get_running_loop().call_later(self.idle_s, self._expire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Transfer(abc.ABC):
    """What a put and a get share: the request and its replies, the bytes so far and their
    hash, a future done once the transfer let go of its files, and a cut when idle."""

    def __init__(self, req: PutRequest | GetRequest, send: Send, idle_s: float) -> None:
        self.req = req
        self.send = send
        self.hash = hashlib.sha256()
        self.size = 0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle = IdleTimer(idle_s, self._timed_out)

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop now and let go of every file descriptor (then ``_let_go``)."""

    @abc.abstractmethod
    def idle_reason(self) -> str:
        """Why the transfer was cut after ``idle_s`` without progress (for the client)."""

    def _let_go(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def _timed_out(self) -> None:
        self.abort()
        self.send(_error(self.req.id, ErrorCode.FILE_ERROR, self.idle_reason()))


class PutTransfer(Transfer):
    """One ``put``: data chunks into a temporary file, committed only when all is right."""

    req: PutRequest

    def __init__(
        self, req: PutRequest, root: FilesRoot, send: Send, idle_s: float = TRANSFER_IDLE_S
    ) -> None:
        super().__init__(req, send, idle_s)
        self.dir_fd, self.name, self.final = root.place_for_put(req)
        self.temp = transfer_temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd: int | None = os.open(self.temp, flags, 0o600, dir_fd=self.dir_fd)
        except OSError as exc:
            os.close(self.dir_fd)
            raise _os_error(f"{self.final.parent}: cannot create a file", exc) from None
        self.committed = False  # renamed to its final name
        self.committing = False  # the commit thread owns the file now
        self.grant = InputGrant(req.id, send)
        self.idle.restart()  # and restarted by every chunk
        self.grant.open()

    def receive(self, chunk: bytes, eof: bool, sha256: str | None) -> None:
        if self.fd is None or self.committing:
            raise InputRefused(ErrorCode.BAD_REQUEST, "this put is already complete")
        self.grant.take(len(chunk), eof)
        self.idle.restart()
        if self.size + len(chunk) > self.req.size:
            self.abort()
            raise InputRefused(
                ErrorCode.BAD_REQUEST, f"more than the {self.req.size} bytes announced"
            )
        try:
            write_all(self.fd, chunk)
        except OSError as exc:
            self.abort()
            raise InputRefused(ErrorCode.FILE_ERROR, f"{self.final}: {exc.strerror}") from None
        self.hash.update(chunk)
        self.size += len(chunk)
        self.grant.written(len(chunk))
        if eof:
            self._end(sha256)

    def _end(self, sha256: str | None) -> None:
        digest = self.hash.hexdigest()
        if self.size != self.req.size:
            self.abort()
            raise InputRefused(
                ErrorCode.BAD_REQUEST, f"{self.size} bytes came, {self.req.size} were announced"
            )
        if sha256 != digest:
            self.abort()
            raise InputRefused(
                ErrorCode.CHECKSUM_MISMATCH,
                f"{self.final}: SHA-256 of the bytes received is {digest}, not {sha256}",
            )
        self.idle.stop()
        self.committing = True
        task = asyncio.ensure_future(asyncio.to_thread(self._commit))
        task.add_done_callback(self._committed)

    def _commit(self) -> None:
        """In a thread (fsync may take a while): mode, fsync, rename, fsync the directory.

        It owns the file meanwhile (``abort`` leaves it alone); on failure the temporary
        file is removed here.
        """
        fd, self.fd = self.fd, None
        assert fd is not None
        try:
            os.fchmod(fd, self.req.mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
            raise
        self.committed = True
        os.fsync(self.dir_fd)

    def _committed(self, task: asyncio.Future[None]) -> None:
        error = None if task.cancelled() else task.exception()
        self.committing = False
        if error is None:
            digest = self.hash.hexdigest()
            self.send(
                FileEnd(
                    id=self.req.id,
                    path=str(self.final),
                    size=self.size,
                    mode=self.req.mode,
                    sha256=digest,
                )
            )
        else:
            if not self.committed:
                with contextlib.suppress(OSError):
                    os.unlink(self.temp, dir_fd=self.dir_fd)
            reason = error.strerror if isinstance(error, OSError) else repr(error)
            self.send(_error(self.req.id, ErrorCode.FILE_ERROR, f"{self.final}: {reason}"))
        self._close_dir()

    def abort(self) -> None:
        """Cut: remove the temporary file; nothing appears under the final name.

        Once every byte came and matched, the commit is let finish instead: the file is whole.
        """
        if self.committing:
            return
        self.idle.stop()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.committed and self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
        self._close_dir()

    def _close_dir(self) -> None:
        self.dir_fd = _closed(self.dir_fd)
        self._let_go()

    def idle_reason(self) -> str:
        return f"no data for {self.idle.idle_s:g}s: transfer cut, nothing written"


class GetTransfer(Transfer):
    """One ``get``: the file as file_data chunks within the credit window, then file_end."""

    req: GetRequest

    def __init__(
        self,
        req: GetRequest,
        root: FilesRoot,
        send: Send,
        window: ConnectionWindow,
        idle_s: float = TRANSFER_IDLE_S,
    ) -> None:
        # The idle timer runs while the window is closed: a client that grants no credit
        # for idle_s lets go of the file and of its transfer slot.
        super().__init__(req, send, idle_s)
        self.window = window
        self.fd, self.path = root.open_for_get(req)
        self.mode = stat.S_IMODE(os.fstat(self.fd).st_mode)
        self._scheduled = False
        self.resume()

    def resume(self) -> None:
        """Send what the window allows (the window calls this when it reopens)."""
        self.idle.stop()
        if not self._scheduled and not self.finished.done():
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        for _ in range(CHUNKS_PER_TURN):
            if self.finished.done():
                return
            if not self.window.is_open:
                self.window.wait(self)
                self.idle.restart()
                return
            try:
                chunk = os.read(self.fd, OUTPUT_CHUNK_BYTES)
            except OSError as exc:
                self.abort()
                self.send(_error(self.req.id, ErrorCode.FILE_ERROR, f"{self.path}: {exc.strerror}"))
                return
            if not chunk:
                digest = self.hash.hexdigest()
                self.abort()
                self.send(
                    FileEnd(
                        id=self.req.id,
                        path=str(self.path),
                        size=self.size,
                        mode=self.mode,
                        sha256=digest,
                    )
                )
                return
            self.hash.update(chunk)
            self.size += len(chunk)
            self.send(FileData(id=self.req.id), chunk)
        self.resume()

    def abort(self) -> None:
        self.idle.stop()
        self.window.forget(self)
        self.fd = _closed(self.fd)
        self._let_go()

    def idle_reason(self) -> str:
        return f"nothing read for {self.idle.idle_s:g}s: transfer cut after {self.size} bytes"


def _closed(fd: int) -> int:
    """Close ``fd`` unless it is closed already (-1); returns -1, to store in its place."""
    if fd >= 0:
        os.close(fd)
    return -1


def _error(request_id: str, code: ErrorCode, message: str) -> Message:
    return ErrorReply(id=request_id, code=code, message=message[:MAX_ERROR_MESSAGE_CHARS])
