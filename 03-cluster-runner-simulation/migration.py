"""Migration helpers: ZeroMQ with SSH fallback (phase 2) and A/B shadowing (phase 3).

Both wrap two ``NodeExecutorProtocol`` objects and are executors themselves, so
cluster_runner sees no difference. Nothing here binds; the wrapped executors connect.

FallbackExecutor(primary=zmq, fallback=ssh)
    Before each command it pings the primary (one ZeroMQ round trip). If the ping
    raises ``NodeUnreachable``, the command was never sent to the primary, so it
    runs through SSH instead: counted in ``fallbacks`` and logged. Once the ping
    succeeded the command belongs to the primary: if the primary then fails, even
    with ``NodeUnreachable``, the error goes to the caller (``refused_fallbacks``
    counts it), because the command may have started and must not run twice.

ShadowExecutor(primary, secondary)  (shadow.py)
    Returns exactly what the primary gave (result or exception). Read-only probes are
    copied to the secondary at the same time and their stdout compared; any other command
    (a GPU test) is copied after the primary finished, never beside it, and its parsed
    metrics are compared within a tolerance. Differences are kept in ``discrepancies``.
    A ``stream()`` is not shadowed: it runs on the primary only (a streamed command is long
    or reads stdin, and neither is safe to run twice).

``build_fallback_context(descriptor, filter_fn, journal)`` gives the
``zmq+ssh-fallback`` transport of run_schedules.py, and ``build_shadow_context`` its --shadow:
    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq+ssh-fallback
    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq --shadow
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, Unpack, runtime_checkable

from cluster_runner_simulation.context_common import ExecutorContext, NodeFilter, build_context
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec
from cluster_runner_simulation.shadow import (
    Discrepancy,
    ShadowExecutor,
    ShadowMode,
    ShadowPolicy,
    ShadowStats,
    close_stream,
)
from cluster_runner_simulation.ssh_context import ssh_executor_for
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for
from cluster_runner_simulation.protocols import (
    Env,
    AsyncJournalWriterProtocol,
    CommandResult,
    NodeExecutorProtocol,
    NodeUnreachable,
    StreamEvent,
    StreamOptions,
    SystemConfiguration,
)

DOWN_RECHECK_S = 5.0  # after a failed ping, skip pinging the primary for this long

__all__ = [
    "Discrepancy",
    "close_stream",
    "FallbackExecutor",
    "ShadowExecutor",
    "ShadowMode",
    "ShadowPolicy",
    "ShadowStats",
    "build_fallback_context",
    "build_shadow_context",
    "fallback_counts",
    "shadow_stats",
]

log = logging.getLogger("migration")


@runtime_checkable
class Pingable(Protocol):
    async def ping(self) -> float: ...


# --- Fallback ---------------------------------------------------------------------------------


class FallbackExecutor:
    """ZeroMQ first; SSH only when the primary was unreachable before the command started."""

    def __init__(
        self,
        primary: NodeExecutorProtocol,
        fallback: NodeExecutorProtocol,
        *,
        down_recheck_s: float = DOWN_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if primary.node_id != fallback.node_id:
            raise ValueError(f"executors of different nodes: {primary.node_id}, {fallback.node_id}")
        self.primary = primary
        self.fallback = fallback
        self.down_recheck_s = down_recheck_s
        self._clock = clock
        self.fallbacks = 0
        self.refused_fallbacks = 0
        self._down_until = 0.0

    @property
    def node_id(self) -> str:
        return self.primary.node_id

    async def _primary_reachable(self) -> bool:
        """True if the primary answered a ping now; the command has not been sent yet."""
        if self._clock() < self._down_until:
            return False
        if not isinstance(self.primary, Pingable):
            return True  # cannot ask; the primary's own NodeUnreachable is then final
        try:
            await self.primary.ping()
        except NodeUnreachable as exc:
            self._down_until = self._clock() + self.down_recheck_s
            log.warning("%s: primary unreachable (%s); using the fallback", self.node_id, exc)
            return False
        return True

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        if await self._primary_reachable():
            try:
                return await self.primary.run(command, timeout=timeout, env=env, cwd=cwd)
            except NodeUnreachable:
                self.refused_fallbacks += 1
                self._down_until = self._clock() + self.down_recheck_s
                log.error(
                    "%s: primary lost while %r may have been running; not retried on the "
                    "fallback, so it cannot run twice",
                    self.node_id,
                    command[:80],
                )
                raise
        self.fallbacks += 1
        log.info("%s: fallback #%d runs %r", self.node_id, self.fallbacks, command[:80])
        return await self.fallback.run(command, timeout=timeout, env=env, cwd=cwd)

    async def stream(
        self, command: str, **options: Unpack[StreamOptions]
    ) -> AsyncIterator[StreamEvent]:
        """Like ``run``: the primary if its ping answered (and then only the primary)."""
        chosen = self.primary
        if not await self._primary_reachable():
            self.fallbacks += 1
            log.info("%s: fallback #%d streams %r", self.node_id, self.fallbacks, command[:80])
            chosen = self.fallback
        events = chosen.stream(command, **options)
        try:
            async for event in events:
                yield event
        except NodeUnreachable:
            if chosen is self.primary:
                self.refused_fallbacks += 1
                self._down_until = self._clock() + self.down_recheck_s
            raise
        finally:
            await close_stream(events)

    async def system_facts(self) -> SystemConfiguration:
        """Facts are read-only, so asking the fallback after any primary failure is safe."""
        try:
            return await self.primary.system_facts()
        except NodeUnreachable as exc:
            self.fallbacks += 1
            log.warning("%s: facts through the fallback (%s)", self.node_id, exc)
            return await self.fallback.system_facts()

    async def close(self) -> None:
        await asyncio.gather(self.primary.close(), self.fallback.close())


# --- The zmq+ssh-fallback context -------------------------------------------------------------


async def build_fallback_context(
    descriptor: ClusterDescriptor,
    filter_fn: NodeFilter | None,
    journal: AsyncJournalWriterProtocol,
    *,
    zmq_connect_timeout: float = 2.0,
) -> ExecutorContext:
    """Every node gets ``FallbackExecutor(zmq, ssh)``; a down agent no longer fails the build."""

    def make(node: NodeSpec) -> FallbackExecutor:
        return FallbackExecutor(zmq_executor_for(node, zmq_connect_timeout), ssh_executor_for(node))

    return await build_context("zmq+ssh-fallback", descriptor, filter_fn, journal, make)


async def build_shadow_context(
    descriptor: ClusterDescriptor,
    filter_fn: NodeFilter | None,
    journal: AsyncJournalWriterProtocol,
    *,
    primary: str = "zmq",
    policy: ShadowPolicy | None = None,
) -> ExecutorContext:
    """Every node gets ``ShadowExecutor``: ``primary`` answers, the other transport mirrors."""

    def make(node: NodeSpec) -> ShadowExecutor:
        zmq_side, ssh_side = zmq_executor_for(node), ssh_executor_for(node)
        if primary == "zmq":
            return ShadowExecutor(zmq_side, ssh_side, policy)
        return ShadowExecutor(ssh_side, zmq_side, policy)

    return await build_context(f"{primary}+shadow", descriptor, filter_fn, journal, make)


async def shadow_stats(context: ExecutorContext) -> ShadowStats:
    """All nodes' shadow comparisons added up, once every pending one is recorded."""
    total = ShadowStats()
    for node_id in context.node_ids():
        executor = context.executor(node_id)
        if isinstance(executor, ShadowExecutor):
            await executor.drain()
            total.compared += executor.stats.compared
            total.mismatched += executor.stats.mismatched
            total.secondary_errors += executor.stats.secondary_errors
            total.serial_copies += executor.stats.serial_copies
            total.not_shadowed += executor.stats.not_shadowed
            total.discrepancies += executor.stats.discrepancies
    return total


def fallback_counts(context: ExecutorContext) -> dict[str, int]:
    """Fallbacks per node of a context built by ``build_fallback_context``."""
    counts: dict[str, int] = {}
    for node_id in context.node_ids():
        executor = context.executor(node_id)
        if isinstance(executor, FallbackExecutor):
            counts[node_id] = executor.fallbacks
    return counts


def _satisfy(f: FallbackExecutor, s: ShadowExecutor) -> tuple[NodeExecutorProtocol, ...]:
    return f, s  # mypy proves both wrappers are executors
