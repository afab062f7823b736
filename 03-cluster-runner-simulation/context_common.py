"""The operational context both builders return: executors, facts and a journal per cluster.

Nothing here binds or connects itself: ``build_context`` takes a function that
makes one executor per descriptor node (SSH, ZeroMQ or a fallback of both), asks
every node for its system facts at once, and returns an ``ExecutorContext``,
cluster_runner's ``OperationalContextProtocol``. ``zmq_operational_context.py``,
``ssh_context.py`` and ``migration.py`` are thin wrappers around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec
from cluster_runner_simulation.protocols import (
    AsyncJournalWriterProtocol,
    ExecutorError,
    NodeExecutorProtocol,
    OperationalContextProtocol,
    SystemConfiguration,
)

NodeFilter = Callable[[NodeSpec], bool]
ExecutorFactory = Callable[[NodeSpec], NodeExecutorProtocol]
TimedExecutorFactory = Callable[[NodeSpec, float], NodeExecutorProtocol]


class ContextBuildError(RuntimeError):
    """Some nodes could not be reached while the context gathered their facts."""

    def __init__(self, transport: str, failures: Mapping[str, BaseException]) -> None:
        details = "; ".join(f"{node}: {exc}" for node, exc in sorted(failures.items()))
        super().__init__(f"{transport} context: {len(failures)} node(s) unreachable: {details}")
        self.failures = dict(failures)


class ExecutorContext:
    """``OperationalContextProtocol`` over a fixed set of executors gathered at build time."""

    def __init__(
        self,
        transport: str,
        executors: Mapping[str, NodeExecutorProtocol],
        facts: Mapping[str, SystemConfiguration],
        journal: AsyncJournalWriterProtocol,
        leaves: Mapping[str, str],
    ) -> None:
        self.transport = transport
        self._executors = dict(executors)
        self._facts = dict(facts)
        self._journal = journal
        self.leaves = dict(leaves)

    def _unknown(self, node_id: str) -> KeyError:
        return KeyError(
            f"unknown node {node_id!r} in the {self.transport} context; "
            f"valid nodes: {', '.join(self._executors) or '(none)'}"
        )

    def journal(self) -> AsyncJournalWriterProtocol:
        return self._journal

    def executor(self, node_id: str) -> NodeExecutorProtocol:
        try:
            return self._executors[node_id]
        except KeyError:
            raise self._unknown(node_id) from None

    def system_config(self, node_id: str) -> SystemConfiguration:
        try:
            return self._facts[node_id]
        except KeyError:
            raise self._unknown(node_id) from None

    def node_ids(self) -> list[str]:
        return list(self._executors)

    async def close(self) -> None:
        """Closes the executors; the journal belongs to the caller, who closes it."""
        await asyncio.gather(*(e.close() for e in self._executors.values()))


async def build_context(
    transport: str,
    descriptor: ClusterDescriptor,
    filter_fn: NodeFilter | None,
    journal: AsyncJournalWriterProtocol,
    make_executor: ExecutorFactory,
) -> ExecutorContext:
    nodes = [n for n in descriptor.nodes if filter_fn is None or filter_fn(n)]
    executors = {node.id: make_executor(node) for node in nodes}
    outcomes = await asyncio.gather(
        *(e.system_facts() for e in executors.values()), return_exceptions=True
    )
    facts: dict[str, SystemConfiguration] = {}
    failures: dict[str, BaseException] = {}
    for node_id, outcome in zip(executors, outcomes):
        if isinstance(outcome, SystemConfiguration):
            facts[node_id] = outcome
        elif isinstance(outcome, ExecutorError):
            failures[node_id] = outcome
        else:
            await asyncio.gather(*(e.close() for e in executors.values()))
            raise outcome
    if failures:
        await asyncio.gather(*(e.close() for e in executors.values()))
        raise ContextBuildError(transport, failures)
    context = ExecutorContext(transport, executors, facts, journal, {n.id: n.leaf for n in nodes})
    _satisfies_protocol(context)
    return context


def _satisfies_protocol(context: ExecutorContext) -> OperationalContextProtocol:
    return context  # mypy proves ExecutorContext implements the protocol


class ContextBuilder(Protocol):
    """``build_ssh_context`` and ``build_zmq_context``: the same call, another transport."""

    def __call__(
        self,
        descriptor: ClusterDescriptor,
        filter_fn: NodeFilter | None,
        journal: AsyncJournalWriterProtocol,
        *,
        connect_timeout: float = ...,
    ) -> Awaitable[ExecutorContext]: ...


def context_builder(
    transport: str, executor_for: TimedExecutorFactory, default_connect_timeout: float
) -> ContextBuilder:
    """A ``build_<transport>_context`` that makes each node's executor with ``executor_for``.

    The built function raises ``ContextBuildError`` naming every node that did not answer.
    """

    async def build(
        descriptor: ClusterDescriptor,
        filter_fn: NodeFilter | None,
        journal: AsyncJournalWriterProtocol,
        *,
        connect_timeout: float = default_connect_timeout,
    ) -> ExecutorContext:
        def make(node: NodeSpec) -> NodeExecutorProtocol:
            return executor_for(node, connect_timeout)

        return await build_context(transport, descriptor, filter_fn, journal, make)

    build.__name__ = build.__qualname__ = f"build_{transport}_context"
    return build
