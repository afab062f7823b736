"""The ZeroMQ node agent: a daemon on every node that runs commands for cluster_runner.

Binds a ROUTER on tcp://BIND:PORT (default port 5580; 5570-5572 belong to the
cluster patterns). Clients (``zmq_node_executor.py``, a DEALER) send ``run``,
``cancel``, ``facts`` and ``ping`` requests; the agent answers with
``accepted`` (for runs still silent after 50 ms), streamed ``output`` chunks,
one ``exit``, ``facts_reply``, ``pong``, ``heartbeat`` (every second while a
client has commands running) and ``error``. Wire spec: docs/agent-protocol.md.

Security is on by default: CURVE encryption, and a ZAP handler that admits
only the client public keys in KEYS/authorized_clients/. Only request types on
the protocol's allow-list are ever dispatched.

Commands run through /bin/sh as asyncio subprocesses, each in its own session
(process group), at most --concurrency at a time. Output goes back in chunks;
after MAX_OUTPUT_BYTES (64 MiB per command, stdout+stderr) the rest is drained
and dropped, and ``exit`` says how many bytes were dropped. A timeout, a
``cancel`` or the agent's shutdown kills the whole process group.

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
import fcntl
import ipaddress
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from cluster_patterns.cli_args import bind_port, positive_int
from cluster_runner_simulation.agent_keys import (
    AGENT_NAME,
    AUTHORIZED_DIR,
    KeyFileError,
    authorize_client,
    generate_keys,
    load_keypair,
)
from cluster_runner_simulation.agent_protocol import (
    DEFAULT_PORT,
    MAX_OUTPUT_BYTES,
    MAX_REQUEST_BYTES,
    OUTPUT_CHUNK_BYTES,
    REQUEST_TYPES,
    Accepted,
    CancelRequest,
    ErrorCode,
    ErrorReply,
    Exit,
    FactsReply,
    FactsRequest,
    Heartbeat,
    Message,
    MsgType,
    Output,
    PingRequest,
    Pong,
    ProtocolError,
    RunRequest,
    TypeNotAllowed,
    decode,
    encode,
    request_id_of,
)

DEFAULT_CONCURRENCY = 64
MAX_QUEUED = 4096  # runs accepted but waiting for a slot; beyond this the agent answers "busy"
HEARTBEAT_INTERVAL_S = 1.0
ACCEPT_DELAY_S = 0.05  # a run still silent after this long gets an explicit "accepted"
FLUSH_DELAY_S = 0.002  # how long output may wait to be batched into a bigger message
PIPE_BYTES = 1024 * 1024  # pipe buffer for bulk output, so reads (and messages) are bigger
SMALL_PIPE_BYTES = 64 * 1024  # Linux's default pipe size: a read this big means bulk output
KILL_DRAIN_S = 2.0  # after killing a group, how long to wait for its pipes to close
BAD_LOG_INTERVAL_S = 1.0
NVIDIA_SMI_TIMEOUT_S = 10.0
ZMTP_HEARTBEAT_MS = 2000  # TCP-level liveness, so dead clients are noticed

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


# --- Running one command ----------------------------------------------------------------------


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


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def exit_fields(returncode: int | None) -> tuple[int | None, str | None]:
    """A subprocess return code as SSH reports it: a status, or the signal's name."""
    if returncode is None or returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return None, str(-returncode)


