"""The lab runner: experiments that start the lessons as processes, and checks for exercises.

    python 01-zmq-basics/labs.py list                     what there is, all four weeks
    python 01-zmq-basics/labs.py slow-joiner              one experiment (see `list`)
    python 01-zmq-basics/labs.py all                      every experiment, one after another
    python 01-zmq-basics/labs.py throughput --results docs/results/week1-labs.md
    python 01-zmq-basics/labs.py check handshake my_push_pull.py
    python 01-zmq-basics/labs.py check freeze my_node_events.py       (week 2; weeks 3 and 4 alike)

Week 1's and the reliability lessons' experiments and checks are in this file; those of weeks
2-4 (the cluster, the node agent, operations) are in cluster_runner_simulation/labs/, with the
machinery every week shares (labs/kit.py: processes in "terminals", verdicts).

An experiment starts the lessons exactly as the pages tell you to, each in its own
"terminal" (a process of its own), prints the command and what that terminal printed,
and then a "Look:" line about what to notice. The commands are shown with the lessons'
default ports; the processes really use free ports (or the defaults, with
--default-ports), so a lab never collides with a lesson you left running. An outcome that
contradicts the lesson is printed as "Unexpected:" and makes the exit code 1.

`check EXERCISE ATTEMPT.py` runs your solution of an exercise against the same checks as
the reference solution in docs/solutions/, and says what passed, what failed and why.

This file is a tool, not a lesson: it may be longer than 150 lines, and nothing in it
is needed to understand ZeroMQ. Exit codes: 0 as expected, 1 unexpected or a failed
check, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cluster_patterns.cli_args import output_file
from cluster_runner_simulation.labs import week2, week3, week4
from cluster_runner_simulation.labs.kit import READY_TIMEOUT_S, Lab, LabError, Proc, Verdicts
from cluster_runner_simulation.labs.kit import indent, lab_session, number, section, usage_ok

RELIABILITY = Path("02-cluster-patterns") / "reliability"
WORKERS = ["worker 1", "worker 2"]  # the two workers most experiments start


# --- experiments ---------------------------------------------------------------------------


def publish_to(
    lab: Lab, script: str, subscriber: str, publisher: str, ready: str, port: int
) -> tuple[Proc, Proc]:
    """A subscriber in Terminal 1, once `ready`, a publisher in Terminal 2; both run out."""
    sub = lab.start("Terminal 1", script, subscriber, port=port)
    sub.wait_for(ready)
    pub = lab.run("Terminal 2", script, publisher, port=port)
    sub.wait()
    lab.show(sub, pub)
    return sub, pub


def req_server(lab: Lab, terminal: str, command: str, port: int) -> Proc:
    server = lab.start(terminal, "req_rep.py", command, port=port)
    server.wait_for(r"REP bound")
    return server


def req_client(lab: Lab, terminal: str, args: str, port: int, wait: bool = True) -> Proc:
    """`req_rep.py client localhost PORT ARGS`, printed with the lesson's port, 5555."""
    begin = lab.run if wait else lab.start
    return begin(
        terminal, "req_rep.py", f"client localhost {{port}} {args}", port=port, shown_port=5555
    )


def basics(lab: Lab) -> None:
    section("basics 1: request and reply (README: Basic Examples)")
    port = lab.ports(5555)
    server = req_server(lab, "Terminal 1", "server", port)
    client = req_client(lab, "Terminal 2", '"Hello ZeroMQ"', port)
    server.wait_for(r"Hello ZeroMQ")
    lab.show(server, client)
    lab.look("one request, one reply; the first round trip includes connecting")
    lab.expect("echo: Hello ZeroMQ" in client.output(), "no echo")

    section("basics 2: a pipeline, a ventilator with 50 tasks for two workers")
    port = lab.ports(5557, 2)
    sink, workers = lab.group("Terminal 1", "push_pull.py", "sink", WORKERS, "PULL from", port)
    vent = lab.run("Terminal 3", "push_pull.py", "ventilator 50", port=port)
    sink.wait_for(r"50 results")
    lab.show(sink, *workers, vent)
    lab.look("each task slept 1-100 ms: about 2.5 s of work, done in half that by two workers")

    for name, lesson in (("publish-subscribe", "pub_sub.py"), ("the broker", "router_dealer.py")):
        section(f"basics {3 if lesson == 'pub_sub.py' else 4}: {name}, all roles in one process")
        port = lab.ports(5561 if lesson == "pub_sub.py" else 5559, 2)
        demo = lab.run("Terminal 1", lesson, "demo", port=port)
        lab.show(demo)
        lab.expect(demo.popen.returncode == 0, f"{lesson} demo failed")
    lab.look("the pub_sub demo's subscriber connected first and still missed the start;")
    lab.look("the broker's two clients were each served by all three workers")


