"""zcp: copy files to many nodes, or gather them back, through the ZeroMQ agents.

    zcp FILE... 'node[0-7]':/dir          # every FILE into /dir on each node
    zcp big.bin 'node[0-7]':/dir/new.bin  # one file under another name
    zcp --gather 'node[0-7]':/var/log/x.log ./logs   # ./logs/node0/x.log, ./logs/node1/...

Each file goes to each node as one ``put`` (agent_files.py on the node: only below its
--files-root, written under a temporary name, checked against the SHA-256 the client sent,
fsynced and renamed, mode kept), in chunks within the agent's grants; a local file is read
once however many nodes it goes to (zcp_transfers.py). ``--gather`` fetches with ``get``
and writes each node's copy as atomically (temporary name, fsync, rename, mode kept).

Every node and file ends in a table on stderr, as zrun's (zrun_report.py): the exit status
is 0 when every copy landed and checked; 1 when a node refused or failed one (a path
outside its files root, no such directory, a full disk, a checksum that differs); 255 when
a node could not be reached or was lost; 130 after Ctrl-C, which cancels every transfer
(no partial file is left under a final name); 2 for bad arguments, node sets or files.
The descriptor comes from --descriptor, $ZRSH_DESCRIPTOR or a default path, as for zrun.

Try it:
    python 03-cluster-runner-simulation/zcp.py --descriptor d.toml setup.sh 'node[0-1]:/srv/zcp'
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq

from cluster_runner_simulation.agent_client import (
    SILENCE_TIMEOUT_S,
    ClientSetupError,
    Hub,
    SignalFlag,
    ToolArgumentParser,
    UsageError,
    find_descriptor,
    targets_for,
)
from cluster_runner_simulation.agent_protocol import GetRequest, PutRequest
from cluster_runner_simulation.descriptor import ClusterDescriptor, DescriptorError
from cluster_runner_simulation.nodeset import NodeSetError, fold
from cluster_runner_simulation.zcp_transfers import GetJob, Job, JobState, PutJob, SourceFile
from cluster_runner_simulation.zrun_report import NodeResult, Outcome, exit_status, print_table

POLL_S: Final = 0.1
CANCEL_WAIT_S: Final = 3.0
PROGRESS_AFTER_S: Final = 1.0
STATUS_USAGE: Final = 2
OUTCOMES: Final = {
    JobState.DONE: Outcome.OK,
    JobState.FAILED: Outcome.FAILED,
    JobState.UNREACHABLE: Outcome.UNREACHABLE,
    JobState.LOST: Outcome.LOST,
    JobState.CANCELLED: Outcome.CANCELLED,
}


@dataclass(frozen=True)
class Remote:
    """``NODESET:PATH``: the node names and the path on each."""

    nodes: tuple[str, ...]
    path: str


def is_remote(text: str) -> bool:
    """scp's rule: a colon before any slash means NODESET:PATH."""
    head, colon, _ = text.partition(":")
    return bool(colon) and "/" not in head and bool(head)


def parse_remote(text: str, descriptor: ClusterDescriptor) -> Remote:
    nodeset, _, path = text.partition(":")
    try:
        nodes = descriptor.expand(nodeset)
    except NodeSetError as exc:
        raise UsageError(f"bad node set in {text!r}: {exc}") from None
    unknown = descriptor.unknown(nodes)
    if unknown:
        raise UsageError(f"unknown node(s) {fold(unknown)} in {text!r}")
    if not path:
        raise UsageError(f"{text!r}: a path is needed after the ':'")
    return Remote(tuple(nodes), path)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolArgumentParser(
        prog="zcp",
        description="Copy files to (or --gather them from) many nodes through their agents.",
    )
    parser.add_argument(
        "--gather", action="store_true", help="NODESET:PATH... LOCALDIR: fetch into LOCALDIR/NODE/"
    )
    parser.add_common_arguments()
    parser.add_argument(
        "paths", nargs="+", help="FILE... NODESET:DIR, or with --gather the reverse"
    )
    return parser


