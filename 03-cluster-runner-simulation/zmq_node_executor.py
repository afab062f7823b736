"""ZmqNodeExecutor: cluster_runner's NodeExecutorProtocol over the ZeroMQ node agent.

Connects one DEALER per node to the agent's ROUTER (``zmq_node_agent.py``,
default port 5580), CURVE-encrypted with the agent's public key and this
client's keypair. Many commands share that one connection: each request
carries an id, and a single reader task routes ``accepted``/``output``/``exit``
replies back to the coroutine that awaits them. Wire spec:
docs/agent-protocol.md.

Errors are the domain's: ``NodeUnreachable`` when the agent does not accept a
request within ``connect_timeout`` (down, wrong address, or our key is not
authorized; with ZMQ_IMMEDIATE nothing is queued for a dead connection), or
when it goes silent while commands run; ``CommandTimeout`` when the agent
killed a command's process group at its timeout, or the run was still queued
for one of the agent's slots at its deadline (the timeout counts from when the
agent accepted the run). Cancelling ``run()`` sends a ``cancel``, and the agent
kills the process group. After an agent restart the socket reconnects by itself.

Flow control: the reader task counts the reply bytes it has taken off the socket
and grants them back as ``credit`` every CREDIT_BATCH_BYTES, so the agent never
queues more than its window (8 MiB) for this connection.

Try it (with an agent running as in zmq_node_agent.py's docstring):
    python -c "import asyncio; from cluster_runner_simulation.zmq_node_executor import \\
ZmqNodeExecutor as X; e = X.from_keys_dir('n1', '127.0.0.1', 5580, '/tmp/agent-keys'); \\
print(asyncio.run(e.run('uname -a')))"
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
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from cluster_patterns.curve import curve_client
from cluster_patterns.transport import RateLimitedLog, configure, endpoint
from cluster_runner_simulation.agent_keys import AGENT_NAME, CLIENT_NAME, KeyPair
from cluster_runner_simulation.agent_keys import load_keypair, load_public
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    DEFAULT_PORT,
    MAX_REPLY_BYTES,
    REPLIES,
    Accepted,
    CancelRequest,
    Credit,
    ErrorReply,
    Exit,
    FactsReply,
    FactsRequest,
    Message,
    Output,
    PingRequest,
    ProtocolError,
    RunRequest,
    Stream,
    encode,
    system_config_from_facts,
)
from cluster_runner_simulation.protocols import (
    Env,
    CommandResult,
    CommandTimeout,
    ExecutorError,
    NodeExecutorProtocol,
    NodeUnreachable,
    SystemConfiguration,
)

CONNECT_TIMEOUT_S = 5.0  # how long a request may wait to be accepted by the agent
SILENCE_TIMEOUT_S = 5.0  # no heartbeat for this long while commands run: connection lost
TIMEOUT_GRACE_S = 5.0  # how long past its timeout we wait for the agent's own verdict
FACTS_TIMEOUT_S = 30.0
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
WATCHDOG_INTERVAL_S = 0.5
ZMTP_HEARTBEAT_MS = 2000

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


@dataclass
class PendingRequest:
    """Everything that arrived so far for one request id."""

    accepted: asyncio.Future[None]
    done: asyncio.Future[Message]
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        for fut in (self.accepted, self.done):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a waiter may have gone already


class ZmqNodeExecutor:
    """Runs commands on one node through its ZeroMQ agent."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        server_public_key: bytes | None,
        client_keys: KeyPair | None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        silence_timeout: float = SILENCE_TIMEOUT_S,
        facts_timeout: float = FACTS_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``server_public_key=None`` and ``client_keys=None`` talk to an --insecure agent."""
        if (server_public_key is None) != (client_keys is None):
            raise ValueError("give both the server public key and the client keys, or neither")
        self._node_id = node_id
        self.endpoint = endpoint(host, port)
        self._server_key = server_public_key
        self._client_keys = client_keys
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self.facts_timeout = facts_timeout
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._pending: dict[str, PendingRequest] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._clock = clock
        self._last_heard = clock()
        self._bad_replies = 0
        self._bad_log = RateLimitedLog(log.warning)
        self._uncredited = 0  # reply bytes read but not yet credited back to the agent
        self._credit_due = asyncio.Event()
        self._closed = False

    @classmethod
    def from_keys_dir(
        cls, node_id: str, host: str, port: int, keys_dir: str | Path, **options: Any
    ) -> ZmqNodeExecutor:
        """Reads KEYS/agent.key and KEYS/client.key_secret (as ``keys generate`` writes them)."""
        keys = Path(keys_dir)
        return cls(
            node_id,
            host,
            port,
            server_public_key=load_public(keys / f"{AGENT_NAME}.key"),
            client_keys=load_keypair(keys / f"{CLIENT_NAME}.key_secret"),
            **options,
        )

    @property
    def node_id(self) -> str:
        return self._node_id

    # --- NodeExecutorProtocol ------------------------------------------------------------------

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        request = RunRequest(
            id=self._next_id(), command=command, timeout=timeout, env=dict(env or {}), cwd=cwd
        )
        pending = await self._submit(request)
        try:
            guard = None if timeout is None else timeout + TIMEOUT_GRACE_S
            try:
                async with asyncio.timeout(guard):
                    reply = await pending.done
            except TimeoutError:
                self._send_cancel(request.id)
                raise CommandTimeout(self._node_id, f"no exit after {timeout}s: {command!r}")
        except asyncio.CancelledError:
            self._send_cancel(request.id)  # the agent kills the process group
            raise
        finally:
            self._pending.pop(request.id, None)
        return self._result(command, timeout, reply, pending)

    async def system_facts(self) -> SystemConfiguration:
        request = FactsRequest(id=self._next_id())
        pending = await self._submit(request, expect_accepted=False)
        try:
            async with asyncio.timeout(self.facts_timeout):
                reply = await pending.done
        except TimeoutError:
            raise NodeUnreachable(self._node_id, f"no facts within {self.facts_timeout}s") from None
        finally:
            self._pending.pop(request.id, None)
        if isinstance(reply, ErrorReply):
            raise ExecutorError(self._node_id, f"agent could not gather facts: {reply.message}")
        if not isinstance(reply, FactsReply):
            raise ExecutorError(self._node_id, f"unexpected reply {_tag(reply)}")
        return system_config_from_facts(reply.facts, self._node_id)

    async def ping(self) -> float:
        """Round trip to the agent in seconds; NodeUnreachable if it does not answer."""
        started = time.perf_counter()
        request = PingRequest(id=self._next_id())
        pending = await self._submit(request, expect_accepted=False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pending.done
        except TimeoutError:
            raise self._unreachable() from None
        finally:
            self._pending.pop(request.id, None)
        return time.perf_counter() - started

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in self._pending.values():
            pending.fail(NodeUnreachable(self._node_id, "executor closed"))
        self._pending.clear()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            SharedContext.release()

    async def __aenter__(self) -> ZmqNodeExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- Requests ------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _unreachable(self) -> NodeUnreachable:
        return NodeUnreachable(
            self._node_id,
            f"agent at {self.endpoint} did not answer within {self.connect_timeout}s "
            "(down, wrong address, or this client's key is not authorized)",
        )

    async def _submit(self, request: Message, expect_accepted: bool = True) -> PendingRequest:
        """Send ``request``; return once the agent has accepted it (run) or right away."""
        # --8<-- [start:submit]
        try:
            frames = encode(request)
        except ProtocolError as exc:  # e.g. a command line beyond what one header may hold
            raise ExecutorError(self._node_id, f"cannot send the request: {exc}") from None
        sock = self._socket()
        loop = asyncio.get_running_loop()
        pending = PendingRequest(loop.create_future(), loop.create_future())
        self._pending[request.id] = pending
        try:
            async with asyncio.timeout(self.connect_timeout):
                # ZMQ_IMMEDIATE: this waits while there is no live, authenticated connection.
                await sock.send_multipart(frames)
                if expect_accepted:
                    await pending.accepted
        except TimeoutError:
            self._pending.pop(request.id, None)
            self._send_cancel(request.id)  # in case it arrives after all
            raise self._unreachable() from None
        # --8<-- [end:submit]
        except BaseException:
            # Cancelled (or failed) after sending: the run may have started already.
            self._pending.pop(request.id, None)
            if isinstance(request, RunRequest):
                self._send_cancel(request.id)
            raise
        return pending

    def _send_cancel(self, request_id: str) -> None:
        if self._sock is None:
            return
        # Fire and forget: it must also work from a task that is being cancelled. With no
        # live connection there is no remote command to cancel, so EAGAIN is fine.
        sent = asyncio.ensure_future(
            self._sock.send_multipart(encode(CancelRequest(id=request_id)), flags=zmq.NOBLOCK)
        )
        sent.add_done_callback(_ignore_outcome)

    def _result(
        self, command: str, timeout: float | None, reply: Message, pending: PendingRequest
    ) -> CommandResult:
        if isinstance(reply, ErrorReply):
            raise ExecutorError(self._node_id, f"agent refused {command!r}: {reply.message}")
        if not isinstance(reply, Exit):
            raise ExecutorError(self._node_id, f"unexpected reply {_tag(reply)}")
        if reply.timed_out and not reply.started:
            raise CommandTimeout(
                self._node_id,
                f"{command!r} never started: it waited {timeout}s for a free slot on the agent "
                "(all of its --concurrency slots were busy)",
            )
        if reply.timed_out:
            raise CommandTimeout(
                self._node_id, f"{command!r} ran longer than {timeout}s; process group killed"
            )
        if reply.dropped_bytes:
            log.warning(
                "%s: the agent dropped %d output bytes (beyond its cap)",
                command,
                reply.dropped_bytes,
            )
        return CommandResult(
            command=command,
            exit_status=reply.exit_status,
            stdout=b"".join(pending.stdout),
            stderr=b"".join(pending.stderr),
            exit_signal=reply.exit_signal,
        )

    # --- Socket and reader ---------------------------------------------------------------------

    def _socket(self) -> zmq.asyncio.Socket:
        if self._closed:
            raise NodeUnreachable(self._node_id, "executor is closed")
        if self._sock is None:
            # RCVHWM 0: output chunks must never be dropped (the credit window bounds them).
            # --8<-- [start:socket]
            sock = configure(
                SharedContext.acquire().socket(zmq.DEALER),
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
            self._tasks = [
                asyncio.create_task(self._read_replies(sock)),
                asyncio.create_task(self._grant_credit(sock)),
                asyncio.create_task(self._watch_silence()),
            ]
        return self._sock

    # --8<-- [start:read-replies]
    async def _read_replies(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            self._last_heard = self._clock()
            self._uncredited += sum(len(frame) for frame in frames)
            if self._uncredited >= CREDIT_BATCH_BYTES:
                self._credit_due.set()
            try:
                reply, body = REPLIES.decode_frames(frames)
            except ProtocolError as exc:
                self._count_bad(exc)
                continue
            pending = self._pending.get(reply.id)
            if pending is None:
                continue  # a heartbeat, or a late reply to a request we gave up on
            self._route(pending, reply, body)

    async def _grant_credit(self, sock: zmq.asyncio.Socket) -> None:
        """Give the agent credit for what the reader took off the socket (never dropped:
        a send that has to wait just waits, while the reader keeps reading)."""
        while True:
            await self._credit_due.wait()
            self._credit_due.clear()
            granted, self._uncredited = self._uncredited, 0
            await sock.send_multipart(encode(Credit(nbytes=granted)))

    # --8<-- [end:read-replies]

    @staticmethod
    def _route(pending: PendingRequest, reply: Message, body: bytes | None) -> None:
        # Any reply proves the request arrived; the agent sends "accepted" only for
        # runs that are still silent after a moment.
        if not pending.accepted.done():
            pending.accepted.set_result(None)
        if isinstance(reply, Output) and body is not None:
            (pending.stdout if reply.stream is Stream.STDOUT else pending.stderr).append(body)
        elif not isinstance(reply, Accepted) and not pending.done.done():
            pending.done.set_result(reply)  # exit, facts_reply, pong, error: answered

    async def _watch_silence(self) -> None:
        """Fail running commands if the agent stops heartbeating (crash, restart, partition)."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            waiting = [p for p in self._pending.values() if p.accepted.done()]
            silent_for = self._clock() - self._last_heard
            if waiting and silent_for > self.silence_timeout:
                error = NodeUnreachable(
                    self._node_id,
                    f"agent at {self.endpoint} silent for {silent_for:.1f}s; connection lost "
                    "(the command may have run)",
                )
                for pending in waiting:
                    pending.fail(error)

    def _count_bad(self, exc: ProtocolError) -> None:
        self._bad_replies += 1
        self._bad_log(f"{self._node_id}: bad reply #{self._bad_replies}: {exc}")


def _tag(message: Message) -> str:
    return str(message.__struct_config__.tag)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _satisfies_protocol(executor: ZmqNodeExecutor) -> NodeExecutorProtocol:
    """Never called: mypy proves here that ZmqNodeExecutor is a NodeExecutorProtocol."""
    return executor


__all__ = ["ZmqNodeExecutor", "SharedContext"]