def slow_joiner(lab: Lab) -> None:
    section("slow-joiner 1: a subscriber that starts first still misses the first messages")
    port = lab.ports(5561)
    sub, pub = publish_to(lab, "pub_sub.py", "subscriber", "publisher", r"SUB connected", port)
    missed = number(r"missed (\d+) at the start", sub.output())
    lab.look(f"{missed} messages were published before the subscription reached the publisher")
    lab.expect(missed > 0, "the subscriber missed nothing at the start this time")

    section("slow-joiner 2: the same with a start-up handshake (sync_pub_sub.py)")
    port = lab.ports(5562, 2)
    sub, pub = publish_to(
        lab, "sync_pub_sub.py", "subscriber", "publisher --subscribers 1", "a probe", port
    )
    lost = re.search(r"missed (\d+) at the start, (\d+) in gaps and (\d+) at the end", sub.output())
    lab.look("the publisher waited for READY, sent only after a probe had arrived: nothing lost")
    lab.expect(bool(lost) and lost is not None and lost.groups() == ("0", "0", "0"), "sync lost")

    section("slow-joiner 3: PUSH hands a whole batch to the first worker that connects")
    port = lab.ports(5557, 2)
    sink, workers = lab.group("Terminal 1", "push_pull.py", "sink", WORKERS, "PULL from", port)
    shares = []
    for settle in ("500", "0"):
        extra = () if settle == "500" else ("--settle-ms", "0")
        vent = lab.run("Terminal 3", "push_pull.py", f"ventilator 50 {' '.join(extra)}", port=port)
        batch = number(r"batch (\d+)", vent.output())
        result = sink.wait_for(rf"batch {batch}: 50 results in [\d.]+ s; (.*)")
        shares.append(max(int(n) for n in re.findall(r"worker \d+: (\d+)", result.group(1))))
        lab.show(sink, *workers, vent)
    lab.look(f"the busiest worker got {shares[0]} of 50 tasks after a 500 ms pause to settle,")
    lab.look(f"and {shares[1]} of 50 without it: the other worker had not reconnected yet")
    lab.expect(shares[0] < 50, "with --settle-ms 500 one worker still got every task")


def hwm(lab: Lab) -> None:
    flood = "--rate 0 --count 20000"
    for small in (True, False):
        limits = "--hwm 100 --kernel-buffer 16384" if small else ""
        what = "HWM 100, 16 KiB kernel buffers" if small else "the defaults (HWM 1000, OS buffers)"
        section(f"hwm {1 if small else 2}: a flat-out publisher, a slow subscriber, {what}")
        port = lab.ports(5562, 2)
        subscriber, publisher = f"subscriber {limits} --work-us 100", f"publisher {limits} {flood}"
        sub, _ = publish_to(lab, "sync_pub_sub.py", subscriber, publisher, "a probe", port)
        received = number(r"received (\d+) of", sub.output())
        lab.look(f"{20000 - received} of 20000 messages were dropped by PUB; the publisher never")
        lab.look("slowed down and was never told. Nothing was lost at the start: sync did that.")
        if small:
            lab.expect(received < 20000, "nothing was dropped with an HWM of 100")


