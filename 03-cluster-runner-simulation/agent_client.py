"""A synchronous client of many node agents at once: what zrun, zcp and zrsh share.

Connects one CURVE DEALER per node to its agent (``zmq_node_agent.py``), all polled by one
``Hub`` in the calling thread, and speaks the agent protocol (agent_protocol.py,
docs/agent-protocol.md). There is no asyncio here, on purpose: these command-line tools are
started fresh for every use, and a process that imports only pyzmq, msgspec and the protocol
starts in a fraction of the time (``python -X importtime``). cluster_runner itself uses the
asyncio executor (zmq_node_executor.py) instead.

* ``Target``: where one node's agent listens and the keys that reach it, from a descriptor.
* ``Session``: the DEALER to one agent. It counts the reply bytes it reads and grants them
  back as ``credit`` (the agent never sends more than its window), and knows when it last
  heard from the agent.
* ``Hub``: polls every session (and any extra file descriptor: stdin for zrsh, a self-pipe
  that signals wake it up through) and hands back what arrived.
* ``RemoteRun``: one ``run`` request's state: output, grants for stdin, exit, or why it
  failed (no answer within the connect timeout, silence while running).

Without ZMQ_IMMEDIATE a request is queued before the connection is up, so the CURVE
handshake and the request overlap; a node that never answers is named once its connect
timeout has passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

import zmq

from cluster_patterns.cli_args import positive_float
from cluster_patterns.curve import KeyPair, curve_client
from cluster_patterns.transport import configure, endpoint, queued_multipart
from cluster_runner_simulation.agent_keys import client_keys
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    MAX_REPLY_BYTES,
    REPLIES,
    Accepted,
    CancelRequest,
    Credit,
    DataCredit,
    ErrorReply,
    Exit,
    Message,
    Output,
    ProtocolError,
    RunRequest,
    Stream,
    encode,
)
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, load_descriptor

CONNECT_TIMEOUT_S: Final = 5.0  # no reply at all within this: the node is unreachable
SILENCE_TIMEOUT_S: Final = 5.0  # no heartbeat for this long while running: connection lost
RECONNECT_IVL_MS: Final = 100
ZMTP_HEARTBEAT_MS: Final = 2000
# Where zrsh, zrun and zcp find the cluster descriptor: --descriptor, else this variable,
# else the first of DEFAULT_DESCRIPTORS that exists.
DESCRIPTOR_ENV: Final = "ZRSH_DESCRIPTOR"
DEFAULT_DESCRIPTORS: Final = ("~/.config/zmq-cluster/cluster.toml", "/etc/zmq-cluster/cluster.toml")


class ClientSetupError(Exception):
    """A node cannot even be tried (no keys in the descriptor, unreadable key files)."""


class UsageError(Exception):
    """Bad arguments, node sets, local files: one line on stderr (each tool's status)."""


class ToolArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ``UsageError``, so each tool picks its status, and
    whose ``--help`` shows every default."""

    def __init__(self, prog: str, description: str, usage: str | None = None) -> None:
        super().__init__(
            prog=prog,
            usage=usage,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def add_common_arguments(self) -> None:
        """zrun's and zcp's flags for reaching the nodes."""
        self.add_argument(
            "--connect-timeout",
            type=positive_float,
            default=CONNECT_TIMEOUT_S,
            help="seconds a node may take to answer at all",
        )
        self.add_argument(
            "--descriptor",
            default=None,
            help=f"cluster TOML; None: ${DESCRIPTOR_ENV}, else {' or '.join(DEFAULT_DESCRIPTORS)}",
        )
        self.add_argument("--no-progress", action="store_true", help="no progress line")


def find_descriptor(explicit: str | None = None) -> ClusterDescriptor:
    """The tools' descriptor: ``explicit``, $ZRSH_DESCRIPTOR, or a default path.

    Raises ``DescriptorError`` (naming the file and the field) or ClientSetupError.
    """
    chosen = explicit or os.environ.get(DESCRIPTOR_ENV)
    if not chosen:
        found = [p for p in (Path(d).expanduser() for d in DEFAULT_DESCRIPTORS) if p.is_file()]
        if not found:
            raise ClientSetupError(
                f"no cluster descriptor: pass --descriptor FILE or set {DESCRIPTOR_ENV} "
                f"(looked in {', '.join(DEFAULT_DESCRIPTORS)})"
            )
        chosen = str(found[0])
    return load_descriptor(chosen)


@dataclass(frozen=True)
class Target:
    """One node's agent: its name, its endpoint and the CURVE keys that reach it."""

    node_id: str
    endpoint: str
    server_key: bytes
    client_keys: KeyPair


def targets_for(nodes: Iterable[NodeSpec]) -> list[Target]:
    """The agents of descriptor nodes; the keys of one directory are read once."""
    keys: dict[Path, tuple[bytes, KeyPair]] = {}
    targets = []
    for node in nodes:
        directory = node.curve_keys_dir
        if directory is None:
            raise ClientSetupError(f"node {node.id!r}: the descriptor gives no curve_keys_dir")
        if directory not in keys:
            try:
                keys[directory] = client_keys(directory)
            except Exception as exc:  # KeyFileError, and OSError on odd paths
                raise ClientSetupError(f"node {node.id!r}: {exc}") from None
        server, client = keys[directory]
        targets.append(Target(node.id, endpoint(node.host, node.zmq_port), server, client))
    return targets


class Session:
    """The DEALER to one agent: sends requests, reads replies, grants credit for them."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], target: Target, now: float) -> None:
        self.target = target
        self.node_id = target.node_id
        # RCVHWM 0: output must never be dropped (the agent's credit window bounds it).
        sock = configure(
            ctx.socket(zmq.DEALER), max_message_bytes=MAX_REPLY_BYTES, linger_ms=0, rcvhwm=0
        )
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * 3)
        curve_client(sock, target.server_key, target.client_keys)
        sock.connect(target.endpoint)
        self.sock = sock
        self.opened_at = now
        self.last_heard: float | None = None  # None: never heard from
        self.bad_replies = 0
        self._uncredited = 0

    def send(self, message: Message, body: bytes | None = None) -> None:
        self.sock.send_multipart(encode(message, body))

    def read(self, now: float) -> list[tuple[Message, bytes | None]]:
        """Every reply waiting on the socket, decoded; bad frames are counted and skipped."""
        replies: list[tuple[Message, bytes | None]] = []
        for frames in queued_multipart(self.sock):
            self.last_heard = now
            self._uncredited += sum(len(frame) for frame in frames)
            try:
                replies.append(REPLIES.decode_frames(frames))
            except ProtocolError:
                self.bad_replies += 1
        if self._uncredited >= CREDIT_BATCH_BYTES:
            granted, self._uncredited = self._uncredited, 0
            self.send(Credit(nbytes=granted))
        return replies

    def close(self) -> None:
        self.sock.close(linger=0)


class Hub:
    """Polls every session and a few plain file descriptors, in this thread."""

    def __init__(
        self, targets: Sequence[Target] = (), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.poller = zmq.Poller()
        self.sessions: dict[str, Session] = {}
        self._by_socket: dict[zmq.Socket[bytes], Session] = {}
        for target in targets:
            self.open(target)

    def open(self, target: Target) -> Session:
        """Connect to one more agent (a fan-out limit opens them as slots free up)."""
        session = Session(self.ctx, target, self.clock())
        self.sessions[target.node_id] = session
        self._by_socket[session.sock] = session
        self.poller.register(session.sock, zmq.POLLIN)
        return session

    def close_session(self, node_id: str) -> None:
        session = self.sessions.pop(node_id, None)
        if session is not None:
            self.poller.unregister(session.sock)
            del self._by_socket[session.sock]
            session.close()

    def watch_fd(self, fd: int) -> None:
        self.poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        self.poller.unregister(fd)

    def wait(
        self, timeout_s: float | None
    ) -> tuple[list[tuple[Session, Message, bytes | None]], set[int]]:
        """Replies that arrived within ``timeout_s`` (None: until one does), and ready fds."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        ready = self.poller.poll(timeout_ms)
        now = self.clock()
        replies = []
        fds = set()
        for item, _ in ready:
            if isinstance(item, int):
                fds.add(item)
                continue
            session = self._by_socket[item]
            for message, body in session.read(now):
                replies.append((session, message, body))
        return replies, fds

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.ctx.term()


class SignalFlag:
    """SIGINT, SIGTERM and SIGHUP set ``received`` and wake the Hub through a self-pipe."""

    SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        self._previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self.count += 1

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self.read_fd)
        os.close(self._write_fd)


