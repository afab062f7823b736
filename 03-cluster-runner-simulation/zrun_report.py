"""What zrun prints once its nodes are done: outcomes, folded output, the table, JSON, status.

Nothing here binds or connects: ``result_of`` turns one node's ``RemoteRun``
(agent_client.py) into a ``NodeResult``, and the functions below render a list of them.
Nodes with the same outcome, or the same output, are folded into one node set
(``node[0-61,63]``, nodeset.py), as ``clush -b`` does, so 256 nodes that agree take one line.

zrun's exit status (``exit_status``): 0 when every node ran the command and it exited 0;
1 when a command failed on some node (non-zero status, or killed by a signal); 124 when it
timed out on some node; 255 when some node could not be reached, was lost while running,
or refused the request; a signal that stopped zrun itself gives 128+N. The worst wins.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TextIO

import msgspec

from cluster_runner_simulation.agent_client import RemoteRun, RunState, signal_exit_status
from cluster_runner_simulation.nodeset import fold

STATUS_FAILED: Final = 1
STATUS_TIMEOUT: Final = 124  # as timeout(1)
STATUS_UNREACHABLE: Final = 255  # as ssh
RULE: Final = "-" * 15


class Outcome(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"  # exited with a non-zero status
    KILLED = "killed"  # ended by a signal
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    LOST = "lost"  # the agent fell silent while the command ran
    REFUSED = "refused"  # the agent answered with an error
    CANCELLED = "cancelled"  # Ctrl-C (or SIGTERM) stopped it, or it never started


NOT_REACHED: Final = (Outcome.UNREACHABLE, Outcome.LOST, Outcome.REFUSED)


@dataclass(frozen=True)
class NodeResult:
    node_id: str
    outcome: Outcome
    exit_status: int | None = None
    exit_signal: str | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: str = ""
    seconds: float = 0.0


def result_of(run: RemoteRun, now: float) -> NodeResult:
    """One node's result, from what its run became."""
    base = NodeResult(
        node_id=run.node_id,
        outcome=Outcome.OK,
        stdout=b"".join(run.stdout),
        stderr=b"".join(run.stderr),
        error=run.error,
        seconds=now - run.sent_at,
    )
    if run.state in _FAILED_STATES:
        return replace(base, outcome=_FAILED_STATES[run.state])
    ended = run.exit
    if ended is None:  # still running when zrun stopped waiting
        outcome = Outcome.CANCELLED if run.cancelled_by_us else Outcome.TIMEOUT
        return replace(base, outcome=outcome, error=run.error or "no exit from the agent")
    if ended.timed_out:
        why = "" if ended.started else "never started: the agent's slots stayed busy"
        return replace(base, outcome=Outcome.TIMEOUT, error=why)
    if ended.cancelled:
        return replace(base, outcome=Outcome.CANCELLED)
    if ended.exit_status is None:
        return replace(base, outcome=Outcome.KILLED, exit_signal=ended.exit_signal)
    outcome = Outcome.OK if ended.exit_status == 0 else Outcome.FAILED
    return replace(base, outcome=outcome, exit_status=ended.exit_status)


_FAILED_STATES: Final = {
    RunState.UNREACHABLE: Outcome.UNREACHABLE,
    RunState.LOST: Outcome.LOST,
    RunState.REFUSED: Outcome.REFUSED,
}


def never_started(node_id: str, why: str) -> NodeResult:
    return NodeResult(node_id, Outcome.CANCELLED, error=why)


def exit_status(results: Sequence[NodeResult], stopped_by: int | None) -> int:
    """zrun's status: see the module's docstring."""
    if stopped_by is not None:
        return signal_exit_status(stopped_by)
    outcomes = {result.outcome for result in results}
    if outcomes & set(NOT_REACHED):
        return STATUS_UNREACHABLE
    if Outcome.TIMEOUT in outcomes or Outcome.CANCELLED in outcomes:
        return STATUS_TIMEOUT
    if outcomes & {Outcome.FAILED, Outcome.KILLED}:
        return STATUS_FAILED
    return 0


def _label(result: NodeResult) -> str:
    if result.outcome in (Outcome.OK, Outcome.FAILED) and result.exit_status is not None:
        return f"exit {result.exit_status}"
    if result.outcome is Outcome.KILLED:
        return f"signal {result.exit_signal}"
    return str(result.outcome.value)


def print_table(results: Sequence[NodeResult], out: TextIO) -> None:
    """Nodes folded by outcome; the ones not reached (and timeouts) say why, one by one."""
    by_label: dict[str, list[NodeResult]] = {}
    for result in results:
        by_label.setdefault(_label(result), []).append(result)
    width = max((len(label) for label in by_label), default=0)
    for label, group in sorted(by_label.items(), key=lambda item: (item[0] != "exit 0", item[0])):
        names = fold(r.node_id for r in group)
        print(f"{label:<{width}}  {names} ({len(group)})", file=out)
        for result in group:
            if result.error:
                print(f"{'':<{width}}    {result.node_id}: {result.error}", file=out)


def print_gathered(results: Sequence[NodeResult], out: TextIO, err: TextIO) -> None:
    """``clush -b``: each distinct output once, under the node set that printed it."""
    for stream, target in (("stdout", out), ("stderr", err)):
        by_output: dict[bytes, list[str]] = {}
        for result in results:
            data: bytes = getattr(result, stream)
            if data:
                by_output.setdefault(data, []).append(result.node_id)
        for data, names in sorted(by_output.items(), key=lambda item: fold(item[1])):
            target.write(f"{RULE}\n{fold(names)} ({len(names)})\n{RULE}\n")
            target.flush()
            target.buffer.write(data if data.endswith(b"\n") else data + b"\n")
            target.buffer.flush()


def json_document(command: str, results: Sequence[NodeResult], status: int) -> bytes:
    """Every node's result for machines; output bytes decoded as UTF-8 (invalid bytes: U+FFFD)."""
    counts: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        nodes.append(
            {
                "node": result.node_id,
                "outcome": result.outcome.value,
                "exit_status": result.exit_status,
                "exit_signal": result.exit_signal,
                "stdout": result.stdout.decode("utf-8", errors="replace"),
                "stderr": result.stderr.decode("utf-8", errors="replace"),
                "error": result.error,
                "seconds": round(result.seconds, 6),
            }
        )
    document = {"command": command, "exit_status": status, "counts": counts, "nodes": nodes}
    return msgspec.json.encode(document) + b"\n"