def retry(lab: Lab) -> None:
    section("retry 1: the Lazy Pirate against a port where nobody listens")
    port = lab.ports(5555)
    client = req_client(lab, "Terminal 1", '"anyone?" --timeout 500', port)
    lab.show(client)
    lab.look(f"three tries of 500 ms, then exit code {client.popen.returncode} instead of a hang")
    lab.expect(client.popen.returncode == 1, "the client did not give up with exit code 1")

    section("retry 2: the server is killed (kill -9) in mid-run and started again")
    server = req_server(lab, "Terminal 1", "server --work-ms 200", port)
    client = req_client(
        lab, "Terminal 2", "tick --count 10 --timeout 1000 --retries 5", port, wait=False
    )
    client.wait_for(r"reply 2/10")
    server.wait_for(r"request \d+-3:")  # request 3 is now in the server's hands
    server.send(signal.SIGKILL)
    server.wait()
    time.sleep(1.5)
    again = lab.start("Terminal 1 (again)", "req_rep.py", "server", port=port)
    client.wait()
    lab.show(server, again, client)
    twice = set(ids(server.output())) & set(ids(again.output()))
    lab.look("the request in flight died with the server; the client resent it, with the same")
    seen = " ".join(sorted(twice)) or "none"
    lab.look(f"id, to the new server. Both servers saw request {seen}: at-least-once delivery")
    lab.expect(client.popen.returncode == 0 and "reply 10/10" in client.output(), "no recovery")
    again.stop()

    section("retry 3: a server slower than the client's timeout does the same request again")
    slow = req_server(lab, "Terminal 1", "server --work-ms 600", port)
    client = req_client(lab, "Terminal 2", '"pay 10" --timeout 400 --retries 4', port)
    time.sleep(0.7)
    lab.show(slow, client)
    runs = len(ids(slow.output()))
    lab.look(f"the server did 'pay 10' {runs} times (it prints only its first 3 requests), and")
    lab.look("every reply went to a socket the client had already closed: resends need an")
    lab.look("idempotent server (week 1, exercise 3)")
    lab.expect(runs > 1, "the slow server ran the request only once")


def ids(server_output: str) -> list[str]:
    return re.findall(r"request (\d+-\d+):", server_output)


def broker(lab: Lab) -> None:
    section("broker: the load-balancing broker with a slow worker (the week-1 page's commands)")
    port = lab.ports(5559, 2)
    hub, workers = lab.group("Terminal 1", "router_dealer.py", "broker", WORKERS, "READY", port)
    first = lab.run("Terminal 3", "router_dealer.py", "client 1 --count 10", port=port)
    hub.wait_for(r"routed 10 requests so far")
    slow = lab.start("Terminal 2 &", "router_dealer.py", "worker 3 --work-ms 50", port=port)
    slow.wait_for(r"sent READY")
    clients = [
        lab.start(
            "Terminal 3 &" if n == "2" else "Terminal 3",
            "router_dealer.py",
            f"client {n} --count 100",
            port=port,
        )
        for n in "23"
    ]
    for client in clients:
        client.wait()
    totals = hub.wait_for(r"routed 210 requests so far: (.*)")
    lab.show(hub, *workers, first, slow, *clients)
    slow_share = number(r"'worker-3': (\d+)", totals.group(1))
    lab.look(f"10 + 100 + 100 = 210 requests; the slow worker-3 served {slow_share} of the 200")
    lab.look("sent while it was there: it was rarely the idle one, so nothing queued behind it")
    lab.expect(slow_share < 67, "the slow worker got a third or more of the requests")


