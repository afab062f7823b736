"""Week 2's experiments (the cluster as the pages run it) and exercise checks.

    labs.py cluster       docs/week2-cluster-patterns.md "Run it": three workers, a monitor,
                          three workloads, /health, watch.py; then kill -9 w3
    labs.py watch         examples/monitoring/README.md: two workers, 200 short tasks, watch.py
    labs.py check freeze|detection|restart ATTEMPT    the week-2 exercises

Every process runs on free ports (the commands are printed with the defaults, 5570-5572).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq

from cluster_patterns.defaults import HEARTBEAT_INTERVAL_S, LIVENESS
from cluster_patterns.protocol import NodeEvent, NodeEventKind, ProtocolError, Status, decode
from cluster_runner_simulation.labs.kit import Lab, LabError, Proc, Verdicts, indent, section
from cluster_runner_simulation.labs.kit import usage_ok

COORDINATOR: Final = "02-cluster-patterns/coordinator.py"
WORKER: Final = "02-cluster-patterns/worker.py"
MONITOR: Final = "02-cluster-patterns/monitor.py"
CLIENT: Final = "02-cluster-patterns/client.py"
WATCH: Final = "examples/monitoring/watch.py"
# The detection budget of ADR 2: the dead point (interval x liveness) plus one interval.
BUDGET_S: Final = HEARTBEAT_INTERVAL_S * (LIVENESS + 1)
CLUSTER_READY_S: Final = 20.0


@dataclass(frozen=True)
class Ports:
    """A cluster's three ports: free ones, printed as 5570, 5571 and 5572."""

    tasks: int
    status: int
    http: int

    @classmethod
    def of(cls, lab: Lab) -> Ports:
        first = lab.ports(5570, 3)
        return cls(first, first + 1, first + 2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


def coordinator(lab: Lab, terminal: str, ports: Ports, args: str = "") -> Proc:
    hidden = ["--port", str(ports.tasks), "--status-port", str(ports.status)]
    proc = lab.start(terminal, COORDINATOR, args, hidden=hidden)
    proc.wait_for(r"coordinator ready")
    return proc


def worker(lab: Lab, terminal: str, ports: Ports, worker_id: str, args: str = "") -> Proc:
    proc = lab.start(terminal, WORKER, f"--id {worker_id} {args}".strip(), port=ports.tasks)
    proc.wait_for(r"registered")
    return proc


def monitor(lab: Lab, terminal: str, ports: Ports) -> Proc:
    hidden = ["--status-port", str(ports.status), "--port", str(ports.http)]
    proc = lab.start(terminal, MONITOR, hidden=hidden)
    proc.wait_for(r"monitor ready")
    return proc


def client(lab: Lab, terminal: str, ports: Ports, args: str) -> Proc:
    return lab.run(terminal, CLIENT, args, port=ports.tasks)


def watch_once(lab: Lab, terminal: str, ports: Ports) -> Proc:
    return lab.run(terminal, WATCH, "--once", hidden=["--url", ports.url])


def cluster_document(ports: Ports) -> dict[str, Any] | None:
    """The monitor's /api/cluster, or None while it does not answer."""
    try:
        with urllib.request.urlopen(ports.url + "/api/cluster", timeout=2) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_document(
    ports: Ports, ok: Callable[[dict[str, Any]], bool], what: str, timeout: float = CLUSTER_READY_S
) -> None:
    """Until the monitor's /api/cluster document satisfies ``ok``; LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok(cluster_document(ports) or {}):
            return
        time.sleep(0.1)
    raise LabError(f"the monitor did not show {what} within {timeout:.0f} s")


def wait_for_states(ports: Ports, wanted: dict[str, str]) -> None:
    """Until the monitor shows every node of ``wanted`` in its state (the slow joiner)."""

    def reached(document: dict[str, Any]) -> bool:
        states = {node["id"]: node["state"] for node in document.get("nodes", [])}
        return all(states.get(node) == state for node, state in wanted.items())

    wait_for_document(ports, reached, str(wanted))


def wait_for_done(ports: Ports, done: int) -> None:
    """Until the monitor's task totals count ``done`` tasks: they come with the coordinator's
    next TASK_STATS (every interval), so a client that has just finished is not counted yet."""
    wait_for_document(
        ports, lambda document: document.get("totals", {}).get("done", 0) >= done, f"{done} done"
    )


def seconds(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


# --- experiments -------------------------------------------------------------------------------


def cluster(lab: Lab) -> None:
    section("cluster 1: a coordinator, three workers, the monitor; three workloads")
    ports = Ports.of(lab)
    coord = coordinator(lab, "Terminal 1", ports)
    workers = [worker(lab, "Terminal 2 &", ports, f"w{n}") for n in (1, 2, 3)]
    mon = monitor(lab, "Terminal 3", ports)
    wait_for_states(ports, {"w1": "alive", "w2": "alive", "w3": "alive"})
    runs = [
        client(lab, "Terminal 4", ports, args)
        for args in ("--count 1000 --kind echo", "--count 20 --kind sleep --ms 100")
    ]
    failing = client(lab, "Terminal 4", ports, "--count 5 --kind fail")
    health = lab.spawn(
        "Terminal 4", ["curl", "-s", ports.url + "/health"], "curl -s http://localhost:5572/health"
    )
    health.wait()
    table = watch_once(lab, "Terminal 4", ports)
    lab.show(coord, *workers, mon, *runs, failing, health, table)
    lab.look("the 1000 echo tasks were spread over all three workers (the done column);")
    lab.look("the fail tasks are outcomes, recorded once: the client exits 1, nothing is lost")
    lab.expect(all(run.popen.returncode == 0 for run in runs), "a workload did not finish")
    lab.expect(failing.popen.returncode == 1, "the fail workload did not exit 1")

    section("cluster 2: kill -9 w3, then watch.py --once two seconds later")
    workers[2].send(signal.SIGKILL)
    killed_at = time.monotonic()
    coord.wait_for(r"node w3 dead after")
    time.sleep(max(0.0, killed_at + 2.0 - time.monotonic()))
    table = watch_once(lab, "Terminal 4", ports)
    lab.show(coord, table)
    silence = seconds(r"node w3 dead after ([\d.]+)s", coord.output())
    lab.look(f"w3 was declared dead {silence} s after its last message: interval x liveness =")
    lab.look(
        f"{HEARTBEAT_INTERVAL_S * LIVENESS} s, plus at most one tick of the coordinator's loop"
    )
    lab.expect(silence is not None and silence <= BUDGET_S, f"detection above {BUDGET_S} s")


def watch(lab: Lab) -> None:
    section("watch: two workers, 200 tasks of 10 ms, and the cluster table in a terminal")
    ports = Ports.of(lab)
    coord = coordinator(lab, "Terminal 1", ports)
    workers = [worker(lab, "Terminal 2 &", ports, f"w{n}") for n in (1, 2)]
    mon = monitor(lab, "Terminal 3", ports)
    wait_for_states(ports, {"w1": "alive", "w2": "alive"})
    run = client(lab, "Terminal 4", ports, "--count 200 --kind sleep --ms 10")
    wait_for_done(ports, 200)  # as a person does, who types the next command a moment later
    table = watch_once(lab, "Terminal 4", ports)
    lab.show(coord, *workers, mon, run, table)
    lab.look("both workers alive, their done columns add up to the 200 tasks submitted")
    lab.expect("submitted 200, done 200" in table.output(), "the totals are not 200 and 200")


EXPERIMENTS: Final[dict[str, tuple[Callable[[Lab], object], str]]] = {
    "cluster": (cluster, "week 2: the cluster, three workloads, a worker killed (kill -9)"),
    "watch": (watch, "week 2: the monitoring example's table after 200 tasks"),
}


# --- exercise checks ---------------------------------------------------------------------------


class StatusWatcher:
    """The check's own SUB on the status channel: NODE_EVENTs with their arrival times."""

    def __init__(self, ports: Ports) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(f"tcp://127.0.0.1:{ports.status}")
        self.events: list[tuple[float, NodeEvent]] = []
        self.status: Status | None = None

    def wait(self, seconds: float) -> None:
        """Read for ``seconds``, remembering what arrived and when."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                continue
            try:
                message = decode(self.sock.recv())
            except ProtocolError:
                continue
            if isinstance(message, NodeEvent):
                self.events.append((time.monotonic(), message))
            elif isinstance(message, Status):
                self.status = message

    def first(self, node: str, kind: NodeEventKind, after: float = 0.0) -> float | None:
        """When the first ``kind`` event of ``node`` after ``after`` arrived."""
        return next(
            (at for at, e in self.events if e.node_id == node and e.event is kind and at > after),
            None,
        )

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def check_freeze(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 2, exercise 1: a status-channel follower, used on a frozen worker."""
    ports = Ports.of(lab)
    coord = coordinator(lab, "coordinator", ports)
    command = f"--status-port {ports.status}"
    follower = lab.start("attempt", attempt, command)
    time.sleep(1.0)
    if not usage_ok(verdicts, follower, command) or not follower.running():
        verdicts.judge(False, "", f"it is not running:\n{indent(follower.output())}")
        return
    frozen = [worker(lab, "worker", ports, name) for name in ("w1", "w2", "w3")][2]
    load = lab.start("client", CLIENT, "--count 200 --kind sleep --ms 200", port=ports.tasks)
    time.sleep(0.5)  # w3 holds 8 tasks now
    frozen.send(signal.SIGSTOP)
    time.sleep(3.0)
    frozen.send(signal.SIGCONT)
    load.wait()
    coord.wait_for(r"node w3 alive")
    with status_watcher(ports) as watcher:
        watcher.wait(2 * HEARTBEAT_INTERVAL_S)
        duplicates = watcher.status.totals.duplicates if watcher.status else None
    follower.send(signal.SIGINT)
    code = follower.wait(10)
    printed, logged = follower.output(), coord.output()
    joined = [name for name in ("w1", "w2", "w3") if re.search(rf"^{name} joined$", printed, re.M)]
    verdicts.judge(
        len(joined) == 3,
        "it printed `w1 joined`, `w2 joined` and `w3 joined` (it was up before the workers)",
        f"it printed joined lines for {joined or 'no worker'}, not w1, w2 and w3:"
        f"\n{indent(printed)}",
    )
    for wanted in verdict_lines(logged, "w3"):
        verdicts.judge(
            re.search(rf"^{re.escape(wanted)}$", printed, re.M) is not None,
            f"it printed `{wanted}`, as the coordinator logged it",
            f"it did not print `{wanted}` (the coordinator logged it):\n{indent(printed)}",
        )
    verdicts.judge(
        duplicates is not None
        and re.search(rf"^duplicates {duplicates}$", printed, re.M) is not None,
        f"after Ctrl-C it printed `duplicates {duplicates}`, the last STATUS's total",
        f"after Ctrl-C it should print `duplicates {duplicates}` (the last STATUS's"
        f" totals.duplicates):\n{indent(printed)}",
    )
    verdicts.judge(code == 0, "Ctrl-C ended it with exit code 0", f"Ctrl-C: exit code {code}")
    summary = re.search(r"duplicates (\d+), lost (\d+)", load.output())
    if summary:
        print(
            f"  note  the client saw duplicates {summary[1]}, lost {summary[2]}: each task has"
            f" one outcome; the coordinator dropped {duplicates} late result(s) of w3",
            flush=True,
        )


def verdict_lines(logged: str, node: str) -> list[str]:
    """The first suspect, dead and alive verdicts the coordinator logged for ``node``, written
    the way the exercise asks: "w3 dead after 1.52 s of silence"."""
    found = []
    for kind in (
        r"suspect",
        r"dead after [\d.]+s of silence",
        r"alive \(recovered after [\d.]+s\)",
    ):
        match = re.search(rf"node {node} ({kind})", logged)
        if match:
            found.append(f"{node} " + re.sub(r"([\d.]+)s\b", r"\1 s", match.group(1)))
    return found


class status_watcher:
    """``with status_watcher(ports) as watcher``: a StatusWatcher, closed afterwards."""

    def __init__(self, ports: Ports) -> None:
        self.watcher = StatusWatcher(ports)

    def __enter__(self) -> StatusWatcher:
        return self.watcher

    def __exit__(self, *exc: object) -> None:
        self.watcher.close()


PAUSE_S: Final = 0.25  # a worker stopped this long must stay alive
KILL_BOUND_S: Final = 0.9  # a killed worker must be dead this soon
MAX_BEATS_PER_S: Final = 10.0


def detection_flags(attempt: Path) -> list[str]:
    words: list[str] = []
    for text in attempt.read_text().splitlines():
        if text.strip() and not text.lstrip().startswith("#"):
            words += shlex.split(text)
    return words


def check_detection(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 2, exercise 2: coordinator flags that detect fast without killing paused workers."""
    try:
        flags = detection_flags(attempt)
    except ValueError as exc:
        verdicts.judge(False, "", f"the file does not parse as command-line flags: {exc}")
        return
    names = flags[::2]
    if sorted(names) != ["--heartbeat-interval", "--liveness"] or len(flags) != 4:
        verdicts.judge(
            False, "", f"want exactly `--heartbeat-interval S --liveness N`, got {flags}"
        )
        return
    settings = dict(zip(names, flags[1::2]))
    interval = float(settings["--heartbeat-interval"])
    beats = 1 / interval if interval > 0 else float("inf")
    verdicts.judge(
        beats <= MAX_BEATS_PER_S,
        f"{beats:g} heartbeats per second per worker (at most {MAX_BEATS_PER_S:g})",
        f"{beats:g} heartbeats per second per worker, above {MAX_BEATS_PER_S:g}: each one costs"
        " every worker and the coordinator a message",
    )
    ports = Ports.of(lab)
    try:
        coordinator(lab, "coordinator", ports, " ".join(flags))
    except LabError as exc:
        verdicts.judge(False, "", f"the coordinator refused these flags: {exc}")
        return
    with status_watcher(ports) as watcher:
        paused = worker(lab, "worker", ports, "w1")
        watcher.wait(1.0)
        for _ in range(3):
            paused.send(signal.SIGSTOP)
            watcher.wait(PAUSE_S)
            paused.send(signal.SIGCONT)
            watcher.wait(1.0)
        died = watcher.first("w1", NodeEventKind.DEAD)
        verdicts.judge(
            died is None,
            f"a worker stopped three times for {PAUSE_S} s (a GC pause) stayed alive",
            f"a worker stopped for {PAUSE_S} s was declared dead: a pause looks like a"
            " silence of up to pause + interval, and that reached interval x liveness",
        )
        killed_at = time.monotonic()
        paused.send(signal.SIGKILL)
        watcher.wait(KILL_BOUND_S + 3.0)
        dead = watcher.first("w1", NodeEventKind.DEAD, after=killed_at)
    took = None if dead is None else dead - killed_at
    verdicts.judge(
        took is not None and took <= KILL_BOUND_S,
        f"a killed worker was declared dead {took or 0:.2f} s after the kill"
        f" (at most {KILL_BOUND_S} s)",
        f"a killed worker was declared dead {'never' if took is None else f'{took:.2f} s'} after"
        f" the kill, not within {KILL_BOUND_S} s: interval x liveness is too long",
    )


def journal_counts(log: Path) -> tuple[int, int, int, int]:
    """(accepted, with one outcome, without, recorded twice), read the way the spec says."""
    accepted: set[str] = set()
    outcomes: Counter[str] = Counter()
    for raw in log.read_bytes().splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            continue  # a torn last line
        entry = json.loads(raw)
        if entry["op"] == "submit":
            accepted.add(entry["task_id"])
        else:
            outcomes[entry["task_id"]] += 1
    once = sum(1 for task in accepted if outcomes[task] == 1)
    without = sum(1 for task in accepted if outcomes[task] == 0)
    return len(accepted), once, without, sum(1 for n in outcomes.values() if n > 1)


def counts_line(counts: tuple[int, int, int, int]) -> str:
    accepted, once, without, twice = counts
    return (
        f"accepted {accepted} tasks: {once} with one outcome, {without} without,"
        f" {twice} recorded twice"
    )


def check_restart(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 2, exercise 3: count the state log's outcomes after a coordinator's SIGKILL."""
    state = lab.alias("coord-state", "/tmp/coord-state")
    ports = Ports.of(lab)
    first = coordinator(lab, "coordinator", ports, f"--state-dir {state}")
    for name in ("w1", "w2"):
        worker(lab, "worker", ports, name)
    load = lab.start("client", CLIENT, "--count 400 --kind sleep --ms 100", port=ports.tasks)
    time.sleep(1.0)
    first.send(signal.SIGKILL)
    first.wait()
    coordinator(lab, "coordinator (again)", ports, f"--state-dir {state}")
    load.wait(120)
    print(f"  note  the client, across the restart: {load.output().strip()}", flush=True)
    truth = journal_counts(state / "journal.jsonl")
    counted = lab.run("attempt", attempt, str(state))
    if not usage_ok(verdicts, counted, "/tmp/coord-state"):
        return
    verdicts.judge(
        counts_line(truth) in counted.output() and counted.popen.returncode == 0,
        f"it printed `{counts_line(truth)}` and exited 0",
        f"it should print `{counts_line(truth)}` and exit 0 (it exited"
        f" {counted.popen.returncode}):\n{indent(counted.output())}",
    )
    broken = lab.workdir / "broken-state"
    broken.mkdir()
    lines = (state / "journal.jsonl").read_bytes().splitlines(keepends=True)
    result = next(line for line in lines if b'"op":"result"' in line)
    extra = b'{"op":"submit","task_id":"never-done","kind":"echo","ms":0,"payload":""}\n'
    (broken / "journal.jsonl").write_bytes(b"".join(lines) + result + extra + b'{"op":"res')
    wrong = lab.run("attempt", attempt, str(broken))
    expected = counts_line(journal_counts(broken / "journal.jsonl"))
    verdicts.judge(
        expected in wrong.output() and wrong.popen.returncode == 1,
        f"on a log with one outcome twice, one missing and a torn last line: `{expected}`,"
        " exit 1",
        f"on a log with one outcome twice, one missing and a torn last line it should print"
        f" `{expected}` and exit 1 (it exited {wrong.popen.returncode}):"
        f"\n{indent(wrong.output())}",
    )


EXERCISES: Final[dict[str, tuple[Callable[[Lab, Path, Verdicts], None], str, str]]] = {
    "freeze": (
        check_freeze,
        "week 2, exercise 1: follow the status channel through a frozen worker",
        "docs/solutions/week2/node_events.py",
    ),
    "detection": (
        check_detection,
        "week 2, exercise 2: heartbeat flags that detect a kill in 0.9 s, survive a pause",
        "docs/solutions/week2/detection_flags.txt",
    ),
    "restart": (
        check_restart,
        "week 2, exercise 3: count a state log's outcomes after a coordinator SIGKILL",
        "docs/solutions/week2/outcomes.py",
    ),
}
