"""Week 4's experiment (the fault injector, as the page runs it) and exercise checks.

    labs.py simulate     simulate-cluster.sh --local: start, fail, recover, a workload, mpi, stop
    labs.py check slow|gate|alert|collector-crash ATTEMPT    the week-4 exercises

The simulator runs as the page shows it (`-p week4`), with a private project name, state
directory and free ports underneath, so it collides with no other cluster on the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from cluster_runner_simulation.labs.kit import REPO, Lab, LabError, Proc, Verdicts, indent
from cluster_runner_simulation.labs.kit import JOURNAL, journal_bodies, section
from cluster_runner_simulation.labs.kit import usage_ok

SIMULATOR: Final = "./docker/simulate-cluster.sh"
SIMULATOR_TIMEOUT_S: Final = 120.0
STEPS: Final = (
    "start",
    "status",
    "fail worker1",
    "status",
    "recover worker1",
    "workload --count 200 --kind echo",
    "mpi --nodes 2 --max-bytes 64K",
    "stop",
)


def simulator(lab: Lab, terminal: str, project: str, env: dict[str, str], verb: str) -> Proc:
    """One `simulate-cluster.sh --local -p PROJECT VERB` to its end, shown as `-p week4`."""
    argv = [SIMULATOR, "--local", "-p", project, *verb.split()]
    proc = lab.spawn(terminal, argv, " ".join([SIMULATOR, "--local", "-p", "week4", verb]), env)
    proc.wait(SIMULATOR_TIMEOUT_S)
    return proc


def simulate(lab: Lab) -> None:
    section("simulate: the local backend, a worker killed and restarted, a workload, MPI")
    project = f"week4{uuid.uuid4().hex[:8]}"
    lab.aliases[project] = "week4"
    first = lab.ports(5570, 3)
    env = {
        "COORDINATOR_PORT": str(first),
        "STATUS_PORT": str(first + 1),
        "MONITOR_PORT": str(first + 2),
        "CLUSTER_STATE_DIR": str(lab.workdir / "cluster-state"),
    }
    done: list[Proc] = []
    try:
        for verb in STEPS:
            done.append(simulator(lab, "Terminal 1", project, env, verb))
            if done[-1].popen.returncode != 0:
                break
    finally:
        done.append(simulator(lab, "Terminal 1", project, env, "cleanup"))
    lab.show(*done)
    lab.look("the monitor's verdict, not the kill, ends the fail step: the worker is dead once")
    lab.look("the coordinator has heard nothing from it for interval x liveness")
    lab.expect(all(proc.popen.returncode == 0 for proc in done), "a simulator command failed")


EXPERIMENTS: Final[dict[str, tuple[Callable[[Lab], object], str]]] = {
    "simulate": (simulate, "week 4: the fault injector's local backend, fail and recover"),
}


# --- exercise checks ---------------------------------------------------------------------------


def mean_latencies(output: str) -> tuple[float, float] | None:
    found = re.search(r"via w1: mean ([\d.]+) ms; via w2: mean ([\d.]+) ms", output)
    return (float(found[1]), float(found[2])) if found else None


def check_slow(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 4, exercise 1: a slow link on the fake network, slow but alive (or not)."""
    slow = lab.run("attempt", attempt, "--delay-ms 300")
    if not usage_ok(verdicts, slow, "--delay-ms 300"):
        return
    printed = slow.output()
    verdicts.judge(
        slow.popen.returncode == 0 and not re.search(r"^w2 (suspect|dead)", printed, re.M),
        "with 300 ms of delay, w2 was never suspect, let alone dead",
        f"with 300 ms of delay it ran to the end (exit 0) and printed no `w2 suspect` or"
        f" `w2 dead`? It did not:\n{indent(printed)}",
    )
    means = mean_latencies(printed)
    extra = None if means is None else means[1] - means[0]
    verdicts.judge(
        extra is not None and 290 <= extra <= 310,
        f"tasks via w2 took {extra or 0:.0f} ms longer than via w1: one crossing, the results",
        "it should print `tasks via w1: mean N ms; via w2: mean M ms` with M - N about 300"
        f" (only what w2 sends is delayed):\n{indent(printed)}",
    )
    cut = lab.run("attempt", attempt, "--delay-ms 1200")
    printed = cut.output()
    order = re.findall(r"^w2 (suspect|dead|alive)", printed, re.M)
    verdicts.judge(
        cut.popen.returncode == 0 and order[-3:] == ["suspect", "dead", "alive"],
        "with 1200 ms, w2 went suspect, dead and alive again: a gap at the delay's onset",
        f"with 1200 ms of delay w2 should go `suspect`, `dead`, then `alive` (it printed"
        f" {order or 'no events'}):\n{indent(printed)}",
    )


