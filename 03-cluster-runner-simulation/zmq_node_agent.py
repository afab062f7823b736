"""The ZeroMQ node agent: a daemon on every node that runs commands for cluster_runner.

Binds a ROUTER on tcp://BIND:PORT (default port 5580; 5570-5572 belong to the
cluster patterns). Clients (``zmq_node_executor.py``, a DEALER) send ``run``,
``cancel``, ``facts``, ``ping`` and ``credit`` requests; the agent answers with
``accepted`` (for runs still silent after 50 ms), streamed ``output`` chunks,
one ``exit``, ``facts_reply``, ``pong``, ``heartbeat`` (every second while a
client has commands running) and ``error``. Wire spec: docs/agent-protocol.md.

Security is on by default: CURVE encryption, and a ZAP handler (cluster_patterns.curve)
that admits only the client public keys in KEYS/authorized_clients/, bound before the
ROUTER, and logs denied handshakes (rate-limited) with the peer's address and key
fingerprint. A key file there that cannot be parsed stops the agent at start-up. Only
request types on the protocol's allow-list are ever dispatched; anything else gets
``not_allowed``, anything malformed ``bad_request``; bad input is counted and logged at
most once a second, and no traceback reaches the log.

Memory is bounded whatever a client does: each connection has a credit window
(agent_flow.py), and a client that stops reading stops its commands' output, not
the agent. Running one command is agent_commands.py.

Run it:
    python 03-cluster-runner-simulation/zmq_node_agent.py keys generate /tmp/agent-keys
    python 03-cluster-runner-simulation/zmq_node_agent.py serve --node-id n1 \\
        --bind 127.0.0.1 --port 5580 --keys /tmp/agent-keys
    # lessons only, no encryption, loopback only:
    python 03-cluster-runner-simulation/zmq_node_agent.py serve --insecure --port 5580
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.asyncio

from cluster_patterns.cli_args import bind_port, positive_int
from cluster_patterns.curve import ZapPolicy, bind_zap, curve_server, serve_zap, server_policy
from cluster_patterns.transport import RateLimitedLog
from cluster_runner_simulation.agent_commands import KILL_DRAIN_S, CommandRun
from cluster_runner_simulation.agent_flow import ConnectionWindow
from cluster_runner_simulation.agent_keys import (
    AGENT_NAME,
    KeyFileError,
    authorize_client,
    generate_keys,
    load_keypair,
)
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    CREDIT_WINDOW_BYTES,
    DEFAULT_PORT,
    MAX_REQUEST_BYTES,
    REQUEST_TYPES,
    CancelRequest,
    Credit,
    ErrorCode,
    ErrorReply,
    FactsReply,
    FactsRequest,
    Heartbeat,
    Message,
    MsgType,
    PingRequest,
    Pong,
    ProtocolError,
    RunRequest,
    decode,
    encode,
    error_reply,
)

DEFAULT_CONCURRENCY = 64
MAX_QUEUED = 4096  # runs accepted but waiting for a slot; beyond this the agent answers "busy"
HEARTBEAT_INTERVAL_S = 1.0
IDLE_PROBE_S = 10.0  # an idle connection with uncredited bytes is probed this often
NVIDIA_SMI_TIMEOUT_S = 10.0
ZMTP_HEARTBEAT_MS = 2000  # TCP-level liveness, so dead clients are noticed
RCVHWM_MESSAGES = 100  # requests buffered per connection before libzmq stops reading it

log = logging.getLogger("zmq_node_agent")


# --- System facts -----------------------------------------------------------------------------


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


async def _gpus() -> list[dict[str, Any]]:
    """GPUs as nvidia-smi lists them; none when nvidia-smi is absent or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_SMI_TIMEOUT_S)
    except (OSError, TimeoutError):
        return []
    gpus = []
    for line in out.decode(errors="replace").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = int(parts[2]) if parts[2].isdigit() else 0
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_total_mib": memory})
    return gpus


async def gather_facts(node_id: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count() or 1,
        "memory_total_bytes": psutil.virtual_memory().total,
        "python_version": platform.python_version(),
        "os_release": _os_release(),
        "gpus": await _gpus(),
    }


# --- The agent --------------------------------------------------------------------------------


