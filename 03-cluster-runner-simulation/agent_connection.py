"""One asyncio client connection to a node agent: the transport layer under ZmqNodeExecutor.

Connects one DEALER to the agent's ROUTER (``zmq_node_agent.py``, default port 5580),
CURVE-encrypted with the agent's public key and this client's keypair. Many requests share
it: each carries an id, and the replies are routed to the request's ``PendingRequest`` by
a ``loop.add_reader`` callback on the socket's ZMQ_FD that reads as many as are waiting (a
plain pyzmq socket: no future per message). It also grants the agent ``credit`` for every
reply byte read (every CREDIT_BATCH_BYTES), and fails the requests in flight with
``NodeUnreachable`` when the agent falls silent. What a request means (run, stream, facts)
is zmq_node_executor.py's. Wire spec: docs/agent-protocol.md.

With ZMQ_IMMEDIATE nothing is queued for a dead or unauthenticated connection, so a request
that the agent does not take within ``connect_timeout`` means the node is out of reach.
After an agent restart the socket reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import zmq
import zmq.asyncio

from cluster_patterns.curve import curve_client
from cluster_patterns.transport import RateLimitedLog, configure
from cluster_runner_simulation.agent_keys import KeyPair
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    MAX_REPLY_BYTES,
    REPLIES,
    Accepted,
    CancelRequest,
    Credit,
    DataCredit,
    Message,
    Output,
    ProtocolError,
    Stream,
    encode,
)
from cluster_runner_simulation.protocols import (
    ExecutorError,
    NodeUnreachable,
    OutputChunk,
    OutputStream,
)

RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000
WATCHDOG_INTERVAL_S: Final = 0.5
ZMTP_HEARTBEAT_MS: Final = 2000
STREAMS: Final = {Stream.STDOUT: OutputStream.STDOUT, Stream.STDERR: OutputStream.STDERR}
READ_BATCH: Final = 64  # replies handled per turn of the event loop

log = logging.getLogger("zmq_node_executor")


class SharedContext:
    """One zmq.asyncio.Context (one I/O thread) for all executors, terminated with the last."""

    _ctx: zmq.asyncio.Context | None = None
    _users = 0
    _lock = threading.Lock()  # executors on event loops in other threads share it too

    @classmethod
    def acquire(cls) -> zmq.asyncio.Context:
        with cls._lock:
            if cls._ctx is None or cls._ctx.closed:
                cls._ctx = zmq.asyncio.Context()
            cls._users += 1
            return cls._ctx

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users <= 0 and cls._ctx is not None:
                cls._ctx.term()
                cls._ctx, cls._users = None, 0


# What a streamed request's queue carries: output, the final reply, or why it failed.
Delivery = OutputChunk | Message | BaseException


@dataclass
class PendingRequest:
    """Everything that arrived so far for one request id.

    A ``run()`` collects output in ``stdout``/``stderr``; a ``stream()`` gets a ``queue``
    instead, which receives each chunk, then the final reply (or the failure).
    """

    accepted: asyncio.Future[None]
    done: asyncio.Future[Message]
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    queue: asyncio.Queue[Delivery] | None = None
    input_credit: int = 0  # input bytes the agent granted (data_credit) and we did not send
    input_granted: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(self, exc: BaseException) -> None:
        for fut in (self.accepted, self.done):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a waiter may have gone already
        if self.queue is not None:
            self.queue.put_nowait(exc)

    def route(self, reply: Message, body: bytes | None) -> None:
        # Any reply proves the request arrived; the agent sends "accepted" only for
        # runs that are still silent after a moment.
        if not self.accepted.done():
            self.accepted.set_result(None)
        if isinstance(reply, Output) and body is not None:
            if self.queue is not None:
                self.queue.put_nowait(OutputChunk(STREAMS[reply.stream], body))
            else:
                (self.stdout if reply.stream is Stream.STDOUT else self.stderr).append(body)
        elif isinstance(reply, DataCredit):
            self.input_credit += reply.nbytes
            self.input_granted.set()
        elif not isinstance(reply, Accepted) and not self.done.done():
            self.done.set_result(reply)  # exit, facts_reply, pong, error: answered
            if self.queue is not None:
                self.queue.put_nowait(reply)


class AgentConnection:
    """The DEALER to one agent, its reader, its credit and its silence watchdog."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        server_public_key: bytes | None,
        client_keys: KeyPair | None,
        connect_timeout: float,
        silence_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (server_public_key is None) != (client_keys is None):
            raise ValueError("give both the server public key and the client keys, or neither")
        self.node_id = node_id
        self.endpoint = address
        self._server_key = server_public_key
        self._client_keys = client_keys
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self.pending: dict[str, PendingRequest] = {}
        self._sock: zmq.Socket[bytes] | None = None
        self._fd = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._writable = asyncio.Event()  # set when a send that had to wait may go now
        self._sending_blocked = 0  # sends waiting for a live connection
        self._events_scheduled = False
        self._clock = clock
        self._last_heard = clock()
        self.bad_replies = 0
        self._bad_log = RateLimitedLog(log.warning)
        self._uncredited = 0  # reply bytes read but not yet credited back to the agent
        self.closed = False

    def next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def unreachable(self) -> NodeUnreachable:
        return NodeUnreachable(
            self.node_id,
            f"agent at {self.endpoint} did not answer within {self.connect_timeout}s "
            "(down, wrong address, or this client's key is not authorized)",
        )

    async def submit(
        self, request: Message, expect_accepted: bool = True, streaming: bool = False
    ) -> PendingRequest:
        """Send ``request``; return once the agent has accepted it (run) or right away.

        ``streaming``: deliver the replies through the request's queue, as they come.
        """
        # --8<-- [start:submit]
        try:
            frames = encode(request)
        except ProtocolError as exc:  # e.g. a command line beyond what one header may hold
            raise ExecutorError(self.node_id, f"cannot send the request: {exc}") from None
        self.socket()
        loop = asyncio.get_running_loop()
        pending = PendingRequest(loop.create_future(), loop.create_future())
        if streaming:
            pending.queue = asyncio.Queue()
        self.pending[request.id] = pending
        try:
            async with asyncio.timeout(self.connect_timeout):
                # ZMQ_IMMEDIATE: this waits while there is no live, authenticated connection.
                await self._send(frames)
                if expect_accepted:
                    await pending.accepted
        except TimeoutError:
            self.pending.pop(request.id, None)
            self.send_cancel(request.id)  # in case it arrives after all
            raise self.unreachable() from None
        # --8<-- [end:submit]
        except BaseException:
            # Cancelled (or failed) after sending: the run may have started already.
            self.pending.pop(request.id, None)
            if expect_accepted:
                self.send_cancel(request.id)
            raise
        return pending

    async def send(self, message: Message, body: bytes | None = None) -> None:
        """Send one more message of a request already submitted (input, for instance)."""
        self.socket()
        await self._send(encode(message, body))

    def send_cancel(self, request_id: str) -> None:
        # Fire and forget: it must also work from a task that is being cancelled. With no
        # live connection there is no remote command to cancel, so EAGAIN is fine.
        self._send_now(encode(CancelRequest(id=request_id)))

    async def _send(self, frames: list[bytes]) -> None:
        """Send, waiting while the socket cannot take it (no live connection yet)."""
        while not self._send_now(frames):
            if self.closed:
                raise NodeUnreachable(self.node_id, "executor closed")
            self._writable.clear()
            self._sending_blocked += 1
            try:
                self._check_events_soon()
                await self._writable.wait()
            finally:
                self._sending_blocked -= 1

    def _send_now(self, frames: list[bytes]) -> bool:
        """True if sent; False if the socket said EAGAIN (ZMQ_IMMEDIATE: no connection)."""
        if self._sock is None:
            return False
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        finally:
            self._check_events_soon()  # the send may have consumed the FD's edge
        return True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in self.pending.values():
            pending.fail(NodeUnreachable(self.node_id, "executor closed"))
        self.pending.clear()
        self._writable.set()  # a send still waiting finds the socket gone and gives up
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._sock.close(linger=0)
            self._sock = None
            SharedContext.release()

    # --- Socket and reader ---------------------------------------------------------------------

    def socket(self) -> zmq.Socket[bytes]:
        if self.closed:
            raise NodeUnreachable(self.node_id, "executor is closed")
        if self._sock is None:
            # RCVHWM 0: output chunks must never be dropped (the credit window bounds them).
            # --8<-- [start:socket]
            sock: zmq.Socket[bytes] = configure(
                zmq.Socket(SharedContext.acquire(), zmq.DEALER),
                max_message_bytes=MAX_REPLY_BYTES,
                linger_ms=0,
                rcvhwm=0,
            )
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * 3)
            if self._server_key is not None and self._client_keys is not None:
                curve_client(sock, self._server_key, self._client_keys)
            sock.connect(self.endpoint)
            # --8<-- [end:socket]
            self._sock = sock
            self._last_heard = self._clock()
            self._fd = int(sock.getsockopt(zmq.FD))
            asyncio.get_running_loop().add_reader(self._fd, self._on_events)
            self._tasks = [asyncio.create_task(self._watch_silence())]
        return self._sock

    def _check_events_soon(self) -> None:
        """ZMQ_FD is edge-triggered and any operation may consume its edge: look again."""
        if self._events_scheduled or self._sock is None:
            return
        events = int(self._sock.getsockopt(zmq.EVENTS))
        if events & zmq.POLLIN or (self._sending_blocked and events & zmq.POLLOUT):
            self._events_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_events)

    # --8<-- [start:read-replies]
    def _on_events(self) -> None:
        """The socket's FD said something changed: read replies, wake waiting senders."""
        self._events_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            # Asking first is cheaper than the exception a recv with nothing waiting raises.
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                break
            self._take(sock.recv_multipart(zmq.NOBLOCK))
        if self._uncredited >= CREDIT_BATCH_BYTES:
            # Never lost: if the socket cannot take it now, the count waits for the next read.
            if self._send_now(encode(Credit(nbytes=self._uncredited))):
                self._uncredited = 0
        if self._sending_blocked and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
            self._writable.set()
        self._check_events_soon()

    def _take(self, frames: list[bytes]) -> None:
        self._last_heard = self._clock()
        self._uncredited += sum(len(frame) for frame in frames)
        try:
            reply, body = REPLIES.decode_frames(frames)
        except ProtocolError as exc:
            self._count_bad(exc)
            return
        pending = self.pending.get(reply.id)
        if pending is not None:  # else a heartbeat, or a late reply to a request we left
            pending.route(reply, body)

    # --8<-- [end:read-replies]

    async def _watch_silence(self) -> None:
        """Fail running commands if the agent stops heartbeating (crash, restart, partition)."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            waiting = [p for p in self.pending.values() if p.accepted.done()]
            silent_for = self._clock() - self._last_heard
            if waiting and silent_for > self.silence_timeout:
                error = NodeUnreachable(
                    self.node_id,
                    f"agent at {self.endpoint} silent for {silent_for:.1f}s; connection lost "
                    "(the command may have run)",
                )
                for pending in waiting:
                    pending.fail(error)

    def _count_bad(self, exc: ProtocolError) -> None:
        self.bad_replies += 1
        self._bad_log(f"{self.node_id}: bad reply #{self.bad_replies}: {exc}")
