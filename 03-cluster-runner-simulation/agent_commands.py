"""One command of the node agent, from ``run`` to ``exit``: slot, spawn, stream, kill.

Nothing here binds or connects: a ``CommandRun`` gets the run request, a ``send``
function to its client, its connection's credit window (agent_flow.py) and the
agent's slots, and it reports everything through ``send``. The agent
(``zmq_node_agent.py``) owns the socket.

* The run's ``timeout`` counts from the moment the agent accepted the request,
  time spent waiting for one of the --concurrency slots included: a run still
  queued at its deadline ends with ``exit`` {timed_out, started: false}.
* Commands run through /bin/sh, started by agent_spawn.py (posix_spawn, pipes read on the
  event loop, a pidfd for the exit), each in its own session (process group); a timeout,
  a ``cancel`` or the agent's shutdown kills the group.
* Output goes out in chunks, at most MAX_OUTPUT_BYTES per command; the rest is
  drained and counted in ``exit.dropped_bytes``. When the client's credit window
  is full, the command's pipes are no longer read (the command blocks on its own
  write, as over SSH) until credit arrives.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster_runner_simulation.agent_flow import ConnectionWindow
from cluster_runner_simulation.agent_input import StdinPipe
from cluster_runner_simulation.agent_spawn import AGENT_ENV, SpawnedShell, kill_group
from cluster_runner_simulation.agent_protocol import (
    MAX_OUTPUT_BYTES,
    OUTPUT_CHUNK_BYTES,
    Accepted,
    ErrorCode,
    ErrorReply,
    Exit,
    Message,
    Output,
    RunRequest,
    Stream,
)

ACCEPT_DELAY_S = 0.05  # a run still silent after this long gets an explicit "accepted"
FLUSH_DELAY_S = 0.002  # how long output may wait to be batched into a bigger message
SMALL_PIPE_BYTES = 64 * 1024  # Linux's default pipe size: a read this big means bulk output
KILL_DRAIN_S = 2.0  # after killing a group, how long to wait for its pipes to close
SPAWN_FAILED_STATUS = 127  # what a shell reports for a command it cannot start


class Send(Protocol):
    """Sends one message (and the body of an ``output``) to the run's client."""

    def __call__(self, message: Message, body: bytes | None = None) -> None: ...


class OutputBudget:
    """How many more output bytes a command may send (stdout and stderr share it)."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.dropped = 0

    def take(self, size: int) -> int:
        granted = min(size, self.left)
        self.left -= granted
        self.dropped += size - granted
        return granted


def exit_fields(returncode: int | None) -> tuple[int | None, str | None]:
    """A subprocess return code as SSH reports it: a status, or the signal's name."""
    if returncode is None or returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return None, str(-returncode)