def throughput(lab: Lab) -> dict[str, str]:
    figures: dict[str, str] = {}
    section("throughput 1: REQ/REP round trips between two processes")
    port = lab.ports(5555)
    server = req_server(lab, "Terminal 1", "server", port)
    client = req_client(lab, "Terminal 2", "ping --count 5000", port)
    lab.show(client)
    summary = re.search(r"median (\d+) µs, ([\d,]+) requests/s", client.output())
    if summary:
        figures["REQ/REP round trip, median"] = f"{summary[1]} µs"
        figures["REQ/REP requests/s (one client)"] = summary[2]
    server.stop()

    section("throughput 2: PUSH/PULL, 100,000 tasks that do no work, two workers")
    port = lab.ports(5557, 2)
    sink, workers = lab.group("Terminal 1", "push_pull.py", "sink", WORKERS, "PULL from", port)
    vent = lab.run("Terminal 3", "push_pull.py", "ventilator 100000 --max-work-ms 0", port=port)
    done = sink.wait_for(r"100000 results in ([\d.]+) s")
    lab.show(sink, vent)
    figures["PUSH/PULL tasks/s through two workers"] = f"{100000 / float(done[1]):,.0f}"

    section("throughput 3: PUB flat out to one subscriber that keeps up as best it can")
    port = lab.ports(5562, 2)
    sub, pub = publish_to(
        lab, "sync_pub_sub.py", "subscriber", "publisher --rate 0 --count 200000", "a probe", port
    )
    published = re.search(r"published 200000 in ([\d.]+) s", pub.output())
    received = number(r"received (\d+) of", sub.output())
    if published:
        figures["PUB messages/s sent flat out"] = f"{200000 / float(published[1]):,.0f}"
    figures["of 200,000 published, received"] = f"{received:,}"

    section("throughput 4: 2,000 requests through the load-balancing broker, 2 workers")
    port = lab.ports(5559, 2)
    fast = [f"{worker} --work-ms 0" for worker in WORKERS]
    lab.group("Terminal 1", "router_dealer.py", "broker", fast, "READY", port)
    started = time.perf_counter()
    client = lab.run("Terminal 3", "router_dealer.py", "client 1 --count 2000", port=port)
    elapsed = time.perf_counter() - started
    lab.show(client)
    figures["broker requests/s (one client, start-up included)"] = f"{2000 / elapsed:,.0f}"

    section("throughput: the figures")
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name.ljust(width)}  {value}")
    lab.look("these depend on the machine and its load: compare them with each other, not with")
    lab.look("other machines. REQ/REP waits a round trip per request; PUSH/PULL and PUB do not.")
    return figures


def simple_pirate(lab: Lab) -> None:
    section("simple-pirate: a worker is killed (kill -9) while the client sends 20 requests")
    script = RELIABILITY / "simple_pirate.py"
    port = lab.ports(5601, 2)
    queue = lab.start("Terminal 1", script, "queue", port=port)
    queue.wait_for(r"workers on port")
    victim, survivor = (lab.start("Terminal 2 &", script, "worker", port=port) for _ in "12")
    for worker in (victim, survivor):
        worker.wait_for(r"READY")
    client = lab.start("Terminal 3", script, "client --count 20", port=port)
    client.wait_for(r"request 5 done")
    victim.send(signal.SIGKILL)
    client.wait()
    lab.show(queue, victim, survivor, client)
    resent = len(re.findall(r"no reply to", client.output()))
    lab.look(f"the client resent {resent} request(s) after 1 s of silence and got all 20 replies;")
    lab.look("the queue never learned of the death: it only lost track of that one worker")
    lab.expect("20 replies" in client.output() and resent >= 1, "no resend, or not all replies")


def paranoid_pirate(lab: Lab) -> None:
    script = RELIABILITY / "paranoid_pirate.py"
    client_script = RELIABILITY / "simple_pirate.py"
    port = lab.ports(5603, 2)
    section("paranoid-pirate 1: a worker is killed; the queue notices by itself")
    queue = lab.start("Terminal 1", script, "queue", port=port)
    queue.wait_for(r"workers on port")
    victim, survivor = (lab.start("Terminal 2 &", script, "worker", port=port) for _ in "12")
    for worker in (victim, survivor):  # the queue must know both: a READY may still be in flight
        name = worker.wait_for(r"\[(worker-\d+)\] DEALER").group(1)
        queue.wait_for(rf"{name} is ready")
    victim.send(signal.SIGKILL)
    queue.wait_for(r"expired", timeout=10)
    client = lab.run("Terminal 3", client_script, "client --count 5", port=port)
    lab.show(queue, victim, survivor, client)
    lab.look("about 3 s (3 missed heartbeats) after the kill, the queue dropped the worker, and")
    lab.look("the client's 5 requests went to the survivor without a single resend")
    lab.expect("no reply" not in client.output(), "the client had to resend")

    section("paranoid-pirate 2: the queue is killed, the worker backs off, the queue returns")
    queue.send(signal.SIGKILL)
    survivor.wait_for(r"reconnecting in 2 s", timeout=15)
    again = lab.start("Terminal 1 (again)", script, "queue", port=port)
    again.wait_for(r"is ready", timeout=40)
    client = lab.run("Terminal 3", client_script, "client --count 3", port=port)
    lab.show(survivor, again, client)
    lab.look("the worker waited 1 s, then 2 s... between attempts, and came back by itself")
    lab.expect("3 replies" in client.output(), "the worker did not come back")


