"""A performance-test campaign over the ZeroMQ context: three schedules, a durable journal, resume.

What it connects: one CURVE-encrypted DEALER per node to that node's agent
(03-cluster-runner-simulation/zmq_node_agent.py, port 5580 by default), and one DEALER to a
journal collector. By default the collector is embedded: a thread of this process binds a
ROUTER on 127.0.0.1 (any free port) and group-commits the journal file. With
``collector = "tcp://HOST:PORT"`` in the config it writes to an external
``zmq_journal.py collector`` instead.

What flows: for each schedule (all servers, leaf-to-leaf pairs, increasing-size groups) the
simulated all-reduce test runs on every group, node-exclusively; each result is journaled and
``write()`` returns only once it is fsynced. Record ids are ``RUN_ID/schedule/test/nodes``, so
a campaign that crashed is resumed by running it again with the same run id: groups whose id
is already in the journal are skipped. At the end it prints a report per schedule.

Everything it uses is imported from 03-cluster-runner-simulation; nothing is copied.

Run it (no real hosts needed: --local N starts N agents on loopback with fresh keys):

    python examples/cluster-coordinator/campaign.py \
        --config examples/cluster-coordinator/campaign.toml --local 4
    # against real nodes, with the descriptor and keys from examples/worker-nodes:
    python examples/cluster-coordinator/campaign.py --config campaign.toml --descriptor cluster.toml

Exit codes: 0 every group passed, 1 some group failed, 2 bad arguments or config, 3 the
cluster or the journal could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import ErrorExit, run_interruptible
from cluster_runner_simulation.context_common import ContextBuildError
from cluster_runner_simulation.descriptor import (
    ClusterDescriptor,
    DescriptorError,
    load_descriptor,
)
from cluster_runner_simulation.journal_collector import CollectorConfig, JournalCollector
from cluster_runner_simulation.journal_format import JournalCorruption, scan_journal
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.protocols import JournalError, PerfTestResult
from cluster_runner_simulation.scheduling import (
    SCHEDULE_NAMES,
    TEST_NAME,
    build_schedule,
    run_perf_test_scheduled,
)
from cluster_runner_simulation.zmq_operational_context import build_zmq_context

EMBEDDED = "embedded"
COLLECTOR_START_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0  # how long each node's agent may take to answer at start-up
LOCAL_LEAVES = ("leaf-a", "leaf-b")  # --local nodes alternate between two leaves


class CampaignError(Exception):
    """A clear, one-line reason the campaign cannot run (exit code 2 or 3)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CampaignConfig:
    name: str
    run_id: str
    descriptor: Path | None
    journal: Path
    schedules: list[str]
    collector: str


def load_config(path: Path) -> CampaignConfig:
    """Read campaign.toml; paths in it are relative to the file."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise CampaignError(f"{path}: cannot read: {error.strerror}", 2) from None
    except tomllib.TOMLDecodeError as error:
        raise CampaignError(f"{path}: not valid TOML: {error}", 2) from None
    section = data.get("campaign")
    if not isinstance(section, dict):
        raise CampaignError(f"{path}: missing [campaign] table", 2)

    def text(key: str, default: str | None = None) -> str:
        value = section.get(key, default)
        if not isinstance(value, str) or not value:
            raise CampaignError(f"{path}: campaign.{key}: must be a non-empty string", 2)
        return value

    schedules = section.get("schedules", list(SCHEDULE_NAMES))
    if not isinstance(schedules, list) or not all(s in SCHEDULE_NAMES for s in schedules):
        raise CampaignError(
            f"{path}: campaign.schedules: must be a list of {', '.join(SCHEDULE_NAMES)}", 2
        )
    descriptor = section.get("descriptor")
    return CampaignConfig(
        name=text("name"),
        run_id=text("run_id"),
        descriptor=path.parent / descriptor if isinstance(descriptor, str) else None,
        journal=path.parent / text("journal"),
        schedules=list(schedules),
        collector=text("collector", EMBEDDED),
    )


# --- The journal: an embedded collector thread, or an external one ----------------------------


class EmbeddedCollector:
    """Runs a JournalCollector in its own thread; its socket never leaves that thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.endpoint = ""
        self.error: BaseException | None = None
        self._collector: JournalCollector | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-collector", daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(COLLECTOR_START_TIMEOUT_S) or self._collector is None:
            raise CampaignError(f"journal collector did not start: {self.error}", 3)
        return self.endpoint

    def _run(self) -> None:
        try:
            collector = JournalCollector(
                CollectorConfig(self.path, port=0)
            )  # loopback, a free port
        except (JournalError, OSError) as error:  # corrupt or unusable journal, bad bind
            self.error = error
            self._ready.set()
            return
        self._collector = collector
        self.endpoint = collector.endpoint
        self._ready.set()
        try:
            collector.serve()
        finally:
            collector.close()

    def stop(self) -> None:
        if self._collector is not None:
            self._collector.stopping = True
        self._thread.join(timeout=5)


def journaled_ids(path: Path) -> set[str]:
    """Record ids already durable in the journal (a torn last line does not count)."""
    if not path.exists():
        return set()
    try:
        return set(scan_journal(path).record_ids)
    except JournalCorruption as error:
        raise CampaignError(f"journal {path} is corrupt: {error}", 3) from None


# --- The campaign ------------------------------------------------------------------------------


@dataclass
class ScheduleReport:
    schedule: str
    groups: int = 0
    skipped: int = 0
    results: list[PerfTestResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PerfTestResult]:
        return [r for r in self.results if r.exit_status != 0]