class Copier:
    """Runs every job (each node's files one after another, all nodes at once)."""

    def __init__(self, hub: Hub, queues: dict[str, list[Job]], sources: Sequence[SourceFile]):
        self.hub = hub
        self.queues = queues
        self.sources = sources
        self.active: dict[str, Job] = {}
        self.done: list[tuple[str, Job]] = []
        self.moved = 0
        self.stopped_by: int | None = None
        self.cancel_by: float | None = None

    def run(self, flag: SignalFlag, connect_timeout: float, progress: bool) -> None:
        hub = self.hub
        hub.watch_fd(flag.read_fd)
        started = hub.clock()
        for node_id in list(self.queues):
            self._next(node_id)
        while self.active:
            self._pump()
            replies, fds = hub.wait(POLL_S)
            for session, message, body in replies:
                job = self.active.get(session.node_id)
                if job is not None and message.id == job.request.id:
                    self.moved += job.take(message, body)
            if flag.read_fd in fds:
                flag.drain()
            now = hub.clock()
            if flag.received is not None and self.stopped_by is None:
                self.stop(flag.received)
            for node_id, job in list(self.active.items()):
                self._check(job, now, connect_timeout)
                if job.finished:
                    self.done.append((node_id, job))
                    self._next(node_id)
            if flag.count > 1 or (self.cancel_by is not None and now > self.cancel_by):
                break
            if progress and now - started > PROGRESS_AFTER_S:
                self._show_progress(now - started)
        for node_id, job in self.active.items():
            job.fail("cancelled; the agent did not confirm in time", JobState.CANCELLED)
            self.done.append((node_id, job))
        if progress:
            sys.stderr.write("\r\033[K")

    def _next(self, node_id: str) -> None:
        self.active.pop(node_id, None)
        queue = self.queues[node_id]
        if queue and self.stopped_by is None:
            job = queue.pop(0)
            job.sent_at = self.hub.clock()
            job.start()
            self.active[node_id] = job

    def _pump(self) -> None:
        for source in self.sources:
            puts = [j for j in self.active.values() if isinstance(j, PutJob) and j.source is source]
            slowest = min((j.offset for j in puts), default=source.read_to)
            for job in puts:
                self.moved += job.pump(slowest)
            source.release_below(min((j.offset for j in puts), default=source.size))

    def _check(self, job: Job, now: float, connect_timeout: float) -> None:
        session = job.session
        if job.state == JobState.SENT and now - job.sent_at > connect_timeout:
            job.fail(
                f"agent at {session.target.endpoint} did not answer within {connect_timeout:g}s",
                JobState.UNREACHABLE,
            )
        elif job.state == JobState.MOVING and session.last_heard is not None:
            if now - session.last_heard > SILENCE_TIMEOUT_S:
                job.fail(f"agent at {session.target.endpoint} fell silent", JobState.LOST)

    def stop(self, signum: int) -> None:
        self.stopped_by = signum
        self.cancel_by = self.hub.clock() + CANCEL_WAIT_S
        for job in self.active.values():
            job.cancel()

    def _show_progress(self, elapsed: float) -> None:
        megabytes = self.moved / 1e6
        rate = megabytes / elapsed
        text = f"zcp: {len(self.done)} done, {len(self.active)} moving, {megabytes:.0f} MB"
        sys.stderr.write(f"\r\033[K{text} ({rate:.0f} MB/s)")
        sys.stderr.flush()


def node_results(done: Sequence[tuple[str, Job]], now: float) -> list[NodeResult]:
    """One result per node: its first failure, else ok (with what landed where)."""
    by_node: dict[str, list[Job]] = {}
    for node_id, job in done:
        by_node.setdefault(node_id, []).append(job)
    results = []
    for node_id, jobs in by_node.items():
        failed = [job for job in jobs if job.state != JobState.DONE]
        if failed:
            first = failed[0]
            outcome = OUTCOMES.get(first.state, Outcome.FAILED)
            results.append(NodeResult(node_id, outcome, error=first.error))
        else:
            results.append(NodeResult(node_id, Outcome.OK, seconds=now - jobs[0].sent_at))
    return results


@dataclass
class Plan:
    """What to copy where, checked before any node is contacted."""

    nodes: tuple[str, ...]
    sources: list[SourceFile]  # to the nodes
    remote_path: str = ""
    directory: bool = False  # the remote path must be a directory
    gathers: tuple[Remote, ...] = ()  # from the nodes
    local_dir: Path = Path()