def majordomo(lab: Lab) -> None:
    script = RELIABILITY / "majordomo.py"
    section("majordomo: requests routed by service name; a broker restart")
    port = lab.ports(5605)
    hub = lab.start("Terminal 1", script, "broker", port=port)
    hub.wait_for(r"ROUTER on port")
    workers = [
        lab.start("Terminal 2 &", script, f"worker {name}", port=port) for name in ("echo", "upper")
    ]
    hub.wait_for(r"'echo'[\s\S]*'upper'|'upper'[\s\S]*'echo'")
    asks = [
        lab.run(
            "Terminal 3", script, f"client {shlex.quote(service)} {shlex.quote(text)}", port=port
        )
        for service, text in (("upper", "hello majordomo"), ("echo", "hello"))
    ]
    lab.show(hub, *workers, *asks)
    lab.look("one ROUTER, two services: each request went to a worker of the service it named")
    lab.expect("HELLO MAJORDOMO" in asks[0].output(), "upper did not answer in upper case")
    hub.send(signal.SIGKILL)
    hub.wait()
    again = lab.start("Terminal 1 (again)", script, "broker", port=port)
    again.wait_for(r"'echo'[\s\S]*'upper'|'upper'[\s\S]*'echo'", timeout=20)
    ask = lab.run("Terminal 3", script, 'client upper "after the restart"', port=port)
    lab.show(again, ask)
    lab.look("the workers stopped hearing heartbeats and said READY again: the new broker")
    lab.look("learned their services without anyone restarting them")
    lab.expect(ask.popen.returncode == 0, "no reply after the broker restart")


def binary_star(lab: Lab) -> None:
    script = RELIABILITY / "binary_star.py"
    section(
        "binary-star: the primary is killed mid-run, the backup takes over, the primary returns"
    )
    port = lab.ports(5606, 4)
    primary = lab.start("Terminal 1", script, "primary", port=port)
    backup = lab.start("Terminal 2", script, "backup", port=port)
    primary.wait_for(r"PRIMARY -> ACTIVE")
    backup.wait_for(r"BACKUP -> PASSIVE")
    client = lab.start("Terminal 3", script, "client --count 20", port=port)
    client.wait_for(r"request 8 by primary")
    primary.send(signal.SIGKILL)
    client.wait()
    lab.show(primary, backup, client)
    lab.look("the client timed out on the primary, turned to the backup, and that visit made the")
    lab.look("backup ACTIVE: its peer had been silent for longer than 2 heartbeats")
    lab.expect("request 20 by backup" in client.output(), "the backup did not take over")
    again = lab.start("Terminal 1 (again)", script, "primary", port=port)
    again.wait_for(r"PRIMARY -> PASSIVE")
    client = lab.run("Terminal 3", script, "client --count 3", port=port)
    lab.show(again, backup, client)
    lab.look(
        "the returning primary saw an ACTIVE backup and stood by; clients stay with the backup"
    )
    lab.expect("request 3 by backup" in client.output(), "the backup stopped serving")