def record_id(run_id: str, schedule: str, group: Sequence[str]) -> str:
    """The id scheduling.run_perf_test gives a group's result; used to skip finished groups."""
    return f"{run_id}/{schedule}/{TEST_NAME}/{'+'.join(group)}"


async def run_campaign(
    config: CampaignConfig, descriptor: ClusterDescriptor, endpoint: str
) -> list[ScheduleReport]:
    done = journaled_ids(config.journal)
    journal = ZmqJournalWriter(endpoint)
    try:
        try:
            opcon = await build_zmq_context(
                descriptor, None, journal, connect_timeout=CONNECT_TIMEOUT_S
            )
        except ContextBuildError as error:
            raise CampaignError(f"cannot reach the cluster: {error}", 3) from None
        leaf_of = {node.id: node.leaf for node in descriptor.nodes}
        reports = []
        try:
            for schedule in config.schedules:
                groups = build_schedule(schedule, leaf_of)
                todo = [g for g in groups if record_id(config.run_id, schedule, g) not in done]
                report = ScheduleReport(schedule, groups=len(groups))
                report.skipped = len(groups) - len(todo)
                print(
                    f"[{schedule}] {len(groups)} groups, {report.skipped} already in the journal,"
                    f" running {len(todo)}",
                    flush=True,
                )
                if todo:
                    report.results = await run_perf_test_scheduled(
                        opcon, schedule, todo, run_id=config.run_id
                    )
                reports.append(report)
        finally:
            await opcon.close()
    finally:
        await journal.close()
    return reports


def render_report(config: CampaignConfig, reports: list[ScheduleReport], elapsed: float) -> str:
    lines = [
        f"campaign {config.name} (run id {config.run_id}), journal {config.journal}",
        "",
        "| schedule | groups | skipped (resumed) | ran | failed | busbw GB/s min/median/max |",
        "|----------|--------|-------------------|-----|--------|---------------------------|",
    ]
    for report in reports:
        busbw = [r.metrics["busbw_gbps"] for r in report.results if "busbw_gbps" in r.metrics]
        figures = (
            f"{min(busbw):.2f} / {statistics.median(busbw):.2f} / {max(busbw):.2f}"
            if busbw
            else "-"
        )
        lines.append(
            f"| {report.schedule} | {report.groups} | {report.skipped} | {len(report.results)}"
            f" | {len(report.failed)} | {figures} |"
        )
    for report in reports:
        for result in report.failed:
            errors = result.extra.get("errors") or result.extra.get("failed_exit_status")
            lines.append(f"FAILED {result.record_id}: {errors}")
    lines.append("")
    lines.append(f"finished in {elapsed:.1f} s")
    return "\n".join(lines)


def local_descriptor(agents: LocalAgents, directory: Path) -> ClusterDescriptor:
    """A descriptor for the agents that --local started (written to disk, then validated)."""
    lines = ['[cluster]\nname = "local"\n']
    for index, agent in enumerate(agents.agents):
        lines.append(
            f'[[nodes]]\nid = "{agent.node_id}"\nhost = "{agent.host}"\nzmq_port = {agent.port}\n'
            f'curve_keys_dir = "{agents.keys_dir}"\nleaf = "{LOCAL_LEAVES[index % 2]}"\n'
        )
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines))
    return load_descriptor(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="campaign TOML file")
    parser.add_argument("--descriptor", type=Path, help="cluster descriptor (overrides config)")
    parser.add_argument("--journal", type=Path, help="journal file (overrides config)")
    parser.add_argument("--run-id", help="run id (overrides config; keep it to resume)")
    parser.add_argument(
        "--local", type=int, metavar="N", help="start N local agents instead of using a descriptor"
    )
    return parser


def _setup(args: argparse.Namespace) -> CampaignConfig:
    config = load_config(args.config)
    config.descriptor = args.descriptor or config.descriptor
    config.journal = args.journal or config.journal
    config.run_id = args.run_id or config.run_id
    if args.local is not None and not 1 <= args.local <= 64:
        raise CampaignError("--local: must be between 1 and 64", 2)
    if args.local is None and config.descriptor is None:
        raise CampaignError("no descriptor: give --descriptor, --local N or campaign.descriptor", 2)
    return config


def _run(args: argparse.Namespace, config: CampaignConfig) -> int:
    try:
        config.journal.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CampaignError(f"journal: {exc.filename}: {exc.strerror}", 3) from None
    collector = EmbeddedCollector(config.journal) if config.collector == EMBEDDED else None
    endpoint = collector.start() if collector else config.collector
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="campaign-") as scratch:
            if args.local is not None:
                with LocalAgents(args.local) as agents:
                    descriptor = local_descriptor(agents, Path(scratch))
                    reports = asyncio.run(run_campaign(config, descriptor, endpoint))
            else:
                assert config.descriptor is not None
                descriptor = load_descriptor(config.descriptor)
                reports = asyncio.run(run_campaign(config, descriptor, endpoint))
    finally:
        if collector:
            collector.stop()
    print(render_report(config, reports, time.monotonic() - started))
    return 1 if any(report.failed for report in reports) else 0


# Exit codes: 2 bad input, 3 a journal or cluster that failed (CampaignError says which).
EXITS: Final = (ErrorExit(DescriptorError, 2), ErrorExit(JournalError, 3, "journal: "))
RESUME_NOTE: Final = "; run it again with the same run id to resume"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_interruptible("campaign", lambda: _run(args, _setup(args)), EXITS, RESUME_NOTE)
    except CampaignError as error:
        print(f"campaign: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
