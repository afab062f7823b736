"""The node agent's request handling: ``NodeAgent``, built from an ``AgentConfig``.

Nothing here binds, connects or reads a key file: NodeAgent is handed a ROUTER socket
(or a fake one in tests), an ``AgentConfig`` and a clock. The socket is a plain (not an
asyncio) pyzmq socket: the agent reads it from a ``loop.add_reader`` callback on its
ZMQ_FD, as many messages as are waiting, and sends without waiting (SNDHWM 0), which
spares every message a future of its own. It decodes each request with the
protocol's allow-list (agent_protocol.REQUESTS), routes it through its ``do_<type>`` handler
table, and sends every reply within the client connection's credit window (agent_flow.py);
running one command is agent_commands.py. The process around it (sockets, CURVE, signals,
the command line) is zmq_node_agent.py.

A peer never stops the agent: bad input is counted and answered (``bad_request`` naming the
field, ``not_allowed`` for an unlisted type), logged at most once a second, and a bug in a
handler becomes ``internal_error`` for that request only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import zmq

from cluster_patterns.defaults import LOOPBACK
from cluster_patterns.transport import RateLimitedLog, is_loopback
from cluster_runner_simulation import node_facts
from cluster_runner_simulation.agent_commands import KILL_DRAIN_S, CommandRun
from cluster_runner_simulation.agent_environment import wrap_command
from cluster_runner_simulation.agent_files import (
    TRANSFER_IDLE_S,
    FileRefused,
    FilesRoot,
    GetTransfer,
    PutTransfer,
)
from cluster_runner_simulation.agent_flow import ConnectionWindow
from cluster_runner_simulation.agent_input import InputGrant, InputRefused, InputSink, StdinPipe
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    CREDIT_WINDOW_BYTES,
    DEFAULT_PORT,
    REQUESTS,
    CancelRequest,
    Credit,
    DataChunk,
    ErrorCode,
    ErrorReply,
    FactsReply,
    FactsRequest,
    GetRequest,
    Heartbeat,
    Message,
    PingRequest,
    Pong,
    ProtocolError,
    PutRequest,
    RunRequest,
    convert_facts,
    encode,
    error_reply,
)

DEFAULT_CONCURRENCY: Final = 64
DRAIN_BATCH: Final = 64  # requests handled per turn of the event loop, so pipes are read too
MAX_QUEUED: Final = 4096  # runs accepted but waiting for a slot; beyond this: "busy"
MAX_TRANSFERS: Final = 256  # puts and gets at once (each holds a file open); beyond: "busy"
# facts requests waiting for the one gather in progress (they all get its answer); beyond: "busy"
MAX_FACTS_WAITING: Final = 1024
HEARTBEAT_INTERVAL_S: Final = 1.0
IDLE_PROBE_S: Final = 10.0  # an idle connection with uncredited bytes is probed this often
WILDCARD: Final = "0.0.0.0"

log = logging.getLogger("zmq_node_agent")


@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent is told at start-up; ``zmq_node_agent.py serve`` builds it from flags."""

    node_id: str
    bind: str | None = None  # None: 0.0.0.0, or loopback when insecure
    port: int = DEFAULT_PORT  # 0: the kernel picks a free one
    keys: Path | None = None  # from `keys generate`; required unless insecure
    concurrency: int = DEFAULT_CONCURRENCY
    insecure: bool = False
    verbose: bool = False
    max_queued: int = MAX_QUEUED
    credit_window_bytes: int = CREDIT_WINDOW_BYTES
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    idle_probe_s: float = IDLE_PROBE_S
    files_root: Path | None = None  # put and get only below it; None: both refused
    transfer_idle_s: float = TRANSFER_IDLE_S
    max_transfers: int = MAX_TRANSFERS
    # What commands start in (agent_environment.py): exactly these variables (None: the
    # agent's own), through this shell (None: /bin/sh -c), in this directory (None: the agent's).
    command_env: Mapping[str, str] | None = None
    command_shell: tuple[str, ...] | None = None
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if self.credit_window_bytes < CREDIT_BATCH_BYTES:
            raise ValueError("a window below the clients' credit batch would never reopen")
        if self.concurrency < 1 or self.max_queued < 1:
            raise ValueError("concurrency and max_queued must be at least 1")
        if self.insecure and not is_loopback(self.host):
            raise ValueError(f"--insecure binds loopback only; refusing --bind {self.host}")
        if not self.insecure and self.keys is None:
            raise ValueError("--keys DIR is required (or --insecure, for lessons only)")
        if self.files_root is not None and not self.files_root.is_dir():
            raise ValueError(f"--files-root {self.files_root}: not a directory")
        if self.transfer_idle_s <= 0:
            raise ValueError("--transfer-idle-s must be positive")

    @property
    def host(self) -> str:
        return self.bind or (LOOPBACK if self.insecure else WILDCARD)