def plan_put(paths: Sequence[str], descriptor: ClusterDescriptor) -> Plan:
    *local_paths, destination = paths
    if not local_paths or not is_remote(destination) or any(is_remote(p) for p in local_paths):
        raise UsageError("usage: zcp FILE... NODESET:DIR  (or zcp --gather NODESET:PATH... DIR)")
    remote = parse_remote(destination, descriptor)
    sources = []
    for name in local_paths:
        if not Path(name).is_file():
            raise UsageError(f"{name}: not a regular file (or no such file)")
        try:
            sources.append(SourceFile(Path(name)))
        except OSError as exc:
            raise UsageError(f"{name}: {exc.strerror}") from None
    directory = len(sources) > 1 or remote.path.endswith("/")
    return Plan(remote.nodes, sources, remote.path.rstrip("/") or "/", directory)


def plan_gather(paths: Sequence[str], descriptor: ClusterDescriptor) -> Plan:
    *remote_paths, destination = paths
    if not remote_paths or is_remote(destination) or not all(map(is_remote, remote_paths)):
        raise UsageError("usage: zcp --gather NODESET:PATH... LOCALDIR")
    remotes = tuple(parse_remote(text, descriptor) for text in remote_paths)
    for remote in remotes:
        if remote.path.endswith("/") or not Path(remote.path).name:
            raise UsageError(f"{remote.path}: --gather fetches files, not directories")
    nodes = tuple(dict.fromkeys(node for remote in remotes for node in remote.nodes))
    local_dir = Path(destination)
    try:
        for node in nodes:
            (local_dir / node).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{destination}: cannot create a folder there: {exc.strerror}") from None
    return Plan(nodes, [], gathers=remotes, local_dir=local_dir)


def make_jobs(plan: Plan, hub: Hub) -> dict[str, list[Job]]:
    queues: dict[str, list[Job]] = {}
    for node in plan.nodes:
        session = hub.sessions[node]
        jobs: list[Job] = []
        for index, source in enumerate(plan.sources):
            request = PutRequest(
                id=f"put-{index}",
                path=plan.remote_path,
                name=source.path.name,
                directory=plan.directory,
                mode=source.mode,
                size=source.size,
            )
            jobs.append(PutJob(session, source, request, 0.0))
        for index, remote in enumerate(plan.gathers):
            if node in remote.nodes:
                local = plan.local_dir / node / Path(remote.path).name
                jobs.append(
                    GetJob(session, GetRequest(id=f"get-{index}", path=remote.path), local, 0.0)
                )
        queues[node] = jobs
    return queues


def zcp(plan: Plan, descriptor: ClusterDescriptor, args: argparse.Namespace) -> int:
    targets = targets_for(descriptor.node(node) for node in plan.nodes)
    progress = not args.no_progress and sys.stderr.isatty()
    flag = SignalFlag()
    hub = Hub(targets)
    try:
        copier = Copier(hub, make_jobs(plan, hub), plan.sources)
        copier.run(flag, args.connect_timeout, progress)
    finally:
        hub.close()
        flag.close()
        for source in plan.sources:
            source.close()
    order = {node: index for index, node in enumerate(plan.nodes)}
    results = sorted(node_results(copier.done, time.monotonic()), key=lambda r: order[r.node_id])
    print_table(results, sys.stderr)
    return exit_status(results, copier.stopped_by)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        descriptor = find_descriptor(args.descriptor)
        if args.gather:
            plan = plan_gather(args.paths, descriptor)
        else:
            plan = plan_put(args.paths, descriptor)
        return zcp(plan, descriptor, args)
    except (UsageError, ClientSetupError, DescriptorError) as exc:
        print(f"zcp: error: {exc}", file=sys.stderr)
        return STATUS_USAGE
    except zmq.ZMQError as exc:  # EMFILE: more nodes at once than ulimit -n allows
        print(f"zcp: error: cannot open the connections: {exc} (raise ulimit -n)", file=sys.stderr)
        return STATUS_USAGE


if __name__ == "__main__":
    sys.exit(main())