GATES: Final = {
    "floor": ("zmq p50 / local p50", "at most", 2.0),
    "parity": ("asyncssh p50 / zmq p50", "at least", 1.5),
    "throughput": ("zmq commands/s / asyncssh commands/s", "at least", 1.5),
    "fan-out": ("asyncssh fan-out / zmq fan-out", "at least", 1.5),
}


def gate_ratios(report: dict[str, Any]) -> dict[str, float]:
    executors, fanout = report["executors"], report["fanout"]
    return {
        "floor": executors["zmq"]["p50_ms"] / executors["local"]["p50_ms"],
        "parity": executors["asyncssh"]["p50_ms"] / executors["zmq"]["p50_ms"],
        "throughput": executors["zmq"]["cmds_per_s"] / executors["asyncssh"]["cmds_per_s"],
        "fan-out": fanout["asyncssh"]["total_ms"] / fanout["zmq"]["total_ms"],
    }


def passes(name: str, value: float) -> bool:
    _, how, limit = GATES[name]
    return value <= limit if how == "at most" else value >= limit


def judge_gate(verdicts: Verdicts, run: Proc, report: dict[str, Any], what: str) -> None:
    ratios = gate_ratios(report)
    printed = run.output()
    wrong = []
    for name, value in ratios.items():
        verdict = "PASS" if passes(name, value) else "FAIL"
        if not re.search(rf"^{verdict}\b.*\b{re.escape(name)}\b.*= {value:.2f}\b", printed, re.M):
            wrong.append(f"`{verdict} ... {name} ... = {value:.2f}`")
    code = 0 if all(passes(n, v) for n, v in ratios.items()) else 1
    verdicts.judge(
        not wrong and run.popen.returncode == code,
        f"{what}: every line right, exit {code}",
        f"{what}: want exit {code} (got {run.popen.returncode}) and lines"
        f" {', '.join(wrong) or 'as printed'}:\n{indent(printed)}",
    )