class NodeAgent:
    """Owns the ROUTER socket; dispatches requests by type, from the allow-list only."""

    def __init__(
        self,
        node_id: str,
        sock: zmq.asyncio.Socket,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        window_bytes: int = CREDIT_WINDOW_BYTES,
    ) -> None:
        if window_bytes < CREDIT_BATCH_BYTES:
            raise ValueError("a window below the clients' credit batch would never reopen")
        self.node_id = node_id
        self.sock = sock
        self.clock = clock
        self.window_bytes = window_bytes
        self.slots = asyncio.Semaphore(concurrency)
        self.running: dict[tuple[bytes, str], asyncio.Task[None]] = {}
        self.windows: dict[bytes, ConnectionWindow] = {}
        self.bad_messages = 0
        self.dropped_requests = 0  # from saturated connections (replies left unread)
        self.internal_errors = 0
        self.undeliverable = 0
        self._bad_log = RateLimitedLog(log.warning)
        self._saturated_log = RateLimitedLog(log.warning)
        self._warn = RateLimitedLog(log.warning)
        self._tasks: set[asyncio.Task[None]] = set()
        handlers: dict[MsgType, Callable[[bytes, Any], None]] = {
            MsgType.RUN: self.on_run,
            MsgType.CANCEL: self.on_cancel,
            MsgType.FACTS: self.on_facts,
            MsgType.PING: self.on_ping,
            MsgType.CREDIT: self.on_credit,
        }
        # The handler table and the protocol's allow-list must be the same set.
        assert set(handlers) == set(REQUEST_TYPES)
        self.handlers = handlers

    # --- Sending, within each connection's credit window -----------------------------------------

    def window(self, peer: bytes) -> ConnectionWindow:
        window = self.windows.get(peer)
        if window is None:
            window = self.windows[peer] = ConnectionWindow(self.window_bytes)
        return window

    def send_now(self, peer: bytes, message: Message) -> None:
        """Queue ``message`` for ``peer`` without waiting, and count it in its window.

        The ROUTER's queue is unbounded (SNDHWM 0: a bounded one would drop output
        silently); the credit window is what bounds it. pyzmq sends at once and hands
        back a finished future; messages keep their order.
        """
        window = self.window(peer)
        if window.gone:
            self.undeliverable += 1
            return
        frames = encode(message)
        window.sent(sum(len(frame) for frame in frames), self.clock())
        sent = asyncio.ensure_future(self.sock.send_multipart([peer, *frames], copy=False))
        if sent.done():
            self._check_sent(peer, sent)
        else:
            sent.add_done_callback(functools.partial(self._check_sent, peer))

    def _check_sent(self, peer: bytes, sent: asyncio.Future[Any]) -> None:
        error = None if sent.cancelled() else sent.exception()
        if error is None:
            return
        self.undeliverable += 1
        if isinstance(error, zmq.ZMQError) and error.errno == zmq.EHOSTUNREACH:
            # ROUTER_MANDATORY: the client has gone away. Its commands still finish.
            if (window := self.windows.get(peer)) is not None:
                window.lost()
        else:
            self._warn(f"send failed: {error}")

    # --- Receiving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        try:
            while True:
                frames = await self.sock.recv_multipart()
                try:
                    self.dispatch(frames[0], frames[1:])
                except Exception as exc:  # last line of defence: a peer never stops the agent
                    self._internal_error("dispatching a message", exc)
        finally:
            heartbeats.cancel()
            await self.shutdown()

    def dispatch(self, peer: bytes, frames: list[bytes]) -> None:
        window = self.windows.get(peer)
        if window is not None:
            window.heard_from()
        try:
            message = decode(frames, REQUEST_TYPES)
        except ProtocolError as exc:
            self.bad_messages += 1
            self._bad_log(f"bad message #{self.bad_messages} from {peer.hex()}: {exc}")
            if not self._drop_if_saturated(peer, window):
                self.send_now(peer, error_reply(exc))
            return
        if message.TYPE is not MsgType.CREDIT and self._drop_if_saturated(peer, window):
            return
        try:
            self.handlers[message.TYPE](peer, message)
        except Exception as exc:  # a bug must not take the whole node down with it
            self._internal_error(f"handling {message.TYPE.value!r}", exc)
            reason = f"the agent failed handling the request: {type(exc).__name__}"
            self.send_now(peer, ErrorReply(message.id, ErrorCode.INTERNAL_ERROR.value, reason))

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

    # --- Handlers --------------------------------------------------------------------------------

    def on_run(self, peer: bytes, req: RunRequest) -> None:
        key = (peer, req.id)
        if key in self.running:
            reply = ErrorReply(req.id, ErrorCode.DUPLICATE_ID.value, "request id already running")
            self.send_now(peer, reply)
            return
        if len(self.running) >= MAX_QUEUED:
            reply = ErrorReply(req.id, ErrorCode.BUSY.value, f"{MAX_QUEUED} commands in flight")
            self.send_now(peer, reply)
            return
        run = CommandRun(
            req,
            send=functools.partial(self.send_now, peer),
            window=self.window(peer),
            slots=self.slots,
            accepted_at=asyncio.get_running_loop().time(),
            warn=self._warn,
        )
        task = asyncio.create_task(run.execute())
        self.running[key] = task
        task.add_done_callback(lambda _: self.running.pop(key, None))

    def on_cancel(self, peer: bytes, req: CancelRequest) -> None:
        task = self.running.get((peer, req.id))
        if task is None:
            reply = ErrorReply(req.id, ErrorCode.UNKNOWN_ID.value, "no such command running")
            self.send_now(peer, reply)
            return
        task.cancel()  # CommandRun kills the group and answers with exit{cancelled}

    def on_facts(self, peer: bytes, req: FactsRequest) -> None:
        async def answer() -> None:
            try:
                facts = await gather_facts(self.node_id)
            except Exception as exc:  # report it; the caller must not wait for nothing
                self._internal_error("gathering facts", exc)
                reply = ErrorReply(req.id, ErrorCode.INTERNAL_ERROR.value, f"facts: {exc!r}")
                self.send_now(peer, reply)
                return
            self.send_now(peer, FactsReply(req.id, facts=facts))

        self._spawn(answer())

    def on_ping(self, peer: bytes, req: PingRequest) -> None:
        self.send_now(peer, Pong(req.id, node_id=self.node_id))

    def on_credit(self, peer: bytes, req: Credit) -> None:
        if (window := self.windows.get(peer)) is not None:
            window.credit(req.nbytes)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Liveness and shutdown -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            self.beat()

    def beat(self) -> None:
        """Heartbeat every busy connection; probe idle ones, and forget those that left."""
        busy = Counter(peer for peer, _ in self.running)
        now = self.clock()
        for peer, window in list(self.windows.items()):
            if busy[peer]:
                self.send_now(peer, Heartbeat("", running=busy[peer]))
            elif window.gone or window.in_flight == 0:
                del self.windows[peer]  # nothing owed either way
            elif now - window.last_sent >= IDLE_PROBE_S:
                # Is it still there? If not, ROUTER_MANDATORY says so and the next beat forgets it.
                self.send_now(peer, Heartbeat("", running=0))

    async def shutdown(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=KILL_DRAIN_S * 2)