class OutputCollector:
    """Buffers a child's stdout and stderr and ships them in chunks, within the credit window.

    Pipe reads return at most one pipe's worth (64 KiB by default), often much
    less; sending each read as its own message would cost a round of encoding
    per few kilobytes. So data waits up to FLUSH_DELAY_S, or until a buffer
    holds OUTPUT_CHUNK_BYTES, and the rest goes out when the pipe closes.

    When the window is closed the collector pauses both pipes and waits in the
    window; at most one chunk plus one read per stream stays buffered here.
    ``finished`` is set once the child exited, both pipes closed and every
    buffered byte went out (or, after ``abandon``, was counted as dropped).
    """

    STREAMS = {1: Stream.STDOUT, 2: Stream.STDERR}

    def __init__(self, run: CommandRun, budget: OutputBudget) -> None:
        loop = asyncio.get_running_loop()
        self.run = run
        self.budget = budget
        self.buffers = {1: bytearray(), 2: bytearray()}
        self.open_pipes = 2
        self.exited = False
        self.paused = False
        self.abandoned = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self._flush_timer: asyncio.TimerHandle | None = None
        self.process: SpawnedShell | None = None
        self.enlarged: set[int] = set()

    def data_received(self, fd: int, data: bytes) -> None:
        if len(data) >= SMALL_PIPE_BYTES and fd not in self.enlarged and self.process:
            self.enlarged.add(fd)  # a full default pipe means bulk output: read more at once
            self.process.enlarge_pipe(fd)
        granted = self.budget.take(len(data))
        if not granted:
            return  # beyond the cap: drained and dropped, so the command never blocks on it
        buffer = self.buffers[fd]
        buffer += data if granted == len(data) else data[:granted]
        if len(buffer) >= OUTPUT_CHUNK_BYTES:
            self.flush(fd)
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush_all)

    def eof_received(self, fd: int) -> None:
        self.open_pipes -= 1
        self.flush(fd)

    def process_exited(self) -> None:
        self.exited = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        idle = self.exited and self.open_pipes <= 0 and not any(self.buffers.values())
        if idle and not self.finished.done():
            self.finished.set_result(None)
            if not self.abandoned and self.process is not None:
                # The usual end: the exit goes out now, in this callback, not turns of the
                # loop later when the supervising task wakes (it then only tidies up).
                self.run.finish(self, self.process)

    def flush_all(self) -> None:
        """The batching timer fired (or the run is ending): send what is buffered."""
        self._flush_timer = None
        self._flush_buffers()

    def _flush_buffers(self) -> None:
        for fd in self.STREAMS:
            self.flush(fd)

    # --8<-- [start:flush]
    def flush(self, fd: int) -> None:
        buffer = self.buffers[fd]
        window = self.run.window
        while buffer:
            if not window.is_open:
                if not self.abandoned:
                    self._pause()
                    return
                self.budget.dropped += len(buffer)  # killed, and the client is not reading
                buffer.clear()
                break
            chunk = bytes(buffer[:OUTPUT_CHUNK_BYTES])
            del buffer[:OUTPUT_CHUNK_BYTES]
            self.run.send_now(Output(id=self.run.request.id, stream=self.STREAMS[fd]), chunk)
        self._maybe_finished()

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        if self.process is not None:
            self.process.pause_reading()
        self.run.window.wait(self)

    # --8<-- [end:flush]

    def resume(self) -> None:
        """The window reopened (or the command was abandoned): read and send again."""
        if not self.paused:
            return
        self.paused = False
        if self.process is not None:
            self.process.resume_reading()
        self._flush_buffers()

    def abandon(self) -> None:
        """The command was killed: drain its pipes, sending what the window allows."""
        self.abandoned = True
        self.run.window.forget(self)
        self.resume()

    def stop_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None