def check_gate(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 4, exercise 2: phase 1's benchmark gate as a program."""
    measured = REPO / "docs" / "results" / "ssh-vs-zmq-full.json"
    report = json.loads(measured.read_text())
    run = lab.run("attempt", attempt, str(measured.relative_to(REPO)))
    if not usage_ok(verdicts, run, "docs/results/ssh-vs-zmq-full.json"):
        return
    judge_gate(verdicts, run, report, "the committed full run")
    for name, change in (
        ("parity", ("executors", "asyncssh", "p50_ms", 2.0)),
        ("fan-out", ("fanout", "zmq", "total_ms", 120.0)),
        ("floor", ("executors", "zmq", "p50_ms", 2.6)),
    ):
        section_, executor, field, value = change
        mutated = json.loads(measured.read_text())
        mutated[section_][executor][field] = value
        path = lab.workdir / f"perf-{name}.json"
        path.write_text(json.dumps(mutated))
        judge_gate(
            verdicts, lab.run("attempt", attempt, str(path)), mutated, f"a run failing {name}"
        )
    broken = lab.workdir / "perf-broken.json"
    broken.write_text(json.dumps({"executors": report["executors"]}))
    run = lab.run("attempt", attempt, str(broken))
    verdicts.judge(
        run.popen.returncode == 2 and "Traceback" not in run.output(),
        "a file without the fan-out: exit 2, with a reason instead of a traceback",
        f"a file without `fanout` should give exit 2 and a reason (got exit"
        f" {run.popen.returncode}):\n{indent(run.output())}",
    )


RULES: Final = REPO / "examples" / "monitoring" / "alerts.yml"


def promtool(test_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rules_variant(lab: Lab, name: str, alert: str, old: str, new: str) -> Path:
    """A directory holding alerts.yml with ``old`` -> ``new`` in the rule of ``alert``."""
    text = RULES.read_text()
    rule = text.index(f"- alert: {alert}")
    changed = text[:rule] + text[rule:].replace(old, new, 1)
    assert changed != text, f"{old!r} not in {alert}"
    directory = lab.workdir / name
    directory.mkdir()
    (directory / "alerts.yml").write_text(changed)
    return directory


def check_alert(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 4, exercise 3: promtool tests that pin when ClusterWorkerDead and
    ClusterFailureDetectionSlow fire (each passes on the rules, fails on a changed rule)."""
    if shutil.which("promtool") is None:
        verdicts.judge(False, "", "promtool is not installed (Debian: apt-get install prometheus)")
        return
    text = attempt.read_text()
    verdicts.judge(
        all(name in text for name in ("alerts.yml", "ClusterWorkerDead", "FailureDetectionSlow")),
        "it loads alerts.yml and tests ClusterWorkerDead and ClusterFailureDetectionSlow",
        "it must load `rule_files: [alerts.yml]` and test both ClusterWorkerDead and"
        " ClusterFailureDetectionSlow",
    )
    as_is = lab.workdir / "as-is"
    as_is.mkdir()
    shutil.copyfile(RULES, as_is / "alerts.yml")
    dead, slow = "ClusterWorkerDead", "ClusterFailureDetectionSlow"
    variants = [
        (as_is, True, "against examples/monitoring/alerts.yml it passes"),
        (
            rules_variant(lab, "late", dead, "for: 0s", "for: 30s"),
            False,
            "a dead-worker alert 30 s late",
        ),
        (
            rules_variant(lab, "never", dead, "== 1", "== 2"),
            False,
            "a dead-worker alert that never fires",
        ),
        (
            rules_variant(lab, "eager", slow, "> 2\n", "> 1.5\n"),
            False,
            "a detection bound of 1.5 s",
        ),
        (rules_variant(lab, "lax", slow, "> 2\n", "> 3\n"), False, "a detection bound of 3 s"),
    ]
    for directory, should_pass, claim in variants:
        shutil.copyfile(attempt, directory / attempt.name)
        done = promtool(directory / attempt.name)
        wanted = claim if should_pass else f"{claim} fails it"
        verdicts.judge(
            (done.returncode == 0) == should_pass,
            wanted,
            f"not so: {claim} should {'pass' if should_pass else 'fail'} it; promtool said:"
            f"\n{indent(done.stdout + done.stderr)}",
        )


CRASH_RECORDS: Final = 2000


def collector(lab: Lab, terminal: str, journal: Path, port: int) -> Proc:
    proc = lab.start(terminal, JOURNAL, f"collector --path {journal} --port {{port}}", port=port)
    proc.wait_for(r"(?i)ready|listening on")
    return proc


def stored_ids(lab: Lab, journal: Path) -> list[str]:
    """Every record id in the journal, in order, as `zmq_journal.py read` reports them."""
    return [body["record_id"] for body in journal_bodies(lab, journal)]


def check_collector_crash(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 4, exercise 4: a writer whose records survive a SIGKILL of the collector."""
    journal = lab.alias("j.jsonl", "/tmp/j.jsonl")
    port = lab.ports(5590)
    first = collector(lab, "collector", journal, port)
    command = f"tcp://127.0.0.1:{port} --records {CRASH_RECORDS}"
    writing = lab.start("attempt", attempt, command)
    try:
        writing.wait_for(r"^written 500$|Error|error", timeout=30)
    except LabError:
        pass
    if not usage_ok(verdicts, writing, command) or not writing.running():
        verdicts.judge(False, "", f"it did not print `written 500`:\n{indent(writing.output())}")
        return
    first.send(signal.SIGKILL)
    first.wait()
    time.sleep(1.0)
    collector(lab, "collector (again)", journal, port)
    try:
        writing.wait(90)
    except LabError:
        pass
    printed = writing.output()
    summary = re.search(r"wrote (\d+) records; the writer re-sent (\d+)", printed)
    verdicts.judge(
        writing.popen.returncode == 0 and summary is not None and int(summary[1]) == CRASH_RECORDS,
        f"every write() returned across the crash: `wrote {CRASH_RECORDS} records`, exit 0",
        f"it should end with `wrote {CRASH_RECORDS} records; the writer re-sent R` and exit 0"
        f" (exit {writing.popen.returncode}):\n{indent(printed)}",
    )
    verdicts.judge(
        summary is not None and int(summary[2]) > 0,
        f"the writer re-sent {summary[2] if summary else '?'} records the dead collector had"
        " not acknowledged",
        "it should report the writer's re-sends (`journal.retries`), and after a crash there"
        f" are some:\n{indent(printed)}",
    )
    ids = stored_ids(lab, journal)
    wanted = {f"crash-{n}" for n in range(CRASH_RECORDS)}
    verdicts.judge(
        len(ids) == len(set(ids)) == CRASH_RECORDS and set(ids) == wanted,
        f"the journal holds each of the {CRASH_RECORDS} records once",
        f"the journal should hold crash-0 .. crash-{CRASH_RECORDS - 1} once each: it holds"
        f" {len(ids)} lines, {len(set(ids))} ids, {len(wanted - set(ids))} missing",
    )


EXERCISES: Final[dict[str, tuple[Callable[[Lab, Path, Verdicts], None], str, str]]] = {
    "slow": (
        check_slow,
        "week 4, exercise 1: a slow worker on the fake network, delayed or declared dead",
        "docs/solutions/week4/slow_link.py",
    ),
    "gate": (
        check_gate,
        "week 4, exercise 2: phase 1's benchmark gate as a program",
        "docs/solutions/week4/gate.py",
    ),
    "alert": (
        check_alert,
        "week 4, exercise 3: promtool tests that pin when two alerts fire",
        "docs/solutions/week4/worker_dead.test.yml",
    ),
    "collector-crash": (
        check_collector_crash,
        "week 4, exercise 4: journal writes that survive a SIGKILL of the collector",
        "docs/solutions/week4/crash_writer.py",
    ),
}