EXPERIMENTS: dict[str, tuple[Callable[[Lab], object], str]] = {
    "basics": (basics, "the README's basic examples: REQ/REP, a pipeline, the two demos"),
    "slow-joiner": (slow_joiner, "PUB/SUB and PUSH/PULL lose or skew the start; sync fixes it"),
    "hwm": (hwm, "a slow subscriber behind a high-water mark: PUB drops, silently"),
    "retry": (retry, "the Lazy Pirate: a dead server, a restart, a duplicate"),
    "broker": (broker, "the load-balancing broker with a slow worker (210 requests)"),
    "throughput": (throughput, "figures: round trips, tasks/s, messages/s (--results FILE)"),
    "simple-pirate": (simple_pirate, "a worker killed under a Simple Pirate queue"),
    "paranoid-pirate": (paranoid_pirate, "heartbeats: dead workers expire, workers back off"),
    "majordomo": (majordomo, "service names, and a broker restart the workers survive"),
    "binary-star": (binary_star, "primary-backup failover, and the primary's return"),
}


# --- exercise checks -------------------------------------------------------------------------


def check_handshake(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 1, exercise 1: the ventilator waits for N handshakes instead of sleeping."""
    port = lab.ports(5557, 2)
    sink, _ = lab.group("sink", "push_pull.py", "sink", WORKERS, "PULL from", port)
    command = "ventilator 30 --workers 3 --max-work-ms 5"
    vent = lab.start("attempt", attempt, command, port=port)
    time.sleep(1.5)
    if not usage_ok(verdicts, vent, command):
        return
    waited = vent.running()
    verdicts.judge(
        waited,
        "with 2 of 3 workers connected it was still waiting after 1.5 s",
        "it did not wait for the third worker: it exited or sent the batch within 1.5 s,"
        f" with only 2 of 3 workers connected:\n{indent(vent.output())}",
    )
    lab.start("worker", "push_pull.py", "worker 3", port=port)
    try:
        vent.wait(timeout=10)
        finished = vent.popen.returncode == 0
    except LabError:
        finished = False
    verdicts.judge(
        finished,
        "once the third worker connected it sent the batch and exited 0",
        "it did not finish (exit 0) within 10 s of the third worker connecting:"
        f"\n{indent(vent.output())}",
    )
    try:
        report = sink.wait_for(r"30 results in [\d.]+ s; (.*)", timeout=15).group(1)
    except LabError:
        report = ""
    shares = dict(re.findall(r"worker (\d+): (\d+)", report))
    verdicts.judge(
        set(shares) == {"1", "2", "3"},
        f"all three workers got tasks ({report})",
        f"not all three workers got tasks; the sink reported: {report or 'no batch of 30'}",
    )
    started = time.monotonic()
    again = lab.start("attempt", attempt, command, port=port)
    try:
        again.wait(timeout=5)
    except LabError:
        pass
    quick = again.popen.returncode == 0 and time.monotonic() - started < 2.5
    verdicts.judge(
        quick,
        "with all three workers already connected it sent at once, without a fixed sleep",
        "with all three workers already connected it took more than 2.5 s (or failed): count"
        " handshake events instead of sleeping",
    )


def check_lost_worker(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 1, exercise 2: a router_dealer client that survives a worker killed mid-request."""
    port = lab.ports(5559, 2)
    later = ["worker 1", "worker 2 --work-ms 3000"]
    _, (_, doomed) = lab.group("broker", "router_dealer.py", "broker", later, "READY", port)
    command = "client 1 --count 20"
    client = lab.start("attempt", attempt, command, port=port)
    time.sleep(1.0)
    if not usage_ok(verdicts, client, command):
        return
    doomed.send(signal.SIGKILL)
    try:
        client.wait(timeout=40)
    except LabError:
        pass
    output = client.output()
    verdicts.judge(
        client.popen.returncode == 0,
        "it exited 0 although worker-2 was killed holding one of its requests",
        f"it exited {client.popen.returncode}: the request held by the killed worker was"
        f" never answered, and the client gave up (or hung):\n{indent(output)}",
    )
    verdicts.judge(
        bool(re.search(r"\b20 replies\b", output)),
        "it reports 20 replies",
        f"it does not report `20 replies` (the lesson's summary line):\n{indent(output)}",
    )


def check_idempotent(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 1, exercise 3: a REP server that answers resent requests from a cache."""
    port = lab.ports(5555)
    command = "server --work-ms 600"
    server = lab.start("attempt", attempt, command, port=port)
    try:
        server.wait_for(r"\S", timeout=READY_TIMEOUT_S)
    except LabError:
        pass
    time.sleep(0.3)
    if not usage_ok(verdicts, server, command) or not server.running():
        verdicts.judge(False, "", f"the server is not running:\n{indent(server.output())}")
        return
    clients = [
        lab.run(
            "client",
            "req_rep.py",
            'client localhost {port} "pay 10" --count 3 --timeout 400 --retries 4',
            port=port,
        )
        for _ in "12"
    ]
    for nth, client in enumerate(clients, start=1):
        verdicts.judge(
            client.popen.returncode == 0 and "reply 3/3: 'echo: pay 10'" in client.output(),
            f"client {nth} got all 3 replies, each to its own request id",
            f"client {nth} (timeout 400 ms, work 600 ms) did not get 3 correct replies; a"
            " server that works again on every resend never catches up:\n"
            f"{indent(client.output())}",
        )
    fast = lab.run(
        "client", "req_rep.py", "client localhost {port} hello --count 2 --timeout 2000", port=port
    )
    verdicts.judge(
        fast.popen.returncode == 0 and "echo: hello" in fast.output(),
        "a new request (not a resend) is still worked on and answered",
        f"a new request was not answered properly:\n{indent(fast.output())}",
    )


def check_mmi(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Reliability exercise: the Majordomo broker answers mmi.service lookups itself."""
    script = RELIABILITY / "majordomo.py"
    port = lab.ports(5605)
    hub = lab.start("attempt", attempt, "broker", port=port)
    time.sleep(0.8)
    if not usage_ok(verdicts, hub, "broker") or not hub.running():
        verdicts.judge(False, "", f"the broker is not running:\n{indent(hub.output())}")
        return
    lab.start("worker", script, "worker echo", port=port).wait_for(r"DEALER connected")
    time.sleep(0.5)
    cases = [("echo", "200"), ("upper", "404"), ("nothing", "404")]
    for service, code in cases:
        ask = lab.run("client", script, f"client mmi.service {shlex.quote(service)}", port=port)
        if not verdicts.judge(
            f"mmi.service: {code}" in ask.output(),
            f"`client mmi.service {service}` gets {code}",
            f"`client mmi.service {service}` should print `mmi.service: {code}`:"
            f"\n{indent(ask.output())}",
        ):
            break  # the other lookups would fail the same way, 7.5 s each
    echo = lab.run("client", script, 'client echo "still works"', port=port)
    verdicts.judge(
        "echo: still works" in echo.output(),
        "ordinary requests still reach the echo worker",
        f"an ordinary echo request failed:\n{indent(echo.output())}",
    )


EXERCISES: dict[str, tuple[Callable[[Lab, Path, Verdicts], None], str, str]] = {
    "handshake": (
        check_handshake,
        "week 1, exercise 1: `push_pull.py ventilator N --workers W` waits for W handshakes",
        "docs/solutions/week1/handshake_ventilator.py",
    ),
    "lost-worker": (
        check_lost_worker,
        "week 1, exercise 2: a router_dealer.py client that survives a killed worker",
        "docs/solutions/week1/lost_worker_client.py",
    ),
    "idempotent": (
        check_idempotent,
        "week 1, exercise 3: a req_rep.py server that answers resends from a cache",
        "docs/solutions/week1/idempotent_server.py",
    ),
    "mmi": (
        check_mmi,
        "reliability exercise: the Majordomo broker answers mmi.service itself",
        "docs/solutions/reliability/mmi_broker.py",
    ),
}
for week in (week2, week3, week4):
    EXPERIMENTS.update(week.EXPERIMENTS)
    EXERCISES.update(week.EXERCISES)


def run_check(exercise: str, attempt: Path, default_ports: bool) -> int:
    check, about, reference = EXERCISES[exercise]
    print(f"check {exercise} ({about})\nattempt: {attempt}", flush=True)
    verdicts = Verdicts()
    with lab_session(default_ports) as lab:
        try:
            check(lab, attempt.resolve(), verdicts)
        except LabError as exc:
            verdicts.judge(False, "", f"the check could not go on: {exc}")
    passed = sum(ok for ok, _ in verdicts.results)
    print(f"{passed} of {len(verdicts.results)} checks passed", end="")
    print("" if passed == len(verdicts.results) else f"; the reference solution: {reference}")
    return 0 if verdicts.results and passed == len(verdicts.results) else 1


# --- results file and command line -----------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
        kib = int(re.findall(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())[0])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, IndexError):
        memory = ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def write_results(path: Path, experiment: str, output: str, figures: dict[str, str]) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(f"| {name} | {value} |" for name, value in figures.items())
    path.write_text(
        f"# week-1 labs: {experiment}\n\n"
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}\n"
        f"- machine: {machine()}\n"
        f"- load average when the run started: {load:.2f} (a shared machine)\n"
        "- command (from the repository root, .venv active):\n\n"
        f"```\npython 01-zmq-basics/labs.py {experiment} --results {path}\n```\n\n"
        f"| figure | value |\n| --- | ---: |\n{table}\n\n"
        f"Output, verbatim:\n\n```text\n{output.strip()}\n```\n"
    )