@dataclass
class CommandRun:
    """One client's command, from ``run`` to ``exit``."""

    request: RunRequest
    send: Send  # to this run's client
    window: ConnectionWindow  # that client's credit window
    slots: asyncio.Semaphore  # the agent's --concurrency
    accepted_at: float  # loop time at which the agent accepted the request
    warn: Callable[[str], None]  # a rate-limited warning log
    stdin: StdinPipe | None = None  # fed by the client's ``data`` chunks (RunRequest.stdin)
    exit_sent: bool = False
    timed_out: bool = False
    cancelled: bool = False
    accept_timer: asyncio.TimerHandle | None = None

    def send_now(self, message: Message, body: bytes | None = None) -> None:
        # Any reply tells the client its run arrived, so "accepted" is only needed
        # for runs that stay silent for a while; short ones save a message.
        if self.accept_timer is not None:
            self.accept_timer.cancel()
            self.accept_timer = None
        self.send(message, body)

    @property
    def deadline(self) -> float | None:
        timeout = self.request.timeout
        return None if timeout is None else self.accepted_at + timeout

    async def execute(self) -> None:
        req = self.request
        loop = asyncio.get_running_loop()
        self.accept_timer = loop.call_later(ACCEPT_DELAY_S, self.send_now, Accepted(id=req.id))
        try:
            if not await self._wait_for_slot():
                self.send_now(Exit(id=req.id, timed_out=True, started=False))
                return
        except asyncio.CancelledError:
            # Cancelled while still queued for a slot: nothing was started.
            self.send_now(Exit(id=req.id, cancelled=True, started=False))
            return
        try:
            await self._spawn_and_stream()
        except Exception as exc:  # a bug must not leave the client without an answer
            self.warn(f"{req.id!r}: internal error running the command: {exc!r}")
            reason = f"the agent failed running the command: {type(exc).__name__}"
            self.send_now(ErrorReply(id=req.id, code=ErrorCode.INTERNAL_ERROR, message=reason))
        finally:
            self.slots.release()

    async def _wait_for_slot(self) -> bool:
        """True once this run holds a slot; False if its deadline passed while it waited."""
        deadline = self.deadline
        if deadline is None or not self.slots.locked():
            # A free slot is taken without suspending; without a deadline there is nothing
            # to race. Either way no helper task is needed (the common case, kept cheap).
            return await self.slots.acquire()
        acquiring = asyncio.ensure_future(self.slots.acquire())
        loop = asyncio.get_running_loop()
        timeout = max(0.0, deadline - loop.time())
        try:
            await asyncio.wait([acquiring], timeout=timeout)
        except asyncio.CancelledError:
            self._give_up(acquiring)
            raise
        if acquiring.done() and not acquiring.cancelled():
            return True
        self._give_up(acquiring)
        return False

    def _give_up(self, acquiring: asyncio.Future[Any]) -> None:
        if acquiring.done() and not acquiring.cancelled():
            self.slots.release()  # it was granted just as we stopped waiting
        else:
            acquiring.cancel()  # the semaphore passes a slot it was about to grant on

    async def _spawn_and_stream(self) -> None:
        req = self.request
        env = {**AGENT_ENV, **req.env} if req.env else None
        budget = OutputBudget(MAX_OUTPUT_BYTES)
        collector = OutputCollector(self, budget)
        try:
            # Synchronous (posix_spawn returns once the child exists): nothing to race.
            process = SpawnedShell(
                req.command, collector, env=env, cwd=req.cwd, stdin=self.stdin is not None
            )
        except (OSError, ValueError) as exc:
            if self.stdin is not None:
                self.stdin.attach(None)
            message = f"agent could not start the command: {exc}\n".encode()
            self.send_now(Output(id=req.id, stream=Stream.STDERR), message)
            self.send_now(Exit(id=req.id, exit_status=SPAWN_FAILED_STATUS))
            return
        collector.process = process
        if self.stdin is not None:
            try:
                self.stdin.attach(await asyncio.shield(process.connect_stdin(self.stdin)))
            except asyncio.CancelledError:
                self.cancelled = True  # killed below, like any cancelled run
        await self._supervise(process, collector)
        self.finish(collector, process)

    # --8<-- [start:supervise]
    async def _supervise(self, process: SpawnedShell, collector: OutputCollector) -> None:
        """Wait for the command to finish, or kill its group at the deadline or on cancel."""
        if not self.cancelled:
            try:
                async with asyncio.timeout_at(self.deadline):
                    await asyncio.shield(collector.finished)
            except TimeoutError:
                self.timed_out = True
            except asyncio.CancelledError:
                self.cancelled = True
        if self.exit_sent:
            self.timed_out = self.cancelled = False  # it ended first: nothing left to kill
        if self.timed_out or self.cancelled:
            kill_group(process.pid)
            collector.abandon()
            # A child that left the group may still hold a pipe open: bound the wait.
            await asyncio.wait([collector.finished], timeout=KILL_DRAIN_S)

    # --8<-- [end:supervise]

    def finish(self, collector: OutputCollector, process: SpawnedShell) -> None:
        """Send what is left and the ``exit``, once; tidy up the pipes."""
        if self.exit_sent:
            return
        self.exit_sent = True
        collector.stop_timer()
        collector.abandoned = True
        collector.flush_all()  # whatever is left: sent if the window allows, else counted
        self.window.forget(collector)
        process.close()
        if self.stdin is not None:
            self.stdin.lost()
        status, signame = exit_fields(process.returncode)
        dropped = collector.budget.dropped
        if dropped:
            self.warn(f"{self.request.id!r}: dropped {dropped} output bytes")
        self.send_now(
            Exit(
                id=self.request.id,
                exit_status=status,
                exit_signal=signame,
                timed_out=self.timed_out,
                cancelled=self.cancelled,
                dropped_bytes=dropped,
            )
        )
