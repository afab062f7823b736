"""cluster_runner's interfaces, as this repository understands them.

    ┌──────────────────────────────────────────────────────────────────────┐
    │  THE ONE PLACE TO ADAPT.  cluster_runner's source is private; what   │
    │  is known of it is listed below. Everything else in                  │
    │  03-cluster-runner-simulation codes against these Protocols, and     │
    │  mypy checks that every implementation satisfies them. When the real │
    │  signatures are known, change them here and let mypy list the        │
    │  implementations that need to follow.                                │
    └──────────────────────────────────────────────────────────────────────┘

What is known of cluster_runner:
  * it is asyncio based and reaches nodes through ``NodeExecutorSSH`` (asyncssh);
  * it schedules with ``nodes_concurrency_set`` and ``run_perf_test_scheduled``;
  * it collects results with ``AsyncPerfTestJournalFileWriter``
    (``await journal.write(test_result)``);
  * its context is ``OperationalContextProtocol`` with ``journal()``,
    ``executor(node_id)`` and ``system_config(node_id)``, built by
    ``build_ssh_context(descriptor, filter_fn, journal)``.

``CommandResult`` mirrors asyncssh's ``SSHCompletedProcess`` (``exit_status``,
``stdout``, ``stderr``), so code written against asyncssh keeps working. ``stream()`` is the
live form of ``run()``: ``OutputChunk`` events as the output arrives, then one
``CommandExit``, with optional stdin; asyncssh's ``create_process`` is its SSH counterpart.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeAlias, TypedDict, runtime_checkable

# Extra environment variables for one command (added to the node's own), or None.
Env: TypeAlias = Mapping[str, str] | None
# A streamed command's stdin: all of it at once, chunks as they come (EOF after the last),
# or None for /dev/null.
Stdin: TypeAlias = bytes | AsyncIterable[bytes] | None

# --- Values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command, shaped like asyncssh's ``SSHCompletedProcess``.

    ``exit_status`` is ``None`` when the process was killed by a signal, as in
    asyncssh; ``exit_signal`` then names the signal. Output is bytes, because
    performance tools print binary data too; ``stdout_text`` decodes it.
    """

    command: str
    exit_status: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    exit_signal: str | None = None

    @property
    def returncode(self) -> int | None:
        """The subprocess-style alias of ``exit_status``."""
        return self.exit_status

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


class OutputStream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class OutputChunk:
    """Some output of a streamed command, in the order the node sent it (per stream)."""

    stream: OutputStream
    data: bytes


@dataclass(frozen=True)
class CommandExit:
    """The last event of a streamed command: how it ended (as in ``CommandResult``)."""

    exit_status: int | None
    exit_signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


StreamEvent: TypeAlias = OutputChunk | CommandExit


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_mib: int


@dataclass(frozen=True)
class SystemConfiguration:
    """Facts about one node, gathered once when a context is built."""

    node_id: str
    hostname: str
    cpu_count: int
    memory_total_bytes: int
    python_version: str
    os_release: str = ""
    gpus: tuple[GpuInfo, ...] = ()


@dataclass(frozen=True)
class PerfTestResult:
    """One performance-test outcome, as cluster_runner's journal receives it.

    ``record_id`` identifies the result for idempotent journaling: writing the
    same id twice stores it once.
    """

    record_id: str
    schedule: str
    test: str
    nodes: tuple[str, ...]
    exit_status: int | None
    result_line: str
    started_at: float
    finished_at: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict; the journal's on-disk record body."""
        return {
            "record_id": self.record_id,
            "schedule": self.schedule,
            "test": self.test,
            "nodes": list(self.nodes),
            "exit_status": self.exit_status,
            "result_line": self.result_line,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "metrics": dict(self.metrics),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PerfTestResult:
        return cls(
            record_id=str(record["record_id"]),
            schedule=str(record["schedule"]),
            test=str(record["test"]),
            nodes=tuple(str(n) for n in record["nodes"]),
            exit_status=record["exit_status"],
            result_line=str(record["result_line"]),
            started_at=float(record["started_at"]),
            finished_at=float(record["finished_at"]),
            metrics={str(k): float(v) for k, v in dict(record.get("metrics", {})).items()},
            extra=dict(record.get("extra", {})),
        )


# --- Errors -----------------------------------------------------------------------------------


class ExecutorError(Exception):
    """Base class of every transport error an executor raises."""

    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(f"{node_id}: {message}")
        self.node_id = node_id


class NodeUnreachable(ExecutorError):
    """The node could not be reached, or the connection was lost.

    Raised before a command starts (then it never ran and a fallback transport
    may run it), or while it runs (then the message says it may have run, and no
    caller may re-run it elsewhere: ``FallbackExecutor`` refuses to).
    """


class CommandTimeout(ExecutorError):
    """The command ran out of time; its whole process group was killed."""


class JournalError(Exception):
    """The journal could not make a record durable (it is never dropped silently)."""


# --- Interfaces -------------------------------------------------------------------------------


@runtime_checkable
class NodeExecutorProtocol(Protocol):
    """Runs commands on one node (cluster_runner's ``NodeExecutorSSH``)."""

    @property
    def node_id(self) -> str: ...

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        """Run ``command`` through the node's shell and wait for it.

        Raises ``NodeUnreachable`` if the node is out of reach, ``CommandTimeout`` if
        it ran longer than ``timeout`` (the remote process group is killed).
        Cancelling the awaiting task kills the remote process group too.
        """
        ...

    def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Env = None,
        cwd: str | None = None,
        stdin: Stdin = None,
    ) -> AsyncIterator[StreamEvent]:
        """Run ``command`` and yield its output as it arrives, then one ``CommandExit``.

        ``stdin`` is fed to the command (bytes, or an async iterable of chunks), then EOF;
        without it the command reads /dev/null. Raises like ``run()``, from the iteration:
        ``NodeUnreachable``, ``CommandTimeout`` (after the chunks that came in time), and
        whatever the stdin iterable raised (the command is then killed). Leaving early
        (``break``, an exception, ``aclose()``, a cancelled task) kills the remote process
        group; ``contextlib.aclosing`` makes that happen at once rather than when the
        iterator is collected.
        """
        ...

    async def system_facts(self) -> SystemConfiguration:
        """Ask the node for its hostname, CPUs, memory, Python and GPUs."""
        ...

    async def close(self) -> None: ...


class StreamOptions(TypedDict, total=False):
    """``stream()``'s keywords, for an executor that only passes them on to another one
    (``**options: Unpack[StreamOptions]``): a keyword added here reaches every wrapper."""

    timeout: float | None
    env: Env
    cwd: str | None
    stdin: Stdin


class ClosedOnExit:
    """``async with executor:`` closes it on the way out; the executors mix this in."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError


@runtime_checkable
class AsyncJournalWriterProtocol(Protocol):
    """Collects results (cluster_runner's ``AsyncPerfTestJournalFileWriter``)."""

    async def write(self, test_result: PerfTestResult) -> None:
        """Return only once ``test_result`` is durable; raise ``JournalError`` otherwise."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class OperationalContextProtocol(Protocol):
    """What a performance test sees of the cluster."""

    def journal(self) -> AsyncJournalWriterProtocol: ...

    def executor(self, node_id: str) -> NodeExecutorProtocol:
        """The executor of ``node_id``; ``KeyError`` names unknown nodes."""
        ...

    def system_config(self, node_id: str) -> SystemConfiguration: ...

    def node_ids(self) -> list[str]: ...

    async def close(self) -> None: ...
