"""How the node agent starts a command: posix_spawn, pipes read on the event loop, a pidfd.

Nothing here binds or connects. ``SpawnedShell`` runs ``/bin/sh -c COMMAND`` the cheapest
way this machine offers that still keeps what the agent needs:

* ``os.posix_spawn`` with ``setsid``: the command leads its own session and process group,
  so a timeout or a cancel kills the whole group (``kill_group``). No fork of the agent's
  address space, no Python between fork and exec. SIGPIPE and SIGXFSZ go back to their
  default (Python ignores SIGPIPE; a ``yes | head`` must still end) and the signal mask is
  emptied, as ``subprocess`` does with ``restore_signals``.
* stdout and stderr are pipes (close-on-exec on the agent's side) read with
  ``loop.add_reader``: no transport objects; pausing a pipe is removing its reader.
* The exit: once both pipes are closed (the common end of a command: its fds close as it
  exits), one ``waitpid(WNOHANG)`` usually reaps it at once. Only a command that is still
  there then (it closed its outputs and runs on, or the kernel has not yet turned it into
  a zombie) gets a pidfd in the event loop. No child watcher, no thread per command; without
  pidfd support (Linux before 5.3) a thread waits for that one child instead.
* A run with ``cwd`` goes through one more ``/bin/sh`` that changes directory first
  (posix_spawn has no chdir in Python 3.11); a missing directory is then the shell's exit
  status 2 with its message on stderr.
* stdin is /dev/null, or a pipe behind an asyncio write transport (StdinPipe in
  agent_input.py writes to it) for runs that asked for stdin.

``python 03-cluster-runner-simulation/latency_breakdown.py`` compares the spawn paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Mapping
from typing import Final, Protocol

SHELL: Final = "/bin/sh"
CD_THEN_RUN: Final = 'cd -- "$1" || exit; shift; exec /bin/sh -c "$1"'
READ_BYTES: Final = 64 * 1024  # one read of a pipe; bulk output gets a bigger pipe and reads
BULK_READ_BYTES: Final = 256 * 1024
PIPE_BYTES: Final = 1024 * 1024  # pipe buffer for bulk output, so reads (and messages) are bigger
RESTORED_SIGNALS: Final = (signal.SIGPIPE, signal.SIGXFSZ)
# The agent's environment, read once: os.environ decodes every item on each access, which
# costs more than the rest of a posix_spawn call's argument handling.
AGENT_ENV: Final = dict(os.environ)


class ShellEvents(Protocol):
    """What a spawned command reports, on the event loop (agent_commands.OutputCollector)."""

    def data_received(self, fd: int, data: bytes) -> None: ...

    def eof_received(self, fd: int) -> None: ...

    def process_exited(self) -> None: ...


class StdinEvents(Protocol):
    """What the stdin pipe reports (agent_input.StdinPipe)."""

    def drained(self) -> None: ...

    def lost(self) -> None: ...


class _StdinProtocol(asyncio.BaseProtocol):
    def __init__(self, events: StdinEvents) -> None:
        self.events = events

    def resume_writing(self) -> None:
        self.events.drained()  # the write buffer emptied (its high-water mark is 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.lost()


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def shell_argv(command: str, cwd: str | None) -> list[str]:
    if cwd is None:
        return [SHELL, "-c", command]
    return [SHELL, "-c", CD_THEN_RUN, SHELL, cwd, command]


class SpawnedShell:
    """One ``/bin/sh -c`` child in its own session, its output pipes and its exit."""

    def __init__(
        self,
        command: str,
        events: ShellEvents,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
    ) -> None:
        """Start it; ``env`` None: the agent's; ``stdin``: a pipe (``connect_stdin``), else
        /dev/null. OSError if the shell cannot be started."""
        self.loop = asyncio.get_running_loop()
        self.events = events
        self.returncode: int | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self._read_bytes = {1: READ_BYTES, 2: READ_BYTES}
        self._paused = False
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin else (-1, -1)
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        if in_r >= 0:
            actions.append((os.POSIX_SPAWN_DUP2, in_r, 0))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        try:
            # --8<-- [start:spawn]
            self.pid = os.posix_spawn(
                SHELL,
                shell_argv(command, cwd),
                AGENT_ENV if env is None else env,
                file_actions=actions,
                setsid=True,
                setsigdef=RESTORED_SIGNALS,
                setsigmask=(),
            )
            # --8<-- [end:spawn]
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd >= 0:
                    os.close(fd)
        self._pipes = {1: out_r, 2: err_r}
        for fd_number, fd in self._pipes.items():
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._readable, fd_number)
        self._stdin_fd = in_w

    async def connect_stdin(self, events: StdinEvents) -> asyncio.WriteTransport:
        """The stdin pipe as an asyncio write transport reporting to ``events``."""
        assert self._stdin_fd >= 0, "started without stdin"
        pipe = os.fdopen(self._stdin_fd, "wb", buffering=0)
        self._stdin_fd = -1
        transport, _ = await self.loop.connect_write_pipe(lambda: _StdinProtocol(events), pipe)
        self.stdin = transport
        return transport

    # --- Output ---------------------------------------------------------------------------

    def _readable(self, fd_number: int) -> None:
        fd = self._pipes.get(fd_number)
        if fd is None:
            return
        try:
            data = os.read(fd, self._read_bytes[fd_number])
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.events.data_received(fd_number, data)
        else:
            self._close_pipe(fd_number)
            self.events.eof_received(fd_number)
            if not self._pipes:
                self._reap_or_watch()

    def _close_pipe(self, fd_number: int) -> None:
        fd = self._pipes.pop(fd_number, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            for fd in self._pipes.values():
                self.loop.remove_reader(fd)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            for fd_number, fd in self._pipes.items():
                self.loop.add_reader(fd, self._readable, fd_number)

    def enlarge_pipe(self, fd_number: int) -> None:
        """Bulk output: a bigger pipe, and bigger reads of it (Linux only)."""
        fd = self._pipes.get(fd_number)
        if fd is not None:
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self._read_bytes[fd_number] = BULK_READ_BYTES

    def close(self) -> None:
        """Stop reading and close the pipes; the exit is still reaped when it comes."""
        if self._pipes:
            for fd_number in list(self._pipes):
                self._close_pipe(fd_number)
            if self.returncode is None:
                self._watch_exit()
        if self.stdin is not None:
            self.stdin.close()
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    # --- Exit -------------------------------------------------------------------------------

    def _reap_or_watch(self) -> None:
        """Both pipes closed: reap the child now if it has exited, else watch for its exit."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._reaped(255)  # reaped by someone else: the status is lost
            return
        if pid:
            self._reaped(os.waitstatus_to_exitcode(status))
        else:
            self._watch_exit()

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
            return
        self.loop.add_reader(pidfd, self._pidfd_readable, pidfd)

    def _pidfd_readable(self, pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        self._reaped(self._waitpid())

    def _waitpid(self) -> int:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return 255  # reaped by someone else: the status is lost
        return os.waitstatus_to_exitcode(status)

    def _wait_in_thread(self) -> None:
        code = self._waitpid()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self._reaped, code)

    def _reaped(self, returncode: int) -> None:
        self.returncode = returncode
        self.events.process_exited()
