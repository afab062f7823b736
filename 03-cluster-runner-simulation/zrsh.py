"""zrsh: an rsh/ssh-compatible remote shell over the ZeroMQ node agents, for MPI launchers.

    zrsh [ssh options] [user@]HOST COMMAND...

runs COMMAND (its words joined by spaces, as ssh does, and run by the agent's /bin/sh) on
the descriptor node HOST through its agent (``zmq_node_agent.py``), with no sshd anywhere:
stdout and stderr stream live, stdin is forwarded (until EOF; ``-n``: none), and zrsh exits
with the remote exit status (128+N when signal N ended it, 255 when the node could not be
reached or the connection was lost, as ssh does). SIGINT, SIGTERM and SIGHUP cancel the
remote command: the agent kills its whole process group, and zrsh exits 128+N.

MPI launchers start their remote daemons with it:
    mpirun --mca plm_rsh_agent zrsh --host node0,node1 -np 2 ./allreduce     # Open MPI
    mpiexec -launcher ssh -launcher-exec zrsh -hosts node0,node1 -n 2 ./allreduce  # MPICH

HOST is a node id of the descriptor, or a ``host`` that only one node has. The descriptor is
``--descriptor FILE``, else $ZRSH_DESCRIPTOR, else ~/.config/zmq-cluster/cluster.toml or
/etc/zmq-cluster/cluster.toml (agent_client.py). The ssh options that launchers pass are
accepted: ``-x``, ``-n``, ``-l USER``, ``-p PORT``, ``-o Name=value`` (``ConnectTimeout`` is
honoured), ``-q``, ``-T``... and ignored where they mean nothing here; the agent runs
commands as the user it runs as. An option ssh does not know is an error.

It imports only pyzmq, msgspec and the protocol (agent_client.py), so it starts fast.

Try it (after ``python -m cluster_runner_simulation.testing.cluster --descriptor d.toml``):
    ZRSH_DESCRIPTOR=d.toml python 03-cluster-runner-simulation/zrsh.py node0 uname -a
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from cluster_patterns.file_io import write_all
from cluster_runner_simulation.agent_client import (
    CONNECT_TIMEOUT_S,
    SILENCE_TIMEOUT_S,
    ClientSetupError,
    Hub,
    RemoteRun,
    SignalFlag,
    ToolArgumentParser,
    UsageError,
    find_descriptor,
    signal_exit_status,
    targets_for,
)
from cluster_runner_simulation.agent_protocol import DATA_CHUNK_BYTES, DataChunk, RunRequest
from cluster_runner_simulation.agent_protocol import Stream
from cluster_runner_simulation.descriptor import ClusterDescriptor, DescriptorError, NodeSpec

SSH_FAILURE: Final = 255  # ssh's status when it could not run the command at all
POLL_S: Final = 0.25  # how often the liveness of the agent is checked
CANCEL_WAIT_S: Final = 3.0  # after a signal, how long to wait for the agent's "cancelled" exit
# ssh's options: those that take a value, and those that do not (OpenSSH 9).
SSH_VALUE_OPTIONS: Final = "BbcDEeFIiJLlmOoPpQRSWw"
SSH_FLAG_OPTIONS: Final = "46AaCfGgKkMNnqsTtVvXxYy"


class SshArgumentParser(ToolArgumentParser):
    """A usage error names the usage; zrsh exits 255 for it, as ssh does (not 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (usage: zrsh [ssh options] [user@]HOST COMMAND...)")


def build_parser() -> argparse.ArgumentParser:
    parser = SshArgumentParser(
        prog="zrsh",
        usage="zrsh [--descriptor FILE] [ssh options] [user@]HOST COMMAND...",
        description="Run COMMAND on HOST through its ZeroMQ agent (an rsh for MPI launchers).",
    )
    parser.add_argument(
        "--descriptor", default=None, help="cluster TOML; None: $ZRSH_DESCRIPTOR or a default"
    )
    parser.add_argument("-n", action="store_true", help="stdin from /dev/null (do not forward)")
    parser.add_argument("-l", dest="login", default=None, help="login name (ignored)")
    parser.add_argument(
        "-o", dest="options", action="append", default=[], help="ssh option Name=value"
    )
    for letter in SSH_VALUE_OPTIONS.replace("l", "").replace("o", ""):
        parser.add_argument(f"-{letter}", dest=f"ignored_{letter}", help="ssh option (ignored)")
    for letter in SSH_FLAG_OPTIONS.replace("n", ""):
        parser.add_argument(
            f"-{letter}", dest=f"flag_{letter}", action="store_true", help="ssh flag (ignored)"
        )
    parser.add_argument("host", nargs="?", help="descriptor node id (or a host only one node has)")
    parser.add_argument("command", nargs="*", help="the command and its words")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(options, [HOST, COMMAND...]): options end at the first word that is not one, as in
    ssh's getopt, so the command's own words (``-mca``, ``-l``) are never taken for options."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            return list(argv[:index]), list(argv[index + 1 :])
        if word == "--descriptor":
            index += 2
            continue
        if not word.startswith("-") or word == "-":
            break
        if not word.startswith("--"):
            # -xq, -p22, -p 22: a value option takes the rest of the word or the next word.
            for position, letter in enumerate(word[1:], start=1):
                if letter in SSH_VALUE_OPTIONS:
                    if position == len(word) - 1:
                        index += 1
                    break
        index += 1
    return list(argv[:index]), list(argv[index:])


def connect_timeout(options: Sequence[str]) -> float:
    """ssh's ``-o ConnectTimeout=N`` if given, else the tools' default."""
    for option in options:
        name, _, value = option.replace(" ", "=", 1).partition("=")
        if name.lower() == "connecttimeout":
            try:
                seconds = float(value)
            except ValueError:
                raise UsageError(f"-o ConnectTimeout: not a number: {value!r}") from None
            if seconds > 0:
                return seconds
    return CONNECT_TIMEOUT_S


def find_node(descriptor: ClusterDescriptor, host: str) -> NodeSpec:
    """The node called ``host`` (user@ stripped), or the only one whose address it is."""
    name = host.rpartition("@")[2]
    for node in descriptor.nodes:
        if node.id == name:
            return node
    by_address = [node for node in descriptor.nodes if node.host == name]
    if len(by_address) == 1:
        return by_address[0]
    if by_address:
        ids = ", ".join(node.id for node in by_address)
        raise UsageError(f"{name}: several nodes have this address ({ids}); use a node id")
    raise UsageError(f"{name}: no such node in {descriptor.source or 'the descriptor'}")


def stdin_usable() -> bool:
    try:
        os.fstat(0)
    except OSError:
        return False
    return True


class Relay:
    """Moves bytes between this process's stdio and one remote run, until it ends."""

    def __init__(self, hub: Hub, run: RemoteRun, forward_stdin: bool, timeout: float) -> None:
        self.hub = hub
        self.run = run
        self.stdin_open = forward_stdin
        self.watching_stdin = False
        self.connect_timeout = timeout
        self.broken_pipe = False

    def loop(self, flag: SignalFlag) -> None:
        hub, run = self.hub, self.run
        hub.watch_fd(flag.read_fd)
        cancel_by: float | None = None
        while not run.finished:
            self._watch_stdin(self.stdin_open and run.input_credit > 0)
            replies, fds = hub.wait(POLL_S)
            for _, message, body in replies:
                if message.id == run.request.id:
                    chunk = run.take(message, body)
                    if chunk is not None:
                        self._output(*chunk)
            if 0 in fds:
                self._forward_stdin()
            if flag.read_fd in fds:
                flag.drain()
            now = hub.clock()
            if (flag.received or self.broken_pipe) and cancel_by is None:
                run.cancel()
                cancel_by = now + CANCEL_WAIT_S
            if flag.count > 1 or (cancel_by is not None and now > cancel_by):
                return  # a second signal, or the agent never confirmed: leave now
            run.check_liveness(now, self.connect_timeout, SILENCE_TIMEOUT_S)

    def _watch_stdin(self, wanted: bool) -> None:
        if wanted != self.watching_stdin:
            (self.hub.watch_fd if wanted else self.hub.unwatch_fd)(0)
            self.watching_stdin = wanted

    def _forward_stdin(self) -> None:
        run = self.run
        try:
            data = os.read(0, min(run.input_credit, DATA_CHUNK_BYTES))
        except OSError:
            data = b""  # a stdin that cannot be read ends like an empty one
        run.input_credit -= len(data)
        run.session.send(DataChunk(id=run.request.id, eof=not data), data)
        if not data:
            self.stdin_open = False
            self._watch_stdin(False)

    def _output(self, stream: Stream, data: bytes) -> None:
        if self.broken_pipe:
            return
        try:
            write_all(1 if stream is Stream.STDOUT else 2, data)
        except BrokenPipeError:
            self.broken_pipe = True  # our reader left: stop the remote command too
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.broken_pipe = True


def exit_status(run: RemoteRun, flag: SignalFlag, broken_pipe: bool) -> int:
    """zrsh's own exit status, as ssh would give it; the reason on stderr when it failed."""
    if flag.received is not None:
        return signal_exit_status(flag.received)
    if broken_pipe:
        return signal_exit_status(signal.SIGPIPE)
    ended = run.exit
    if ended is None:
        print(f"zrsh: {run.node_id}: {run.error or 'no exit status'}", file=sys.stderr)
        return SSH_FAILURE
    if ended.exit_status is not None:
        return ended.exit_status & 0xFF
    try:
        return signal_exit_status(signal.Signals[f"SIG{ended.exit_signal}"])
    except KeyError:
        return SSH_FAILURE


def remote_shell(argv: Sequence[str]) -> int:
    options, rest = split_argv(argv)
    args = build_parser().parse_args([*options, "--", *rest])
    if args.host is None:
        raise UsageError("a HOST is needed (usage: zrsh [ssh options] [user@]HOST COMMAND...)")
    if not args.command:
        raise UsageError("a COMMAND is needed (no interactive login over the agents)")
    timeout = connect_timeout(args.options)
    node = find_node(find_descriptor(args.descriptor), args.host)
    forward = not args.n and stdin_usable()
    command = " ".join(args.command)
    flag = SignalFlag()
    hub = Hub(targets_for([node]))
    try:
        session = hub.sessions[node.id]
        request = RunRequest(id="zrsh-1", command=command, stdin=forward)
        run = RemoteRun(session, request, hub.clock(), keep_output=False)
        session.send(request)
        relay = Relay(hub, run, forward, timeout)
        relay.loop(flag)
        return exit_status(run, flag, relay.broken_pipe)
    finally:
        hub.close()
        flag.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return remote_shell(sys.argv[1:] if argv is None else argv)
    except (UsageError, ClientSetupError, DescriptorError) as exc:
        print(f"zrsh: {exc}", file=sys.stderr)
        return SSH_FAILURE


if __name__ == "__main__":
    sys.exit(main())