class Tee:
    """Copies what is printed, so that --results can store the verbatim output."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.stdout = sys.stdout

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stdout.write(text)

    def flush(self) -> None:
        self.stdout.flush()


def run_experiments(names: list[str], default_ports: bool, results: Path | None) -> int:
    tee = Tee()
    sys.stdout = tee
    unexpected: list[str] = []
    figures: dict[str, str] = {}
    try:
        with lab_session(default_ports) as lab:
            for name in names:
                outcome = EXPERIMENTS[name][0](lab)
                if isinstance(outcome, dict):
                    figures.update(outcome)
                lab.stop_all()
                lab.procs.clear()
            unexpected = lab.unexpected
    except LabError as exc:
        print(f"error: the experiment could not go on: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout = tee.stdout
    if results is not None:
        write_results(results, " ".join(names), "".join(tee.parts), figures)
        print(f"wrote {results}")
    if unexpected:
        print(f"{len(unexpected)} unexpected outcome(s): {'; '.join(unexpected)}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run the course's experiments, or check your solution of an exercise.",
        epilog="experiments: " + ", ".join(EXPERIMENTS) + "; exercises: " + ", ".join(EXERCISES),
    )
    parser.add_argument("what", help="an experiment, `all`, `list`, or `check`")
    parser.add_argument("more", nargs="*", help="for check: EXERCISE ATTEMPT.py")
    parser.add_argument(
        "--default-ports",
        action="store_true",
        help="use the lessons' default ports instead of free ones (off)",
    )
    parser.add_argument(
        "--results",
        type=output_file,
        metavar="FILE",
        help="also write the output and figures to FILE (not written)",
    )
    args = parser.parse_args()
    if args.what == "list":
        for name, (_, about) in EXPERIMENTS.items():
            print(f"{name:<17} {about}")
        for name, (_, about, _) in EXERCISES.items():
            print(f"check {name:<11} {about}")
        return 0
    if args.what == "check":
        if len(args.more) != 2 or args.more[0] not in EXERCISES:
            parser.error(
                f"usage: check EXERCISE ATTEMPT.py, EXERCISE one of {', '.join(EXERCISES)}"
            )
        attempt = Path(args.more[1])
        if not attempt.is_file():
            parser.error(f"{attempt} is not a file")
        return run_check(args.more[0], attempt, args.default_ports)
    names = list(EXPERIMENTS) if args.what == "all" else [args.what]
    if args.more or any(name not in EXPERIMENTS for name in names):
        parser.error(f"unknown experiment {args.what!r}; `labs.py list` shows them")
    return run_experiments(names, args.default_ports, args.results)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process the lab started has been stopped", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `labs.py all | head`: the processes are stopped already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
