"""Input flowing to the node agent: the grant bookkeeping, and a run's stdin pipe.

Nothing here binds or connects. A client sends input for a request (a run started with
``stdin: true``, or a ``put``) as ``data`` chunks, and may only send what the agent has
granted with ``data_credit`` (docs/agent-protocol.md, "Input"): INPUT_WINDOW_BYTES at first,
then as much again as the agent has written out. So the agent holds at most one window of
input per request, whatever the client does, and a command that stops reading its stdin
stops its client, as a full SSH channel window would.

``InputGrant`` is the arithmetic (tested on its own); ``StdinPipe`` writes a run's chunks
to the command's stdin pipe (an asyncio write transport) and grants more once the pipe has
taken them. ``agent_files.PutTransfer`` is the other consumer of ``data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from cluster_runner_simulation.agent_protocol import INPUT_WINDOW_BYTES, DataCredit, ErrorCode


class InputRefused(Exception):
    """A ``data`` chunk that cannot be taken; the agent answers ``error`` with ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InputSink(Protocol):
    """Where the ``data`` chunks of one request go (a run's stdin, a put's file)."""

    def receive(self, chunk: bytes, eof: bool, sha256: str | None) -> None:
        """Take one chunk; ``InputRefused`` if it breaks the rules (the request then ends)."""
        ...


class InputGrant:
    """How many input bytes a request's client may still send; grants go out as data_credit."""

    def __init__(
        self, request_id: str, send: Callable[[DataCredit], None], window: int = INPUT_WINDOW_BYTES
    ) -> None:
        self.request_id = request_id
        self.send = send
        self.window = window
        self.granted = 0  # total bytes the client may send
        self.received = 0
        self.consumed = 0  # received bytes written out (so their room may be granted again)
        self.eof = False

    def open(self) -> None:
        """The consumer is ready: grant the first window."""
        self.grant(self.window)

    def take(self, size: int, eof: bool) -> None:
        """Account for a chunk; ``InputRefused`` if it exceeds the grant or follows EOF."""
        if self.eof:
            raise InputRefused(ErrorCode.BAD_REQUEST, "input after its end (eof)")
        if self.received + size > self.granted:
            raise InputRefused(
                ErrorCode.BAD_REQUEST,
                f"input beyond the {self.granted} bytes granted (data_credit) for this request",
            )
        self.received += size
        self.eof = eof

    def written(self, size: int) -> None:
        """``size`` more bytes left for good: grant their room again (not after EOF)."""
        self.consumed += size
        room = self.consumed + self.window - self.granted
        if room > 0 and not self.eof:
            self.grant(room)

    def grant(self, size: int) -> None:
        self.granted += size
        self.send(DataCredit(id=self.request_id, nbytes=size))


class StdinPipe:
    """A run's stdin: ``data`` chunks written to the command's pipe, granted as it drains.

    Before the command starts (it may wait for a slot) nothing is granted, so nothing can
    pile up here. The pipe transport's write buffer is the only buffer: at most one window.
    A command that closed its stdin (or exited) makes further input vanish, as over SSH;
    its room is still granted so the client is never left waiting.
    """

    def __init__(self, grant: InputGrant) -> None:
        self.grant = grant
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False  # the pipe is gone (the command closed it, or it ended)
        self._unwritten = 0  # bytes handed to the transport, not yet known to be written
        self._eof_early = False  # an empty eof came before the command started

    def attach(self, transport: asyncio.WriteTransport | None) -> None:
        """The command started with ``transport`` as its stdin (None: it could not start)."""
        if transport is None:
            self.closed = True
            return
        self.transport = transport
        if self._eof_early:
            transport.close()  # the command reads end of file at once
            return
        # Pause at any buffered byte, resume (``drained``) when the buffer is empty again.
        transport.set_write_buffer_limits(high=0)
        self.grant.open()

    def receive(self, chunk: bytes, eof: bool, sha256: str | None) -> None:
        self.grant.take(len(chunk), eof)
        transport = self.transport
        if transport is None and not self.closed:
            self._eof_early = eof  # nothing was granted yet, so the chunk is empty
            return
        if self.closed or transport is None or transport.is_closing():
            self.grant.written(len(chunk))  # nobody reads it any more
            return
        if chunk:
            transport.write(chunk)
            self._unwritten += len(chunk)
        if eof:
            transport.close()  # after the buffered bytes: the command sees EOF
        if transport.get_write_buffer_size() == 0:
            self.drained()

    def drained(self) -> None:
        """The pipe took everything buffered: grant its room again."""
        done, self._unwritten = self._unwritten, 0
        if done:
            self.grant.written(done)

    def lost(self) -> None:
        """The command closed its stdin, or ended: input from now on is discarded."""
        self.closed = True
        self.drained()
