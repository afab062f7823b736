"""Week 2, exercise 3, a reference solution: count what the coordinator's state log recorded.

A coordinator started with ``--state-dir DIR`` appends one JSON line per accepted task
(``"op": "submit"``) and one per recorded outcome (``"op": "result"``) to DIR/journal.jsonl,
and fsyncs them before it tells anyone (ADR 6). After a SIGKILL and a restart with the same
DIR, every accepted task must still end with exactly one outcome. This reads the log and
says whether it did. A torn last line (a crash in the middle of a write, no newline) is
skipped, as the coordinator itself would cut it.

Reads     DIR/journal.jsonl
Prints    "accepted 400 tasks: 400 with one outcome, 0 without, 0 recorded twice"
Exit      0 exactly once for every accepted task, 1 not, 2 no readable log

    python docs/solutions/week2/outcomes.py /tmp/coord-state
Check it: python 01-zmq-basics/labs.py check restart docs/solutions/week2/outcomes.py
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def count(log: Path) -> tuple[set[str], Counter[str]]:
    """The accepted task ids, and how many outcomes each task id has."""
    accepted: set[str] = set()
    outcomes: Counter[str] = Counter()
    data = log.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # what follows the last newline is torn
    for number, raw in enumerate(complete.splitlines(), start=1):
        try:
            entry = json.loads(raw)
            op, task_id = entry["op"], entry["task_id"]
        except (ValueError, KeyError, TypeError):
            print(f"{log}:{number}: not an entry; skipped", file=sys.stderr)
            continue
        if op == "submit":
            accepted.add(task_id)
        elif op == "result":
            outcomes[task_id] += 1
    return accepted, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description="count the outcomes in a coordinator's log")
    parser.add_argument("state_dir", type=Path, help="the coordinator's --state-dir")
    args = parser.parse_args()
    log = args.state_dir / "journal.jsonl"
    try:
        accepted, outcomes = count(log)
    except OSError as exc:
        print(f"error: cannot read {log}: {exc.strerror}", file=sys.stderr)
        return 2
    once = sum(1 for task_id in accepted if outcomes[task_id] == 1)
    without = sum(1 for task_id in accepted if outcomes[task_id] == 0)
    twice = sum(1 for n in outcomes.values() if n > 1)
    print(
        f"accepted {len(accepted)} tasks: {once} with one outcome, {without} without,"
        f" {twice} recorded twice"
    )
    return 0 if once == len(accepted) and twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
