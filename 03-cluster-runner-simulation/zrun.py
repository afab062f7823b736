"""zrun: run one command on many nodes through their ZeroMQ agents, as clush or pdsh would.

    zrun -w 'node[0-63]' hostname                 # output streamed, "node7: ..." per line
    zrun -b -w @leaf-a -x node3 'nvidia-smi -L'   # gathered: identical outputs folded
    zrun --json -a --timeout 30 'uptime'          # one JSON document for machines

Targets are node sets of the descriptor (nodeset.py: ranges, lists, ``@group`` for a
[groups] entry, a leaf or a rack, ``@all``; ``-x`` excludes). Every node gets one ``run``
request on its own CURVE connection (agent_client.py), at most ``--fanout`` at a time.

No node is silently lost: each one ends in the table zrun prints on stderr (nodes folded by
outcome, and why each unreachable, lost or timed-out node failed), and the exit status is
0 only when every node exited 0 (zrun_report.py: 1 failed, 124 timed out, 255 not reached,
128+N after signal N). Ctrl-C cancels every remote command (the agents kill their process
groups) and zrun exits 130; a second Ctrl-C leaves at once. On a terminal a progress line
shows how many nodes are done while a long command runs.

The descriptor: ``--descriptor FILE``, else $ZRSH_DESCRIPTOR, else
~/.config/zmq-cluster/cluster.toml or /etc/zmq-cluster/cluster.toml. zrun imports only
pyzmq, msgspec and the protocol, so it starts fast (``python -X importtime``).

Try it (python -m cluster_runner_simulation.testing.cluster writes a descriptor):
    python 03-cluster-runner-simulation/zrun.py --descriptor d.toml -b -a uname -r
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import zmq

from cluster_patterns.cli_args import positive_float, positive_int
from cluster_runner_simulation.agent_client import (
    CONNECT_TIMEOUT_S,
    SILENCE_TIMEOUT_S,
    ClientSetupError,
    Hub,
    RemoteRun,
    SignalFlag,
    Target,
    ToolArgumentParser,
    UsageError,
    find_descriptor,
    signal_exit_status,
    targets_for,
)
from cluster_runner_simulation.agent_protocol import MAX_TIMEOUT_S, RunRequest, Stream
from cluster_runner_simulation.descriptor import ClusterDescriptor, DescriptorError
from cluster_runner_simulation.nodeset import NodeSetError, fold
from cluster_runner_simulation.zrun_report import (
    NodeResult,
    Outcome,
    exit_status,
    json_document,
    never_started,
    print_gathered,
    print_table,
    result_of,
)

DEFAULT_FANOUT: Final = 64  # as clush
POLL_S: Final = 0.1
PROGRESS_AFTER_S: Final = 1.0  # a progress line only for runs that take longer than this
TIMEOUT_GRACE_S: Final = 5.0  # past --timeout, how long to wait for the agent's own verdict
CANCEL_WAIT_S: Final = 3.0  # after Ctrl-C, how long to wait for the agents' "cancelled"
STATUS_USAGE: Final = 2


@dataclass(frozen=True)
class ZrunConfig:
    command: str
    nodes: tuple[str, ...]
    gather: bool = False
    json: bool = False
    timeout: float | None = None
    fanout: int = DEFAULT_FANOUT
    connect_timeout: float = CONNECT_TIMEOUT_S
    progress: bool = True


def timeout_seconds(text: str) -> float:
    value = positive_float(text)
    if value > MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TIMEOUT_S:g} s, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ToolArgumentParser(
        prog="zrun",
        description="Run COMMAND on many nodes through their ZeroMQ agents (like clush/pdsh).",
    )
    parser.add_argument(
        "-w", dest="targets", action="append", default=[], help="node set: node[0-7],@group"
    )
    parser.add_argument(
        "-x", dest="excluded", action="append", default=[], help="node set to leave out"
    )
    parser.add_argument("-a", "--all", action="store_true", help="every node of the descriptor")
    parser.add_argument("-b", "--gather", action="store_true", help="fold identical outputs")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "-t", "--timeout", type=timeout_seconds, default=None, help="seconds per command"
    )
    parser.add_argument(
        "-f", "--fanout", type=positive_int, default=DEFAULT_FANOUT, help="nodes at once"
    )
    parser.add_common_arguments()
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its words")
    return parser


def select_nodes(descriptor: ClusterDescriptor, args: argparse.Namespace) -> tuple[str, ...]:
    """The descriptor nodes that -w / -a name, minus -x; unknown names are an error."""
    if not args.targets and not args.all:
        raise UsageError("no nodes: give -w NODESET or -a")
    known = descriptor.node_ids()
    try:
        wanted = list(known) if args.all else []
        for text in args.targets:
            wanted += descriptor.expand(text)
        excluded = {name for text in args.excluded for name in descriptor.expand(text)}
    except NodeSetError as exc:
        raise UsageError(f"bad node set: {exc}") from None
    unknown = descriptor.unknown(wanted)
    if unknown:
        raise UsageError(f"unknown node(s) {fold(unknown)}; the descriptor has {fold(known)}")
    chosen = tuple(name for name in dict.fromkeys(wanted) if name not in excluded)
    if not chosen:
        raise UsageError("no nodes left after -x")
    return chosen


class LinePrinter:
    """Streamed output: each complete line as ``node: line``; a progress line below them."""

    def __init__(self, progress: bool) -> None:
        self.partial: dict[tuple[str, Stream], bytes] = {}
        self.progress_shown = False
        self.progress = progress
        self.broken = False  # stdout's reader left: nothing more is written to it

    def chunk(self, node_id: str, stream: Stream, data: bytes) -> None:
        key = (node_id, stream)
        lines = (self.partial.pop(key, b"") + data).split(b"\n")
        self.partial[key] = lines.pop()
        if lines:
            self._emit(node_id, stream, lines)

    def flush(self, node_id: str) -> None:
        for stream in (Stream.STDOUT, Stream.STDERR):
            rest = self.partial.pop((node_id, stream), b"")
            if rest:
                self._emit(node_id, stream, [rest])

    def _emit(self, node_id: str, stream: Stream, lines: list[bytes]) -> None:
        self.clear_progress()
        target = sys.stdout if stream is Stream.STDOUT else sys.stderr
        prefix = f"{node_id}: ".encode()
        target.buffer.write(b"".join(prefix + line + b"\n" for line in lines))
        target.buffer.flush()

    def show_progress(self, text: str) -> None:
        if self.progress:
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()
            self.progress_shown = True

    def clear_progress(self) -> None:
        if self.progress_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.progress_shown = False


OutputSink = Callable[[str, Stream, bytes], None]


class FanOut:
    """Runs the command on every target, at most ``fanout`` at once, until each one ended."""

    def __init__(self, hub: Hub, targets: Sequence[Target], config: ZrunConfig) -> None:
        self.hub = hub
        self.config = config
        self.waiting = deque(targets)
        self.running: dict[str, RemoteRun] = {}
        self.results: list[NodeResult] = []
        self.stopped_by: int | None = None
        self.cancel_by: float | None = None

    def run(self, flag: SignalFlag, on_output: OutputSink, on_tick: Callable[[], None]) -> None:
        hub = self.hub
        hub.watch_fd(flag.read_fd)
        while self.waiting or self.running:
            if self.stopped_by is None:
                self._start_more()
            replies, fds = hub.wait(POLL_S)
            for session, message, body in replies:
                run = self.running.get(session.node_id)
                if run is not None and message.id == run.request.id:
                    chunk = run.take(message, body)
                    if chunk is not None:
                        on_output(run.node_id, *chunk)
            if flag.read_fd in fds:
                flag.drain()
            now = hub.clock()
            if flag.received is not None and self.stopped_by is None:
                self.stop(flag.received)
            for run in list(self.running.values()):
                self._check(run, now)
            if flag.count > 1 or (self.cancel_by is not None and now > self.cancel_by):
                break  # a second signal, or agents that never confirmed: stop waiting
            on_tick()
        now = hub.clock()
        for run in list(self.running.values()):
            self._finish(run, now)

    def _start_more(self) -> None:
        while self.waiting and len(self.running) < self.config.fanout:
            target = self.waiting.popleft()
            try:
                session = self.hub.open(target)
            except zmq.ZMQError as exc:  # EMFILE, mostly: a fan-out beyond ulimit -n
                if self.running:
                    self.waiting.appendleft(target)  # again once a node is done
                    return
                why = f"cannot open a connection here: {exc} (lower --fanout, or raise ulimit -n)"
                self.results.append(NodeResult(target.node_id, Outcome.REFUSED, error=why))
                continue
            request = RunRequest(
                id="zrun-1", command=self.config.command, timeout=self.config.timeout
            )
            run = RemoteRun(session, request, self.hub.clock())
            session.send(request)
            self.running[target.node_id] = run

    def stop(self, signum: int) -> None:
        """Cancel every remote command (a signal, or our stdout is gone); start no more."""
        if self.stopped_by is not None:
            return
        self.stopped_by = signum
        self.cancel_by = self.hub.clock() + CANCEL_WAIT_S
        for run in self.running.values():
            run.cancel()
        while self.waiting:
            self.results.append(never_started(self.waiting.popleft().node_id, "not started"))

    def _check(self, run: RemoteRun, now: float) -> None:
        config = self.config
        run.check_liveness(now, config.connect_timeout, SILENCE_TIMEOUT_S)
        if config.timeout is not None and not run.finished:
            if now - run.sent_at > config.timeout + TIMEOUT_GRACE_S:
                run.error = f"no exit from the agent {TIMEOUT_GRACE_S:g}s after the timeout"
                run.cancel()
                self._finish(run, now)
                return
        if run.finished:
            self._finish(run, now)

    def _finish(self, run: RemoteRun, now: float) -> None:
        self.results.append(result_of(run, now))
        del self.running[run.node_id]
        self.hub.close_session(run.node_id)

    def progress(self, elapsed: float) -> str:
        done = len(self.results)
        failed = sum(1 for r in self.results if r.outcome is not Outcome.OK)
        total = done + len(self.running) + len(self.waiting)
        running = len(self.running)
        return f"zrun: {done}/{total} done, {failed} failed, {running} running ({elapsed:.1f}s)"


def zrun(config: ZrunConfig, targets: Sequence[Target]) -> int:
    printer = LinePrinter(config.progress and sys.stderr.isatty() and not config.json)
    streaming = not (config.gather or config.json)
    flag = SignalFlag()
    hub = Hub()
    fan_out = FanOut(hub, targets, config)
    started = hub.clock()

    def on_output(node_id: str, stream: Stream, data: bytes) -> None:
        if streaming:
            try:
                printer.chunk(node_id, stream, data)
            except BrokenPipeError:  # zrun ... | head: stop the remote commands too
                printer.broken = True
                fan_out.stop(signal.SIGPIPE)

    def on_tick() -> None:
        elapsed = hub.clock() - started
        if elapsed > PROGRESS_AFTER_S:
            printer.show_progress(fan_out.progress(elapsed))

    try:
        fan_out.run(flag, on_output, on_tick)
    finally:
        hub.close()
        flag.close()
        printer.clear_progress()
    order = {node_id: index for index, node_id in enumerate(config.nodes)}
    results = sorted(fan_out.results, key=lambda r: order.get(r.node_id, len(order)))
    if streaming and not printer.broken:
        for result in results:
            printer.flush(result.node_id)
    status = exit_status(results, fan_out.stopped_by)
    if config.json:
        sys.stdout.buffer.write(json_document(config.command, results, status))
        sys.stdout.flush()
        return status
    if config.gather:
        print_gathered(results, sys.stdout, sys.stderr)
    print_table(results, sys.stderr)
    return status


def config_from(args: argparse.Namespace, nodes: tuple[str, ...]) -> ZrunConfig:
    return ZrunConfig(
        command=" ".join(args.command),
        nodes=nodes,
        gather=args.gather,
        json=args.json,
        timeout=args.timeout,
        fanout=args.fanout,
        connect_timeout=args.connect_timeout,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            raise UsageError("a COMMAND is needed")
        descriptor = find_descriptor(args.descriptor)
        nodes = select_nodes(descriptor, args)
        targets = targets_for(descriptor.node(name) for name in nodes)
        return zrun(config_from(args, nodes), targets)
    except (UsageError, ClientSetupError, DescriptorError) as exc:
        print(f"zrun: error: {exc}", file=sys.stderr)
        return STATUS_USAGE
    except BrokenPipeError:
        return signal_exit_status(
            signal.SIGPIPE
        )  # our reader left (zrun ... | head), as a shell says
    finally:
        quiet_closed_stdout()


def quiet_closed_stdout() -> None:
    """If our reader left, point stdout at /dev/null: Python's exit flush would complain."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
