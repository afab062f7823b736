"""One task's life, printed as a message sequence: submitted, dispatched, its worker killed,
requeued, run again elsewhere, completed exactly once.

No sockets and no waiting: the coordinator's Dispatcher, two WorkerSessions and a
ClientSession (the objects coordinator.py, worker.py and client.py run) talk over the fake
network of fake_cluster.py, on a fake clock, so the sequence is the same on every machine.
Each line names the code that handles the message; docs/week2-cluster-patterns.md walks
through it.

Run it:
    python 02-cluster-patterns/task_life.py          # the task's messages
    python 02-cluster-patterns/task_life.py --all    # every message, heartbeats included
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

from cluster_patterns.fake_cluster import COORDINATOR, FakeCluster, Line
from cluster_patterns.protocol import Accepted, Completed, Dispatch, Heartbeat, Message
from cluster_patterns.protocol import Register, Reset, Results, Submit, TaskSpec, Welcome
from cluster_patterns.protocol import message_type

TASK: Final = TaskSpec(task_id="task-1", kind="sleep", ms=2000)
SUBMIT_AT_S: Final = 0.2
KILL_AT_S: Final = 0.9  # w1 holds the task by then
END_S: Final = 5.0
LATE_S: Final = 0.05  # a message this late says when it was sent
# Who handles a message, by the role that receives it: the do_<Message> tables.
HANDLERS: Final = {
    COORDINATOR: "dispatcher.py Dispatcher",
    "client": "client_session.py ClientSession",
}


def summary(message: Message) -> str:
    """The fields of a message that matter for the task's story."""
    match message:
        case Register():
            return f"{message.worker_id}: capacity {message.capacity}, running {message.running}"
        case Welcome():
            return f"interval {message.heartbeat_interval_s} s, liveness {message.liveness}"
        case Submit():
            return ", ".join(f"{t.task_id} ({t.kind} {t.ms} ms)" for t in message.tasks)
        case Accepted():
            return ", ".join(message.task_ids)
        case Dispatch():
            return ", ".join(f"{t.task_id} attempt {t.attempt}" for t in message.tasks)
        case Heartbeat():
            return f"running {message.running}"
        case Results():
            return ", ".join(f"{r.task_id} {'ok' if r.ok else 'failed'}" for r in message.results)
        case Completed():
            return ", ".join(
                f"{o.task_id} {'ok' if o.ok else 'failed'}, tries {o.tries}, by {o.worker_id}"
                for o in message.outcomes
            )
        case Reset():
            return message.reason
    return ""


def interesting(line: Line) -> bool:
    """A message of the task's story: not the heartbeats of an idle peer."""
    if line.message is None:
        return True
    if isinstance(line.message, Heartbeat):
        return bool(line.message.running)
    return message_type(line.message) not in ("COORDINATOR_HEARTBEAT",)


def show(line: Line, everything: bool) -> None:
    """One line: the time, who (a message's sender -> receiver), what, the code that handles it."""
    if not everything and not interesting(line):
        return
    if line.message is None:
        who, what, where = line.source, line.text, line.where
    else:
        delayed = line.sent_at is not None and line.at - line.sent_at >= LATE_S
        late = f" (sent {line.sent_at:.2f})" if delayed else ""
        who = f"{line.source} -> {line.target}"
        what = f"{message_type(line.message)} {summary(line.message)}{late}"
        handler = HANDLERS.get(line.target, "worker_session.py WorkerSession")
        where = f"{handler}.do_{type(line.message).__name__}"
    print(f"{line.at:5.2f}  {who:<22}  {what:<46}  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description="One task's life on a fake network.")
    parser.add_argument("--all", action="store_true", help="every message, heartbeats included")
    args = parser.parse_args()
    print("one task, two workers of capacity 1, a fake clock (seconds)")
    print(f"{'time':>5}  {'who':<22}  {'what':<46}  code")
    # --8<-- [start:scenario]
    cluster = FakeCluster({"w1": 1, "w2": 1}, trace=lambda line: show(line, args.all))
    cluster.run_until(SUBMIT_AT_S)
    cluster.submit([TASK])
    cluster.run_until(KILL_AT_S)
    cluster.kill("w1")
    cluster.run_until(END_S)
    # --8<-- [end:scenario]
    outcome = cluster.outcomes[0] if cluster.outcomes else None
    if outcome is None:
        print("error: the task has no outcome", file=sys.stderr)
        return 1
    print(
        f"outcome: {outcome.task_id} ok={outcome.ok} after {outcome.tries} tries, by "
        f"{outcome.worker_id}, {outcome.latency_s:.2f} s after it was submitted; "
        f"requeued {cluster.dispatcher.totals.requeued}, recorded once"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `task_life.py | head`: nothing left to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
