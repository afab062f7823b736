"""ZmqNodeExecutor: cluster_runner's NodeExecutorProtocol over the ZeroMQ node agent.

Talks to the agent (``zmq_node_agent.py``, default port 5580) through one
``AgentConnection`` (agent_connection.py: a CURVE DEALER, its reader task, credit and
silence watchdog); this module says what the requests mean. Wire spec:
docs/agent-protocol.md.

Errors are the domain's: ``NodeUnreachable`` when the agent does not accept a
request within ``connect_timeout`` (down, wrong address, or our key is not
authorized; with ZMQ_IMMEDIATE nothing is queued for a dead connection), or
when it goes silent while commands run; ``CommandTimeout`` when the agent
killed a command's process group at its timeout, or the run was still queued
for one of the agent's slots at its deadline (the timeout counts from when the
agent accepted the run). Cancelling ``run()`` sends a ``cancel``, and the agent
kills the process group.

``stream()`` hands output over as it arrives, and feeds stdin as ``data`` chunks, never
more than the agent granted with ``data_credit`` (a command that does not read its stdin
stops its feeder, not the agent). Leaving the iteration early cancels the command.

Try it (with an agent running as in zmq_node_agent.py's docstring):
    python -c "import asyncio; from cluster_runner_simulation.zmq_node_executor import \\
ZmqNodeExecutor as X; e = X.from_keys_dir('n1', '127.0.0.1', 5580, '/tmp/agent-keys'); \\
print(asyncio.run(e.run('uname -a')))"
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cluster_patterns.transport import endpoint
from cluster_runner_simulation.agent_connection import AgentConnection, PendingRequest
from cluster_runner_simulation.agent_keys import KeyPair, client_keys
from cluster_runner_simulation.agent_protocol import (
    DATA_CHUNK_BYTES,
    DEFAULT_PORT,
    DataChunk,
    ErrorReply,
    Exit,
    FactsReply,
    FactsRequest,
    Message,
    PingRequest,
    RunRequest,
    system_config_from_facts,
)
from cluster_runner_simulation.protocols import (
    ClosedOnExit,
    Env,
    CommandExit,
    CommandResult,
    CommandTimeout,
    ExecutorError,
    NodeExecutorProtocol,
    NodeUnreachable,
    OutputChunk,
    Stdin,
    StreamEvent,
    SystemConfiguration,
)

CONNECT_TIMEOUT_S = 5.0  # how long a request may wait to be accepted by the agent
SILENCE_TIMEOUT_S = 5.0  # no heartbeat for this long while commands run: connection lost
TIMEOUT_GRACE_S = 5.0  # how long past its timeout we wait for the agent's own verdict
FACTS_TIMEOUT_S = 30.0

log = logging.getLogger("zmq_node_executor")


class ZmqNodeExecutor(ClosedOnExit):
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
        self._node_id = node_id
        self.endpoint = endpoint(host, port)
        self.connect_timeout = connect_timeout
        self.facts_timeout = facts_timeout
        self._conn = AgentConnection(
            node_id,
            self.endpoint,
            server_public_key=server_public_key,
            client_keys=client_keys,
            connect_timeout=connect_timeout,
            silence_timeout=silence_timeout,
            clock=clock,
        )

    @classmethod
    def from_keys_dir(
        cls, node_id: str, host: str, port: int, keys_dir: str | Path, **options: Any
    ) -> ZmqNodeExecutor:
        """Reads KEYS/agent.key and KEYS/client.key_secret (as ``keys generate`` writes them)."""
        server_public_key, keypair = client_keys(Path(keys_dir))
        return cls(
            node_id, host, port, server_public_key=server_public_key, client_keys=keypair, **options
        )

    @property
    def node_id(self) -> str:
        return self._node_id

    # --- NodeExecutorProtocol ------------------------------------------------------------------

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        conn = self._conn
        request = RunRequest(
            id=conn.next_id(), command=command, timeout=timeout, env=dict(env or {}), cwd=cwd
        )
        pending = await conn.submit(request)
        try:
            guard = None if timeout is None else timeout + TIMEOUT_GRACE_S
            try:
                async with asyncio.timeout(guard):
                    reply = await pending.done
            except TimeoutError:
                conn.send_cancel(request.id)
                raise CommandTimeout(self._node_id, f"no exit after {timeout}s: {command!r}")
        except asyncio.CancelledError:
            conn.send_cancel(request.id)  # the agent kills the process group
            raise
        finally:
            conn.pending.pop(request.id, None)
        ended = self._check_exit(command, timeout, reply)
        return CommandResult(
            command=command,
            exit_status=ended.exit_status,
            stdout=b"".join(pending.stdout),
            stderr=b"".join(pending.stderr),
            exit_signal=ended.exit_signal,
        )

    async def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Env = None,
        cwd: str | None = None,
        stdin: Stdin = None,
    ) -> AsyncIterator[StreamEvent]:
        conn = self._conn
        request = RunRequest(
            id=conn.next_id(),
            command=command,
            timeout=timeout,
            env=dict(env or {}),
            cwd=cwd,
            stdin=stdin is not None,
        )
        pending = await conn.submit(request, streaming=True)
        assert pending.queue is not None
        feeder = None
        if stdin is not None:
            feeder = asyncio.create_task(self._feed_input(request.id, pending, stdin))
        loop = asyncio.get_running_loop()
        guard = None if timeout is None else loop.time() + timeout + TIMEOUT_GRACE_S
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(guard):
                        item = await pending.queue.get()
                except TimeoutError:
                    raise CommandTimeout(self._node_id, f"no exit after {timeout}s: {command!r}")
                if isinstance(item, OutputChunk):
                    yield item
                    continue
                if isinstance(item, BaseException):
                    raise item
                finished = True
                ended = self._check_exit(command, timeout, item)
                yield CommandExit(ended.exit_status, ended.exit_signal)
                return
        finally:
            # Left early (break, aclose, cancelled, an error): the agent kills the group.
            if feeder is not None:
                feeder.cancel()
            if not finished:
                conn.send_cancel(request.id)
            conn.pending.pop(request.id, None)

    async def system_facts(self) -> SystemConfiguration:
        conn = self._conn
        request = FactsRequest(id=conn.next_id())
        pending = await conn.submit(request, expect_accepted=False)
        try:
            async with asyncio.timeout(self.facts_timeout):
                reply = await pending.done
        except TimeoutError:
            raise NodeUnreachable(self._node_id, f"no facts within {self.facts_timeout}s") from None
        finally:
            conn.pending.pop(request.id, None)
        if isinstance(reply, ErrorReply):
            raise ExecutorError(self._node_id, f"agent could not gather facts: {reply.message}")
        if not isinstance(reply, FactsReply):
            raise ExecutorError(self._node_id, f"unexpected reply {_tag(reply)}")
        return system_config_from_facts(reply.facts, self._node_id)

    async def ping(self) -> float:
        """Round trip to the agent in seconds; NodeUnreachable if it does not answer."""
        conn = self._conn
        started = time.perf_counter()
        request = PingRequest(id=conn.next_id())
        pending = await conn.submit(request, expect_accepted=False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pending.done
        except TimeoutError:
            raise conn.unreachable() from None
        finally:
            conn.pending.pop(request.id, None)
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._conn.close()

    # --- Input and results ---------------------------------------------------------------------

    async def _feed_input(self, request_id: str, pending: PendingRequest, source: Stdin) -> None:
        """Send ``source`` as data chunks, never more than the agent granted, then EOF."""
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                await self._send_input(request_id, pending, source)
            elif source is not None:
                async for chunk in source:
                    await self._send_input(request_id, pending, chunk)
            await self._send_input(request_id, pending, b"", eof=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the caller's stdin failed: end the command, say why
            self._conn.send_cancel(request_id)
            pending.fail(exc)

    async def _send_input(
        self, request_id: str, pending: PendingRequest, data: bytes, eof: bool = False
    ) -> None:
        view = memoryview(data)
        for start in range(0, max(len(view), 1), DATA_CHUNK_BYTES):
            chunk = bytes(view[start : start + DATA_CHUNK_BYTES])
            while pending.input_credit < len(chunk):
                pending.input_granted.clear()
                await pending.input_granted.wait()
            pending.input_credit -= len(chunk)
            last = eof and start + DATA_CHUNK_BYTES >= len(view)
            if chunk or last:
                await self._conn.send(DataChunk(id=request_id, eof=last), chunk)

    def _check_exit(self, command: str, timeout: float | None, reply: Message) -> Exit:
        """The run's ``exit``; the domain's exception for an error, a timeout or a refusal."""
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
        return reply


def _tag(message: Message) -> str:
    return str(message.__struct_config__.tag)


def _satisfies_protocol(executor: ZmqNodeExecutor) -> NodeExecutorProtocol:
    """Never called: mypy proves here that ZmqNodeExecutor is a NodeExecutorProtocol."""
    return executor


__all__ = ["ZmqNodeExecutor"]
