"""Week 4, exercise 4, a reference solution: writes that survive a crash of the collector.

``ZmqJournalWriter.write()`` returns only once the collector has fsynced the record. When the
collector dies, nothing is acknowledged, the writer re-sends every unacknowledged record (with
its id) each second, and once a collector listens again on the same journal it stores each
record that is not there yet and acknowledges the rest: a crash delays writes, it loses none
and doubles none.

Connects  DEALER to the collector's ROUTER (zmq_journal.py collector, port 5590)
Writes    N records (ids crash-0, crash-1, ...) from 16 tasks, each pausing PAUSE ms between
          its writes (about 500 records a second)
Prints    "written 500", "written 1000", ... then "wrote 2000 records; the writer re-sent R"

    python 03-cluster-runner-simulation/zmq_journal.py collector --path /tmp/j.jsonl   # Terminal 1
    python docs/solutions/week4/crash_writer.py tcp://127.0.0.1:5590                    # Terminal 2
Check it: python 01-zmq-basics/labs.py check collector-crash docs/solutions/week4/crash_writer.py
"""

import argparse
import asyncio
import sys
import time

from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.protocols import JournalError, PerfTestResult

TASKS = 16
PROGRESS_EVERY = 500


def record(number: int) -> PerfTestResult:
    now = time.time()
    return PerfTestResult(
        record_id=f"crash-{number}",
        schedule="crash",
        test="all_reduce_perf",
        nodes=("node0",),
        exit_status=0,
        result_line="134217728  33554432  float  sum  -1  1042.7  128.72  225.27  0",
        started_at=now,
        finished_at=now,
    )


async def write_all(endpoint: str, records: int, pause_s: float) -> int:
    """Write every record; the number of re-sends the writer needed."""
    journal = ZmqJournalWriter(endpoint, timeout=60.0)
    numbers = iter(range(records))
    written = 0

    async def writer() -> None:
        nonlocal written
        for number in numbers:  # the tasks share one iterator: each record is written once
            await journal.write(record(number))
            written += 1
            if written % PROGRESS_EVERY == 0:
                print(f"written {written}", flush=True)
            await asyncio.sleep(pause_s)

    try:
        await asyncio.gather(*(writer() for _ in range(TASKS)))
    finally:
        await journal.close()
    return journal.retries


def main() -> int:
    parser = argparse.ArgumentParser(description="write records through a collector crash")
    parser.add_argument("endpoint", help="the collector, tcp://HOST:PORT")
    parser.add_argument("--records", type=int, default=2000, help="how many (2000)")
    parser.add_argument("--pause-ms", type=int, default=30, help="each task's pause (30)")
    args = parser.parse_args()
    try:
        retries = asyncio.run(write_all(args.endpoint, args.records, args.pause_ms / 1000))
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.records} records; the writer re-sent {retries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
