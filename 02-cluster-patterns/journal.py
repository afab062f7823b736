"""The coordinator's append-only state log (``--state-dir DIR``): durable submissions and results.

The coordinator writes one JSON line per accepted task and one per recorded outcome,
buffers them for one turn of its loop, then ``flush()`` writes and fsyncs them together
(group commit) BEFORE it sends the ACCEPTED / COMPLETED messages of that turn. So:

  * a task the client saw ACCEPTED survives a SIGKILL of the coordinator;
  * an outcome the client saw COMPLETED is in the log exactly once, and a restarted
    coordinator answers a re-submission of that task id with the logged outcome.

A crash can cut the last line short; ``replay`` ignores a torn final line.

File: DIR/journal.jsonl, lines like
    {"op":"submit","client":"client:c1","task_id":"...","kind":"echo","ms":0,"payload":""}
    {"op":"result","task_id":"...","ok":true,"output":"","error":"","tries":1,...}

Read one:  python -c "from cluster_patterns.journal import replay; \\
                       print(sum(1 for _ in replay('/tmp/state')))"
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from cluster_patterns.protocol import TaskOutcome, TaskSpec

JOURNAL_NAME: Final = "journal.jsonl"

Entry = tuple[TaskSpec, bytes] | TaskOutcome


class FileJournal:
    """Append-only, group-committed log of submissions and outcomes."""

    def __init__(self, state_dir: Path, fsync: bool = True) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / JOURNAL_NAME
        self._file = self.path.open("ab")
        self._buffer: list[bytes] = []
        self._fsync = fsync
        self.commits = 0

    def submitted(self, spec: TaskSpec, client: bytes) -> None:
        line = {
            "op": "submit",
            "client": client.decode("utf-8", "replace"),
            "task_id": spec.task_id,
            "kind": spec.kind,
            "ms": spec.ms,
            "payload": spec.payload,
        }
        self._buffer.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def recorded(self, outcome: TaskOutcome) -> None:
        line = {"op": "result", **{name: getattr(outcome, name) for name in outcome.__slots__}}
        self._buffer.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def flush(self) -> None:
        """Write everything buffered this turn with one write and one fsync."""
        if not self._buffer:
            return
        self._file.write(b"".join(self._buffer))
        self._buffer.clear()
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self.commits += 1

    def close(self) -> None:
        self.flush()
        self._file.close()


def replay(state_dir: Path | str) -> Iterator[Entry]:
    """Every entry of the journal in order; a torn or unreadable line is skipped."""
    path = Path(state_dir) / JOURNAL_NAME
    if not path.exists():
        return
    with path.open("rb") as lines:
        for raw in lines:
            try:
                line = json.loads(raw)
                if line["op"] == "submit":
                    spec = TaskSpec(line["task_id"], line["kind"], line["ms"], line["payload"])
                    yield spec, str(line["client"]).encode()
                elif line["op"] == "result":
                    del line["op"]
                    yield TaskOutcome(**line)
            except (ValueError, KeyError, TypeError):
                continue  # the torn tail of a crash, or a hand-edited line