def signal_exit_status(signum: int) -> int:
    return 128 + signum


class RunState:
    """How far one remote run got; ``DONE`` and the failures are final."""

    SENT = "sent"  # nothing heard yet
    RUNNING = "running"  # the agent answered
    DONE = "done"  # exit received
    REFUSED = "refused"  # the agent answered error
    UNREACHABLE = "unreachable"  # nothing within the connect timeout
    LOST = "lost"  # silent for too long while running


@dataclass
class RemoteRun:
    """One ``run`` request to one node: what came back, and what became of it."""

    session: Session
    request: RunRequest
    sent_at: float
    state: str = RunState.SENT
    exit: Exit | None = None
    error: str = ""
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    input_credit: int = 0
    cancelled_by_us: bool = False
    keep_output: bool = True  # False: the caller streams each chunk and keeps nothing

    @property
    def node_id(self) -> str:
        return self.session.node_id

    @property
    def finished(self) -> bool:
        return self.state not in (RunState.SENT, RunState.RUNNING)

    def take(self, message: Message, body: bytes | None) -> tuple[Stream, bytes] | None:
        """Account for a reply to this run; returns an output chunk, if it was one."""
        if self.finished:
            return None
        self.state = RunState.RUNNING
        if isinstance(message, Output) and body is not None:
            if self.keep_output:
                (self.stdout if message.stream is Stream.STDOUT else self.stderr).append(body)
            return message.stream, body
        if isinstance(message, DataCredit):
            self.input_credit += message.nbytes
        elif isinstance(message, Exit):
            self.exit, self.state = message, RunState.DONE
        elif isinstance(message, ErrorReply):
            self.error, self.state = f"agent refused: {message.message}", RunState.REFUSED
        elif not isinstance(message, Accepted):
            self.error = f"unexpected {message.__struct_config__.tag!r} reply"
            self.state = RunState.REFUSED
        return None

    def check_liveness(self, now: float, connect_timeout: float, silence_timeout: float) -> None:
        """Give up on a node that never answered, or fell silent while running."""
        if self.state == RunState.SENT and now - self.sent_at > connect_timeout:
            self.state = RunState.UNREACHABLE
            self.error = (
                f"agent at {self.session.target.endpoint} did not answer within "
                f"{connect_timeout:g}s (down, wrong address, or this client's key is not "
                "authorized)"
            )
        heard = self.session.last_heard
        if self.state == RunState.RUNNING and heard is not None:
            if now - heard > silence_timeout:
                self.state = RunState.LOST
                self.error = (
                    f"agent at {self.session.target.endpoint} silent for {now - heard:.1f}s; "
                    "connection lost (the command may still run)"
                )

    def cancel(self) -> None:
        """Ask the agent to kill the run's process group (its exit then says cancelled)."""
        if not self.finished:
            self.cancelled_by_us = True
            self.session.send(CancelRequest(id=self.request.id))