class OutputCollector(asyncio.SubprocessProtocol):
    """Buffers a child's stdout and stderr and ships them in chunks.

    Pipe reads return at most one pipe's worth (64 KiB by default), often much
    less; sending each read as its own message would cost a round of encoding
    per few kilobytes. So data waits up to FLUSH_DELAY_S, or until a buffer
    holds OUTPUT_CHUNK_BYTES, and the rest goes out when the pipe closes.
    """

    STREAMS = {1: "stdout", 2: "stderr"}

    def __init__(self, run: CommandRun, budget: OutputBudget) -> None:
        loop = asyncio.get_running_loop()
        self.run = run
        self.budget = budget
        self.buffers = {1: bytearray(), 2: bytearray()}
        self.open_pipes = 2
        self.exited = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self._flush_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.SubprocessTransport | None = None
        self.enlarged: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if len(data) >= SMALL_PIPE_BYTES and fd not in self.enlarged:
            self._enlarge_pipe(fd)
        buffer = self.buffers[fd]
        buffer += data
        if len(buffer) >= OUTPUT_CHUNK_BYTES:
            self.flush(fd)
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush_all)

    def _enlarge_pipe(self, fd: int) -> None:
        """A full default pipe means bulk output: let each read take more (Linux only)."""
        self.enlarged.add(fd)
        pipe = self.transport.get_pipe_transport(fd) if self.transport else None
        handle = pipe.get_extra_info("pipe") if pipe is not None else None
        if handle is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                fcntl.fcntl(handle.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.flush(fd)
        self.open_pipes -= 1
        self._maybe_finished()

    def process_exited(self) -> None:
        self.exited = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self.exited and self.open_pipes <= 0 and not self.finished.done():
            self.finished.set_result(None)

    def flush_all(self) -> None:
        self._flush_timer = None
        for fd in self.STREAMS:
            self.flush(fd)

    def flush(self, fd: int) -> None:
        buffer = self.buffers[fd]
        while buffer:
            chunk = bytes(buffer[:OUTPUT_CHUNK_BYTES])
            del buffer[:OUTPUT_CHUNK_BYTES]
            granted = self.budget.take(len(chunk))
            if granted:
                self.run.send_now(Output(self.run.request.id, self.STREAMS[fd], chunk[:granted]))

    def stop_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None


@dataclass
class CommandRun:
    """One client's command, from ``run`` to ``exit``."""

    agent: NodeAgent
    peer: bytes
    request: RunRequest
    timed_out: bool = False
    cancelled: bool = False
    accept_timer: asyncio.TimerHandle | None = None

    def send_now(self, message: Message) -> None:
        # Any reply tells the client its run arrived, so "accepted" is only needed
        # for runs that stay silent for a while; short ones save a message.
        if self.accept_timer is not None:
            self.accept_timer.cancel()
            self.accept_timer = None
        self.agent.send_now(self.peer, message)

    async def execute(self) -> None:
        req = self.request
        self.accept_timer = asyncio.get_running_loop().call_later(
            ACCEPT_DELAY_S, self.send_now, Accepted(req.id)
        )
        try:
            async with self.agent.slots:
                await self._spawn_and_stream()
        except asyncio.CancelledError:
            # Cancelled while still queued for a slot: nothing was started.
            self.send_now(Exit(req.id, cancelled=True))

    async def _spawn_and_stream(self) -> None:
        req = self.request
        env = {**os.environ, **req.env} if req.env else None
        budget = OutputBudget(MAX_OUTPUT_BYTES)
        loop = asyncio.get_running_loop()
        spawning = asyncio.ensure_future(
            loop.subprocess_shell(
                lambda: OutputCollector(self, budget),
                req.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=req.cwd,
                env=env,
                start_new_session=True,  # its own process group, so a kill takes every child
            )
        )
        try:
            try:
                transport, collector = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # The fork may already have happened: finish spawning, then kill below.
                self.cancelled = True
                transport, collector = await spawning
        except OSError as exc:
            message = f"agent could not start the command: {exc}\n".encode()
            self.send_now(Output(req.id, "stderr", message))
            self.send_now(Exit(req.id, exit_status=127, cancelled=self.cancelled))
            return
        if not self.cancelled:
            try:
                async with asyncio.timeout(req.timeout):
                    await asyncio.shield(collector.finished)
            except TimeoutError:
                self.timed_out = True
            except asyncio.CancelledError:
                self.cancelled = True
        if self.timed_out or self.cancelled:
            kill_group(transport.get_pid())
            # A child that left the group may still hold a pipe open: bound the wait.
            await asyncio.wait([collector.finished], timeout=KILL_DRAIN_S)
        collector.stop_timer()
        collector.flush_all()
        transport.close()
        status, signame = exit_fields(transport.get_returncode())
        if budget.dropped:
            log.warning("%s: dropped %d output bytes beyond the cap", req.id, budget.dropped)
        self.send_now(
            Exit(
                req.id,
                exit_status=status,
                exit_signal=signame,
                timed_out=self.timed_out,
                cancelled=self.cancelled,
                dropped_bytes=budget.dropped,
            )
        )


# --- The agent --------------------------------------------------------------------------------


class NodeAgent:
    """Owns the ROUTER socket; dispatches requests by type, from the allow-list only."""

    def __init__(self, node_id: str, sock: zmq.asyncio.Socket, concurrency: int) -> None:
        self.node_id = node_id
        self.sock = sock
        self.slots = asyncio.Semaphore(concurrency)
        self.running: dict[tuple[bytes, str], asyncio.Task[None]] = {}
        self.bad_messages = 0
        self.undeliverable = 0
        self._bad_logged_at = 0.0
        self._bad_suppressed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        handlers: dict[MsgType, Callable[[bytes, Any], None]] = {
            MsgType.RUN: self.on_run,
            MsgType.CANCEL: self.on_cancel,
            MsgType.FACTS: self.on_facts,
            MsgType.PING: self.on_ping,
        }
        # The handler table and the protocol's allow-list must be the same set.
        assert set(handlers) == set(REQUEST_TYPES)
        self.handlers = handlers

    def send_now(self, peer: bytes, message: Message) -> None:
        """Queue ``message`` for ``peer`` without waiting.

        The ROUTER's queue is unbounded (SNDHWM 0), so pyzmq sends at once and
        hands back a finished future; messages keep their order.
        """
        sent = asyncio.ensure_future(self.sock.send_multipart([peer, *encode(message)], copy=False))
        sent.add_done_callback(self._count_undeliverable)

    def _count_undeliverable(self, sent: asyncio.Future[Any]) -> None:
        error = None if sent.cancelled() else sent.exception()
        if error is None:
            return
        # ROUTER_MANDATORY: the client has gone away. Its command still finishes.
        self.undeliverable += 1
        if not (isinstance(error, zmq.ZMQError) and error.errno == zmq.EHOSTUNREACH):
            log.warning("send failed: %s", error)

    async def serve(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        try:
            while True:
                frames = await self.sock.recv_multipart()
                try:
                    self.dispatch(frames[0], frames[1:])
                except Exception:  # last line of defence: a peer never stops the agent
                    self.bad_messages += 1
                    log.exception("unexpected error handling a message")
        finally:
            heartbeats.cancel()
            await self.shutdown()

    def dispatch(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            message = decode(frames, REQUEST_TYPES)
        except ProtocolError as exc:
            self._count_bad(peer, exc)
            code = (
                ErrorCode.NOT_ALLOWED if isinstance(exc, TypeNotAllowed) else ErrorCode.BAD_REQUEST
            )
            self.send_now(peer, ErrorReply(request_id_of(frames), code.value, str(exc)))
            return
        try:
            self.handlers[message.TYPE](peer, message)
        except Exception:  # a bug must not take the whole node down with it
            self.bad_messages += 1
            log.exception("handler for %s failed", message.TYPE.value)

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
        task = asyncio.create_task(CommandRun(self, peer, req).execute())
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
                log.exception("gathering facts failed")
                self.send_now(peer, ErrorReply(req.id, ErrorCode.BAD_REQUEST.value, str(exc)))
                return
            self.send_now(peer, FactsReply(req.id, facts=facts))

        self._spawn(answer())

    def on_ping(self, peer: bytes, req: PingRequest) -> None:
        self.send_now(peer, Pong(req.id, node_id=self.node_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count_bad(self, peer: bytes, exc: ProtocolError) -> None:
        self.bad_messages += 1
        now = time.monotonic()
        if now - self._bad_logged_at < BAD_LOG_INTERVAL_S:
            self._bad_suppressed += 1
            return
        extra = f" ({self._bad_suppressed} more suppressed)" if self._bad_suppressed else ""
        log.warning("bad message #%d from %s: %s%s", self.bad_messages, peer.hex(), exc, extra)
        self._bad_logged_at, self._bad_suppressed = now, 0

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            busy_peers: dict[bytes, int] = {}
            for peer, _ in list(self.running):
                busy_peers[peer] = busy_peers.get(peer, 0) + 1
            for peer, count in busy_peers.items():
                self.send_now(peer, Heartbeat("", running=count))

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
    # Output is bounded per command (MAX_OUTPUT_BYTES) and by --concurrency, so the
    # queue need not be; a bounded ROUTER queue would silently drop output chunks.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * 3)
    return sock


def secure_router(
    ctx: zmq.asyncio.Context, sock: zmq.asyncio.Socket, keys: Path
) -> AsyncioAuthenticator:
    """CURVE server keys and a ZAP allowlist; must run before bind()."""
    pair = load_keypair(keys / f"{AGENT_NAME}.key_secret")
    allowed = keys / AUTHORIZED_DIR
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise SetupError(f"no client keys in {allowed}: nobody could connect")
    auth = AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    return auth


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
    host = args.bind or ("127.0.0.1" if args.insecure else "0.0.0.0")
    if args.insecure and not is_loopback(host):
        raise SetupError(f"--insecure binds loopback only; refusing --bind {host}")
    if not args.insecure and args.keys is None:
        raise SetupError("--keys DIR is required (or --insecure, for lessons only)")
    use_pidfd_child_watcher()
    ctx = zmq.asyncio.Context()
    sock = make_router(ctx)
    auth: AsyncioAuthenticator | None = None
    try:
        if args.insecure:
            warn_insecure(host)
        else:
            auth = secure_router(ctx, sock, Path(args.keys))
        port = bind(sock, host, args.port)
        agent = NodeAgent(args.node_id, sock, args.concurrency)
        mode = "INSECURE" if args.insecure else "curve"
        print(f"agent {args.node_id} ready on tcp://{host}:{port} ({mode})", flush=True)
        await run_until_signalled(agent.serve())
        log.info("stopped (bad messages: %d)", agent.bad_messages)
    finally:
        if auth is not None:
            auth.stop()
        sock.close(linger=0)
        ctx.term()
    return 0


async def run_until_signalled(work: Any) -> None:
    """Run ``work`` until SIGINT or SIGTERM, then cancel it so it cleans up."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ZeroMQ node agent for cluster_runner")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the agent")
    srv.add_argument("--node-id", default=socket.gethostname())
    srv.add_argument("--bind", default=None, help="address to bind (default 0.0.0.0)")
    srv.add_argument("--port", type=bind_port, default=DEFAULT_PORT, help="0 picks a free port")
    srv.add_argument("--keys", default=None, help="keys directory from 'keys generate'")
    srv.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY)
    srv.add_argument("--insecure", action="store_true", help="NO encryption; loopback; lessons")
    srv.add_argument("--verbose", action="store_true")
    keys = sub.add_parser("keys", help="manage CURVE keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="create agent and client keypairs in DIR")
    gen.add_argument("dir")
    auth = keys_sub.add_parser("authorize", help="allow a client public key")
    auth.add_argument("dir")
    auth.add_argument("public_key_file")
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
        return asyncio.run(serve(args))
    except (SetupError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