# --- Setup: sockets, security, signals --------------------------------------------------------


class SetupError(Exception):
    """Bad configuration: reported on one line, exit status 2."""


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, wait for children with a pidfd instead of a thread per child.

    The default ThreadedChildWatcher starts a thread for every command; a pidfd
    is one more file descriptor in the event loop, which saves ~0.2 ms per
    command. Python 3.12+ already prefers pidfds, and deprecates this API.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel without pidfd support (before Linux 5.3)
    watcher = asyncio.PidfdChildWatcher()
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    watcher.attach_loop(asyncio.get_running_loop())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_router(ctx: zmq.asyncio.Context) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
    # A bounded ROUTER queue would silently drop output chunks; each connection's credit
    # window (agent_flow.py) bounds what is queued instead.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, RCVHWM_MESSAGES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * 3)
    return sock


def secure_router(
    ctx: zmq.asyncio.Context, sock: zmq.asyncio.Socket, keys: Path
) -> tuple[zmq.asyncio.Socket, ZapPolicy]:
    """The ZAP handler's socket and policy, and CURVE server keys on ``sock``.

    Call before bind(): libzmq asks the ZAP handler only if it was bound first.
    One unparsable key in KEYS/authorized_clients/ stops the agent (KeyFileError names it).
    """
    policy = server_policy(keys, "agent", log.warning)
    pair = load_keypair(keys / f"{AGENT_NAME}.key_secret")
    zap = bind_zap(ctx)
    assert isinstance(zap, zmq.asyncio.Socket)
    curve_server(sock, pair)
    return zap, policy


