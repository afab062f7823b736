"""Shadow mode (migration phase 3): mirror commands to the other transport, safely.

Nothing here binds; the two wrapped executors connect. ``ShadowExecutor(primary, secondary)``
is an executor: the caller always gets exactly the primary's outcome (result or exception).
What happens to the copy depends on the command, as ``ShadowPolicy.mode`` decides:

* ``PROBE``: read-only commands on an allow-list (``hostname``, ``nvidia-smi -L``, ...).
  The copy runs at the same time, in the background; exit status and stdout must be equal.
* ``SERIAL``: everything else, a GPU test included. Two copies of a test on one node at once
  would share its GPUs and links and spoil both results, so the copy runs after the primary
  has finished, inside the caller's ``await``: the node stays reserved for the caller (by
  ``nodes_concurrency_set``) until both ran. Their outputs differ in every timing figure, so
  stdout is not compared: the exit status must be equal, and the parsed metrics (``busbw`` per
  message size, ``#wrong``) within ``rel_tolerance``. ``sample_every=N`` shadows one test in
  N, since each shadowed one takes twice its time.
* ``SKIP``: a test while ``serial_tests`` is off; not shadowed, only counted.

A ``stream()`` is not shadowed: it runs on the primary only.

The default tolerance, 25 % of busbw for messages of at least 1 MiB, is where a cluster starts
before it has measured its own noise: it lets ordinary run-to-run variation pass and flags a
link or a GPU that runs at half speed. ``mpi_repeat.py`` measures the noise (repeated runs
over both launchers) and derives the tolerance to use instead; integration-plan/
migration-strategy.md says when. On this 2-core machine's loopback the noise reaches 82 %
(docs/results/mpi-allreduce-repeat.md), so here only exit status and ``#wrong`` mean much.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Unpack

from cluster_runner_simulation.mpi_bench import BenchOutputError, parse_bench_output
from cluster_runner_simulation.protocols import (
    CommandResult,
    Env,
    NodeExecutorProtocol,
    StreamEvent,
    StreamOptions,
    SystemConfiguration,
)
from cluster_runner_simulation.scheduling import parse_result_line

MAX_DISCREPANCIES: Final = 1000  # kept in memory; further ones are only counted
DEFAULT_REL_TOLERANCE: Final = 0.25
DEFAULT_MIN_COMPARED_BYTES: Final = 1 << 20
# Read-only probes, matched against the whole command: only these run twice at once.
DEFAULT_PROBES: Final = tuple(
    re.compile(pattern)
    for pattern in (
        r"true",
        r"hostname( -[sf])?",
        r"uname( -[a-z]+)*",
        r"nproc",
        r"id( -[ung]+)?",
        r"nvidia-smi -L",
        r"nvidia-smi --query-gpu=[a-z_.,]+ --format=csv(,noheader)?(,nounits)?",
        r"cat /proc/(cpuinfo|meminfo|loadavg|version)",
        r"ibstat( -l)?",
        r"ibv_devinfo( -l)?",
        r"lscpu",
    )
)

log = logging.getLogger("migration")
Metrics = Callable[[str], Mapping[str, float]]


class ShadowMode(str, enum.Enum):
    PROBE = "probe"
    SERIAL = "serial"
    SKIP = "skip"


def bench_metrics(stdout: str, min_bytes: int = DEFAULT_MIN_COMPARED_BYTES) -> dict[str, float]:
    """``busbw_gbps@SIZE`` and ``wrong@SIZE`` of every result line of at least ``min_bytes``
    (nccl-tests or allreduce_bench output; the simulated test's single line too)."""
    try:
        rows = [(r.size_bytes, r.busbw_gbps, r.wrong or 0) for r in parse_bench_output(stdout).rows]
    except BenchOutputError:
        _, figures = parse_result_line(stdout)
        if not figures:
            return {}
        rows = [(int(figures["size_bytes"]), figures["busbw_gbps"], 0)]
    metrics: dict[str, float] = {}
    for size, busbw, wrong in rows:
        metrics[f"wrong@{size}"] = float(wrong)
        if size >= min_bytes:
            metrics[f"busbw_gbps@{size}"] = busbw
    return metrics


@dataclass(frozen=True)
class ShadowPolicy:
    """Which commands are shadowed how, and how close their metrics must be."""

    probes: tuple[re.Pattern[str], ...] = DEFAULT_PROBES
    serial_tests: bool = True
    sample_every: int = 1
    rel_tolerance: float = DEFAULT_REL_TOLERANCE
    metrics: Metrics = bench_metrics

    def __post_init__(self) -> None:
        if self.sample_every < 1 or not 0 <= self.rel_tolerance < 1:
            raise ValueError("sample_every must be at least 1 and rel_tolerance in [0, 1)")

    def mode(self, command: str) -> ShadowMode:
        if any(p.fullmatch(command.strip()) for p in self.probes):
            return ShadowMode.PROBE
        return ShadowMode.SERIAL if self.serial_tests else ShadowMode.SKIP

    def metric_differences(self, primary: CommandResult, secondary: CommandResult) -> list[str]:
        """The metrics of the two outputs that disagree, as 'name: a vs b (why)' lines."""
        left, right = self.metrics(primary.stdout_text), self.metrics(secondary.stdout_text)
        found = []
        for name in sorted(set(left) | set(right)):
            a, b = left.get(name), right.get(name)
            if a is None or b is None:
                found.append(f"{name}: only on the {'secondary' if a is None else 'primary'}")
            elif name.startswith("wrong@"):
                if a != b:
                    found.append(f"{name}: {a:g} vs {b:g}")
            elif abs(a - b) > self.rel_tolerance * max(abs(a), abs(b)):
                change = (b - a) / a * 100 if a else float("inf")
                found.append(
                    f"{name}: {a:g} vs {b:g} ({change:+.1f} %, over {self.rel_tolerance:.0%})"
                )
        return found


async def close_stream(events: AsyncIterator[StreamEvent]) -> None:
    """Close a wrapped stream now (its command is cancelled), not when it is collected."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Discrepancy:
    node_id: str
    command: str
    mode: ShadowMode
    primary_exit: int | None
    secondary_exit: int | None
    primary_stdout_sha: str
    secondary_stdout_sha: str
    detail: str


@dataclass
class ShadowStats:
    compared: int = 0
    mismatched: int = 0
    secondary_errors: int = 0
    serial_copies: int = 0
    not_shadowed: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)


class ShadowExecutor:
    """A/B: the caller gets the primary's outcome; the secondary's copy is only compared."""

    def __init__(
        self,
        primary: NodeExecutorProtocol,
        secondary: NodeExecutorProtocol,
        policy: ShadowPolicy | None = None,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.policy = policy or ShadowPolicy()
        self.stats = ShadowStats()
        self._comparisons: set[asyncio.Task[None]] = set()
        self._tests_seen = 0

    @property
    def node_id(self) -> str:
        return self.primary.node_id

    @property
    def discrepancies(self) -> list[Discrepancy]:
        return self.stats.discrepancies

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        mode = self.policy.mode(command)
        if mode is ShadowMode.SERIAL:
            self._tests_seen += 1
            if (self._tests_seen - 1) % self.policy.sample_every:
                mode = ShadowMode.SKIP
        if mode is ShadowMode.SKIP:
            self.stats.not_shadowed += 1
            return await self.primary.run(command, timeout=timeout, env=env, cwd=cwd)

        def copy() -> Coroutine[Any, Any, CommandResult]:
            return self.secondary.run(command, timeout=timeout, env=env, cwd=cwd)

        if mode is ShadowMode.PROBE:
            return await self._run_probe(command, timeout, env, cwd, asyncio.create_task(copy()))
        result = await self.primary.run(command, timeout=timeout, env=env, cwd=cwd)
        self.stats.serial_copies += 1
        # After the primary, never beside it; the caller waits, so the node stays reserved.
        await self._compare(command, mode, result, asyncio.ensure_future(copy()))
        return result

    async def _run_probe(
        self,
        command: str,
        timeout: float | None,
        env: Env,
        cwd: str | None,
        shadow: asyncio.Task[CommandResult],
    ) -> CommandResult:
        try:
            result = await self.primary.run(command, timeout=timeout, env=env, cwd=cwd)
        except BaseException:
            shadow.cancel()  # nothing to compare against
            raise
        compare = asyncio.create_task(self._compare(command, ShadowMode.PROBE, result, shadow))
        self._comparisons.add(compare)
        compare.add_done_callback(self._comparisons.discard)
        return result

    async def _compare(
        self,
        command: str,
        mode: ShadowMode,
        primary: CommandResult,
        shadow: asyncio.Future[CommandResult],
    ) -> None:
        try:
            secondary = await shadow
        except Exception as exc:  # the secondary's failure is a finding, not the caller's error
            self.stats.secondary_errors += 1
            detail = f"secondary failed: {type(exc).__name__}: {exc}"
            self._record(command, mode, primary, None, detail)
            return
        self.stats.compared += 1
        problems = []
        if primary.exit_status != secondary.exit_status:
            problems.append(f"exit {primary.exit_status} != {secondary.exit_status}")
        if mode is ShadowMode.PROBE and primary.stdout != secondary.stdout:
            problems.append(f"stdout differs ({len(primary.stdout)} vs {len(secondary.stdout)} B)")
        elif mode is ShadowMode.SERIAL:
            problems += self.policy.metric_differences(primary, secondary)
        if problems:
            self.stats.mismatched += 1
            self._record(command, mode, primary, secondary, "; ".join(problems))

    def _record(
        self,
        command: str,
        mode: ShadowMode,
        primary: CommandResult,
        secondary: CommandResult | None,
        detail: str,
    ) -> None:
        log.warning("%s: shadow discrepancy for %r: %s", self.node_id, command[:80], detail)
        if len(self.stats.discrepancies) >= MAX_DISCREPANCIES:
            return
        self.stats.discrepancies.append(
            Discrepancy(
                node_id=self.node_id,
                command=command,
                mode=mode,
                primary_exit=primary.exit_status,
                secondary_exit=None if secondary is None else secondary.exit_status,
                primary_stdout_sha=_digest(primary.stdout),
                secondary_stdout_sha="" if secondary is None else _digest(secondary.stdout),
                detail=detail,
            )
        )

    async def drain(self) -> None:
        """Wait until every pending (probe) comparison is recorded."""
        while self._comparisons:
            await asyncio.gather(*list(self._comparisons), return_exceptions=True)

    async def stream(
        self, command: str, **options: Unpack[StreamOptions]
    ) -> AsyncIterator[StreamEvent]:
        """The primary's stream, not shadowed: a streamed command is long or reads stdin, and
        neither is safe to run twice."""
        events = self.primary.stream(command, **options)
        try:
            async for event in events:
                yield event
        finally:
            await close_stream(events)

    async def system_facts(self) -> SystemConfiguration:
        return await self.primary.system_facts()

    async def close(self) -> None:
        await self.drain()
        await asyncio.gather(self.primary.close(), self.secondary.close())