# (peer, request, body frame or None: only ``data`` has one)
Handler = Callable[[bytes, Any, bytes | None], None]


class NodeAgent:
    """Owns the ROUTER socket; dispatches requests by type, from the allow-list only."""

    def __init__(
        self,
        config: AgentConfig,
        sock: zmq.Socket[bytes],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.sock = sock
        self.clock = clock
        self.slots = asyncio.Semaphore(config.concurrency)
        self.running: dict[tuple[bytes, str], asyncio.Task[None]] = {}
        self.inputs: dict[tuple[bytes, str], InputSink] = {}  # where ``data`` chunks go
        self.transfers: dict[tuple[bytes, str], PutTransfer | GetTransfer] = {}
        self.files = None if config.files_root is None else FilesRoot(config.files_root)
        self.windows: dict[bytes, ConnectionWindow] = {}
        self.bad_messages = 0
        self.dropped_requests = 0  # from saturated connections (replies left unread)
        self.internal_errors = 0
        self.undeliverable = 0
        self._bad_log = RateLimitedLog(log.warning)
        self._saturated_log = RateLimitedLog(log.warning)
        self._warn = RateLimitedLog(log.warning)
        self._tasks: set[asyncio.Task[None]] = set()
        self._facts_waiting: list[tuple[bytes, str]] = []  # non-empty while a gather runs
        self._drain_scheduled = False
        # --8<-- [start:handlers]
        handlers: dict[type[Message], Handler] = {
            RunRequest: self.do_run,
            CancelRequest: self.do_cancel,
            FactsRequest: self.do_facts,
            PingRequest: self.do_ping,
            Credit: self.do_credit,
            DataChunk: self.do_data,
            PutRequest: self.do_put,
            GetRequest: self.do_get,
        }
        # The handler table and the protocol's allow-list must be the same set.
        assert {cls.__struct_config__.tag for cls in handlers} == REQUESTS.types
        self.handlers = handlers
        # --8<-- [end:handlers]

    # --- Sending, within each connection's credit window -----------------------------------------

    def window(self, peer: bytes) -> ConnectionWindow:
        window = self.windows.get(peer)
        if window is None:
            window = self.windows[peer] = ConnectionWindow(self.config.credit_window_bytes)
        return window

    def send_now(self, peer: bytes, message: Message, body: bytes | None = None) -> None:
        """Queue ``message`` for ``peer`` without waiting, and count it in its window.

        The ROUTER's queue is unbounded (SNDHWM 0: a bounded one would drop output
        silently); the credit window is what bounds it. The send never waits; messages
        keep their order.
        """
        window = self.window(peer)
        if window.gone:
            self.undeliverable += 1
            return
        frames = encode(message, body)
        window.sent(sum(len(frame) for frame in frames), self.clock())
        try:
            self.sock.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as error:
            self._send_failed(peer, error)
        self._drain_soon()

    def _send_failed(self, peer: bytes, error: zmq.ZMQError) -> None:
        self.undeliverable += 1
        if error.errno == zmq.EHOSTUNREACH:
            # ROUTER_MANDATORY: the client has gone away. Its commands still finish.
            if (window := self.windows.get(peer)) is not None:
                window.lost()
        else:
            self._warn(f"send failed: {error}")

    # --- Receiving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        fd = int(self.sock.getsockopt(zmq.FD))
        loop.add_reader(fd, self.drain)
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        self.drain()  # what came before the reader was in place
        try:
            await loop.create_future()  # until cancelled (SIGINT, SIGTERM)
        finally:
            loop.remove_reader(fd)
            heartbeats.cancel()
            await self.shutdown()

    def drain(self) -> None:
        """Handle the requests waiting on the socket, up to a batch per turn of the loop.

        ZMQ_FD is edge-triggered and any operation on the socket may consume its edge, so
        the socket is read until ZMQ_EVENTS says nothing is waiting, and every send checks
        whether requests are waiting (``_drain_soon``).
        """
        self._drain_scheduled = False
        for _ in range(DRAIN_BATCH):
            # Asking first is cheaper than the exception a recv with nothing waiting raises.
            if not int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            try:
                self.dispatch(frames[0], frames[1:])
            except Exception as exc:  # last line of defence: a peer never stops the agent
                self._internal_error("dispatching a message", exc)
        self._drain_later()

    def _drain_soon(self) -> None:
        if not self._drain_scheduled and int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._drain_later()

    def _drain_later(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    # --8<-- [start:dispatch]
    def dispatch(self, peer: bytes, frames: list[bytes]) -> None:
        window = self.windows.get(peer)
        if window is not None:
            window.heard_from()
        try:
            message, body = REQUESTS.decode_frames(frames)
        except ProtocolError as exc:
            self.bad_messages += 1
            self._bad_log(f"bad message #{self.bad_messages} from {peer.hex()}: {exc}")
            if not self._drop_if_saturated(peer, window):
                self.send_now(peer, error_reply(exc))
            return
        if type(message) is not Credit and self._drop_if_saturated(peer, window):
            return
        try:
            self.handlers[type(message)](peer, message, body)
        except Exception as exc:  # a bug must not take the whole node down with it
            tag = type(message).__struct_config__.tag
            self._internal_error(f"handling {tag!r}", exc)
            reason = f"the agent failed handling the request: {type(exc).__name__}"
            self.send_now(
                peer, ErrorReply(id=message.id, code=ErrorCode.INTERNAL_ERROR, message=reason)
            )

    # --8<-- [end:dispatch]

    def _drop_if_saturated(self, peer: bytes, window: ConnectionWindow | None) -> bool:
        if window is None or not window.saturated:
            return False
        self.dropped_requests += 1
        self._saturated_log(
            f"dropped request #{self.dropped_requests} from {peer.hex()}: it left "
            f"{window.in_flight} reply bytes unread"
        )
        return True

    def _internal_error(self, what: str, exc: BaseException) -> None:
        self.internal_errors += 1
        self._warn(f"internal error #{self.internal_errors} {what}: {exc!r}")
        log.debug("internal error %s", what, exc_info=exc)  # the traceback, with --verbose only

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: one rate-limited line, no traceback."""
        exc = context.get("exception")
        self._internal_error(str(context.get("message", "in the event loop")), exc or Exception())

    def _error(self, peer: bytes, request_id: str, code: ErrorCode, message: str) -> None:
        self.send_now(peer, ErrorReply(id=request_id, code=code, message=message))

    # --- Handlers: one per request type of the allow-list ---------------------------------------

    def do_run(self, peer: bytes, req: RunRequest, body: bytes | None = None) -> None:
        key = (peer, req.id)
        if key in self.running:
            self._error(peer, req.id, ErrorCode.DUPLICATE_ID, "request id already running")
            return
        if len(self.running) >= self.config.max_queued:
            self._error(
                peer, req.id, ErrorCode.BUSY, f"{self.config.max_queued} commands in flight"
            )
            return
        if self.config.command_shell:
            req = msgspec.structs.replace(
                req, command=wrap_command(self.config.command_shell, req.command)
            )
        run = CommandRun(
            req,
            send=functools.partial(self.send_now, peer),
            window=self.window(peer),
            slots=self.slots,
            accepted_at=asyncio.get_running_loop().time(),
            warn=self._warn,
        )
        if req.stdin:
            run.stdin = StdinPipe(InputGrant(req.id, run.send_now))
            self.inputs[key] = run.stdin
        task = asyncio.create_task(run.execute())
        self.running[key] = task
        task.add_done_callback(lambda _: self._finished(key))

    def _finished(self, key: tuple[bytes, str]) -> None:
        self.running.pop(key, None)
        self.inputs.pop(key, None)

    def do_cancel(self, peer: bytes, req: CancelRequest, body: bytes | None = None) -> None:
        transfer = self.transfers.get((peer, req.id))
        if transfer is not None:
            transfer.abort()  # a put's temporary file is removed; its final name untouched
            self._error(peer, req.id, ErrorCode.FILE_ERROR, "transfer cancelled")
            return
        task = self.running.get((peer, req.id))
        if task is None:
            self._error(peer, req.id, ErrorCode.UNKNOWN_ID, "no such command running")
            return
        task.cancel()  # CommandRun kills the group and answers with exit{cancelled}

    def do_facts(self, peer: bytes, req: FactsRequest, body: bytes | None = None) -> None:
        # One gather at a time (it runs nvidia-smi, which may block for seconds), and every
        # request that arrives meanwhile gets its answer: a flood of facts costs one thread.
        if len(self._facts_waiting) >= MAX_FACTS_WAITING:
            self._error(peer, req.id, ErrorCode.BUSY, "too many facts requests waiting")
            return
        self._facts_waiting.append((peer, req.id))
        if len(self._facts_waiting) == 1:
            self._spawn(self._gather_facts())

    async def _gather_facts(self) -> None:
        try:
            # node_facts is what the SSH executor runs on a node too; nvidia-smi may block.
            gathered = await asyncio.to_thread(node_facts.gather, self.node_id)
            facts = convert_facts(gathered)
        except Exception as exc:  # report it; the callers must not wait for nothing
            self._internal_error("gathering facts", exc)
            for peer, request_id in self._take_facts_waiting():
                self._error(peer, request_id, ErrorCode.INTERNAL_ERROR, f"facts: {exc!r}")
            return
        for peer, request_id in self._take_facts_waiting():
            self.send_now(peer, FactsReply(id=request_id, facts=facts))

    def _take_facts_waiting(self) -> list[tuple[bytes, str]]:
        waiting, self._facts_waiting = self._facts_waiting, []
        return waiting

    def do_ping(self, peer: bytes, req: PingRequest, body: bytes | None = None) -> None:
        self.send_now(peer, Pong(id=req.id, node_id=self.node_id))

    def do_data(self, peer: bytes, req: DataChunk, body: bytes | None = None) -> None:
        key = (peer, req.id)
        sink = self.inputs.get(key)
        if sink is None:
            reason = "no such request takes input" if key not in self.running else "no stdin"
            code = ErrorCode.UNKNOWN_ID if key not in self.running else ErrorCode.BAD_REQUEST
            self._error(peer, req.id, code, f"{reason} (a run needs stdin: true)")
            return
        try:
            sink.receive(body or b"", req.eof, req.sha256)
        except InputRefused as exc:
            # The input is broken now: end the request rather than feed it a gap.
            self.bad_messages += 1
            self._bad_log(f"bad input #{self.bad_messages} from {peer.hex()}: {exc}")
            self.inputs.pop(key, None)
            self._error(peer, req.id, exc.code, str(exc))
            if (task := self.running.get(key)) is not None:
                task.cancel()

    def do_put(self, peer: bytes, req: PutRequest, body: bytes | None = None) -> None:
        if (files := self._transfer_allowed(peer, req.id)) is None:
            return
        key = (peer, req.id)
        try:
            put = PutTransfer(
                req, files, functools.partial(self.send_now, peer), self.config.transfer_idle_s
            )
        except FileRefused as exc:
            self._error(peer, req.id, exc.code, str(exc))
            return
        self._track(key, put)
        self.inputs[key] = put

    def do_get(self, peer: bytes, req: GetRequest, body: bytes | None = None) -> None:
        if (files := self._transfer_allowed(peer, req.id)) is None:
            return
        try:
            send = functools.partial(self.send_now, peer)
            get = GetTransfer(req, files, send, self.window(peer), self.config.transfer_idle_s)
        except FileRefused as exc:
            self._error(peer, req.id, exc.code, str(exc))
            return
        self._track((peer, req.id), get)

    def _transfer_allowed(self, peer: bytes, request_id: str) -> FilesRoot | None:
        key = (peer, request_id)
        if self.files is None:
            self._error(
                peer, request_id, ErrorCode.NOT_ALLOWED,
                "file transfer is off: this agent was started without --files-root",
            )  # fmt: skip
        elif key in self.transfers or key in self.running:
            self._error(peer, request_id, ErrorCode.DUPLICATE_ID, "request id already in use")
        elif len(self.transfers) >= self.config.max_transfers:
            self._error(
                peer, request_id, ErrorCode.BUSY, f"{self.config.max_transfers} transfers at once"
            )
        else:
            return self.files
        return None

    def _track(self, key: tuple[bytes, str], transfer: PutTransfer | GetTransfer) -> None:
        self.transfers[key] = transfer

        def forget(_: object) -> None:
            self.transfers.pop(key, None)
            self.inputs.pop(key, None)

        transfer.finished.add_done_callback(forget)

    def do_credit(self, peer: bytes, req: Credit, body: bytes | None = None) -> None:
        if (window := self.windows.get(peer)) is not None:
            window.credit(req.nbytes)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Liveness and shutdown -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            self.beat()

    def beat(self) -> None:
        """Heartbeat every busy connection; probe idle ones, and forget those that left."""
        busy = Counter(peer for peer, _ in self.running)
        busy.update(peer for peer, _ in self.transfers)  # a transfer proves liveness the same way
        now = self.clock()
        for peer, window in list(self.windows.items()):
            # A saturated connection (twice a window unread) has traffic to read: beats every
            # second would only pile up there, so it gets the idle connections' probes.
            if busy[peer] and not window.saturated:
                self.send_now(peer, Heartbeat(running=busy[peer]))
            elif window.gone or window.in_flight == 0:
                del self.windows[peer]  # nothing owed either way
            elif now - window.last_sent >= self.config.idle_probe_s:
                # Is it still there? If not, ROUTER_MANDATORY says so and the next beat forgets it.
                self.send_now(peer, Heartbeat(running=busy[peer]))

    async def shutdown(self) -> None:
        for transfer in list(self.transfers.values()):
            transfer.abort()  # no partial file under a final name
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=KILL_DRAIN_S * 2)