def bind(sock: zmq.asyncio.Socket, host: str, port: int) -> int:
    endpoint = f"tcp://{host}:{port if port else '*'}"
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise SetupError(f"cannot bind {endpoint}: {exc}") from None
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(last.rsplit(":", 1)[1])


def warn_insecure(host: str) -> None:
    banner = "!" * 72
    print(
        f"{banner}\n!! INSECURE MODE: no encryption, no authentication, for lessons only.\n"
        f"!! Anyone who can reach {host} can run any command as this user.\n{banner}",
        file=sys.stderr,
        flush=True,
    )


async def serve(args: argparse.Namespace) -> int:
    """Set up and serve until cancelled; run it under run_until_signalled()."""
    host = args.bind or ("127.0.0.1" if args.insecure else "0.0.0.0")
    if args.insecure and not is_loopback(host):
        raise SetupError(f"--insecure binds loopback only; refusing --bind {host}")
    if not args.insecure and args.keys is None:
        raise SetupError("--keys DIR is required (or --insecure, for lessons only)")
    use_pidfd_child_watcher()
    ctx = zmq.asyncio.Context()
    sock = make_router(ctx)
    zap: zmq.asyncio.Socket | None = None
    zap_task: asyncio.Task[None] | None = None
    try:
        if args.insecure:
            warn_insecure(host)
        else:
            zap, policy = secure_router(ctx, sock, Path(args.keys))
            zap_task = asyncio.create_task(serve_zap(zap, policy))
        port = bind(sock, host, args.port)
        agent = NodeAgent(args.node_id, sock, args.concurrency)
        asyncio.get_running_loop().set_exception_handler(agent.loop_error)
        mode = "INSECURE" if args.insecure else "curve"
        print(f"agent {args.node_id} ready on tcp://{host}:{port} ({mode})", flush=True)
        try:
            await agent.serve()
        finally:
            log.info(
                "stopped (bad messages: %d, dropped requests: %d, internal errors: %d)",
                agent.bad_messages,
                agent.dropped_requests,
                agent.internal_errors,
            )
    finally:
        if zap_task is not None:
            zap_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await zap_task
        if zap is not None:
            zap.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    return 0


async def run_until_signalled(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work`` until SIGINT or SIGTERM, then cancel it so it cleans up; 0 if signalled.

    The handlers are in place before ``work`` takes its first step, so a signal that
    arrives while it sets up or prints its ready line still ends it cleanly.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        description="ZeroMQ node agent for cluster_runner", formatter_class=formatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the agent", formatter_class=formatter)
    srv.add_argument("--node-id", default=socket.gethostname(), help="name in pong and facts")
    srv.add_argument(
        "--bind", default=None, help="address to bind; None: 0.0.0.0, or 127.0.0.1 with --insecure"
    )
    srv.add_argument("--port", type=bind_port, default=DEFAULT_PORT, help="0 picks a free port")
    srv.add_argument(
        "--keys",
        default=None,
        help="keys directory from 'keys generate' (required unless --insecure)",
    )
    srv.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="commands run at once; later ones queue (their timeout counts the wait)",
    )
    srv.add_argument("--insecure", action="store_true", help="NO encryption; loopback; lessons")
    srv.add_argument("--verbose", action="store_true", help="debug logging, with tracebacks")
    keys = sub.add_parser("keys", help="manage CURVE keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="create agent and client keypairs in DIR")
    gen.add_argument("dir", help="keys directory (created if missing)")
    auth = keys_sub.add_parser("authorize", help="allow a client public key")
    auth.add_argument("dir", help="the agent's keys directory")
    auth.add_argument("public_key_file", help="the client's NAME.key")
    return parser


def keys_command(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.keys_command == "generate":
        generate_keys(directory)
        print(f"wrote agent and client keypairs to {directory} (secret files 0600)")
    else:
        target = authorize_client(directory, Path(args.public_key_file))
        print(f"authorized {target}; restart the agent to load it")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s agent %(levelname)s %(message)s")
    try:
        if args.command == "keys":
            return keys_command(args)
        return asyncio.run(run_until_signalled(serve(args)))
    except (SetupError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
