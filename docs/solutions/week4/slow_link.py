"""Week 4, exercise 1, a reference solution: a slow worker, modelled before it is measured.

`simulate-cluster.sh slow worker2 300` runs `tc qdisc replace dev DEV root netem delay 300ms`
on the worker's own interface. A root qdisc shapes what leaves an interface: the worker's
heartbeats and RESULTS are 300 ms late, while the DISPATCH coming to it is not delayed. So a
task it runs finishes 300 ms later for the client (one crossing, not two), and the
coordinator, which hears it 300 ms late but as regularly as before, never calls it dead. Only
the moment the delay starts leaves a gap in what arrives: delay + one heartbeat interval,
0.8 s here, below the suspect point (1.0 s); a delay of 1.2 s makes that gap 1.7 s, past the
dead point (1.5 s), and the worker is declared dead once, then alive again.

This models it on the fake network of cluster_patterns.fake_cluster (the real Dispatcher and
WorkerSessions, a fake clock): w2's outgoing messages are delayed from 1 s on, and at 2 s
eight sleep tasks of 100 ms arrive, four for each worker.

Prints    w2's NODE_EVENTs ("w2 dead after 1.52 s of silence; its tasks requeued"), then
          "tasks via w1: mean 110 ms; via w2: mean 410 ms"

    python docs/solutions/week4/slow_link.py --delay-ms 300
Check it: python 01-zmq-basics/labs.py check slow docs/solutions/week4/slow_link.py
"""

import argparse
import statistics
import sys

from cluster_patterns.fake_cluster import FakeCluster, describe_event
from cluster_patterns.protocol import NodeEventKind, TaskSpec

DELAY_FROM_S = 1.0
SUBMIT_AT_S = 2.0
END_S = 10.0
TASKS = 8  # both workers' whole credit: nobody queues, so the difference is the link
TASK_MS = 100


def mean_ms(latencies: list[float]) -> str:
    return f"{statistics.mean(latencies) * 1000:.0f} ms" if latencies else "none"


def main() -> int:
    parser = argparse.ArgumentParser(description="a slow link to w2, on the fake network")
    parser.add_argument("--delay-ms", type=int, default=300, help="w2's outgoing delay (300)")
    args = parser.parse_args()
    cluster = FakeCluster({"w1": 4, "w2": 4})
    cluster.run_until(DELAY_FROM_S)
    cluster.delay("w2", args.delay_ms / 1000)
    cluster.run_until(SUBMIT_AT_S)
    cluster.submit([TaskSpec(task_id=f"t{n}", kind="sleep", ms=TASK_MS) for n in range(TASKS)])
    cluster.run_until(END_S)
    for event in cluster.events:
        if event.node_id == "w2" and event.event is not NodeEventKind.JOINED:
            print(describe_event(event))
    via = {
        worker: [o.latency_s for o in cluster.outcomes if o.worker_id == worker]
        for worker in ("w1", "w2")
    }
    print(f"tasks via w1: mean {mean_ms(via['w1'])}; via w2: mean {mean_ms(via['w2'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
