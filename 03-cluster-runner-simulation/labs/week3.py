"""Week 3's experiments (the node agent and the schedules, as the page runs them) and checks.

    labs.py agent        keys, an agent, one command through the executor (CURVE)
    labs.py schedules    the three schedules over ZeroMQ and over SSH, and the journal
    labs.py check unknown-key|timeout-tree|credit ATTEMPT    the week-3 exercises

Keys and journals go to a private directory that the output shows as /tmp/...; the agent
listens on a free port, printed as 5580.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import psutil

from cluster_patterns.curve import fingerprint, load_public
from cluster_runner_simulation.agent_protocol import CREDIT_WINDOW_BYTES, OUTPUT_CHUNK_BYTES
from cluster_runner_simulation.labs.kit import JOURNAL, Lab, Proc, Verdicts, indent, journal_bodies
from cluster_runner_simulation.labs.kit import section, usage_ok

AGENT: Final = "03-cluster-runner-simulation/zmq_node_agent.py"
RUN_SCHEDULES: Final = "03-cluster-runner-simulation/run_schedules.py"
ONE_LINER: Final = (
    "import asyncio; from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor"
    " as X; e = X.from_keys_dir('n1', '127.0.0.1', {port}, '{keys}');"
    " print(asyncio.run(e.run('uname -s; echo hello from the agent')))"
)
SCHEDULES_TIMEOUT_S: Final = 180.0


def generate_keys(lab: Lab, terminal: str, name: str) -> tuple[Path, Proc]:
    """``keys generate`` into a private directory that the output shows as /tmp/NAME."""
    keys = lab.alias(name, f"/tmp/{name}")
    return keys, lab.run(terminal, AGENT, f"keys generate {keys}")


def serve(lab: Lab, terminal: str, keys: Path | None, node: str = "n1") -> tuple[Proc, int]:
    """An agent on a free port (shown as 5580), with CURVE keys or --insecure."""
    port = lab.ports(5580)
    security = f"--keys {keys}" if keys is not None else "--insecure"
    command = f"serve --node-id {node} --bind 127.0.0.1 --port {{port}} {security}"
    agent = lab.start(terminal, AGENT, command, port=port, shown_port=5580)
    agent.wait_for(r"ready on")
    return agent, port


def python_c(lab: Lab, terminal: str, code: str, **values: object) -> Proc:
    """``python -c CODE`` with ``{port}`` and ``{keys}`` filled in, printed with the defaults."""
    shown = code.format(**{name: lab_view(lab, value) for name, value in values.items()})
    real = code.format(**{name: str(value) for name, value in values.items()})
    proc = lab.spawn(terminal, [sys.executable, "-c", real], f'python -c "{shown}"')
    proc.wait()
    return proc


def lab_view(lab: Lab, value: object) -> str:
    """How a page shows ``value``: a free port as the default 5580, a private path as /tmp."""
    if isinstance(value, int):
        return "5580"
    return lab.aliases.get(str(value), str(value))


# --- experiments -------------------------------------------------------------------------------


def agent(lab: Lab) -> None:
    section("agent: keys, a CURVE agent, and one command through the executor")
    keys, made = generate_keys(lab, "Terminal 1", "agent-keys")
    daemon, port = serve(lab, "Terminal 1", keys)
    answer = python_c(lab, "Terminal 2", ONE_LINER, port=port, keys=keys)
    lab.show(made, daemon, answer)
    lab.look("one DEALER, one CURVE handshake, then the command: exit status, stdout, stderr")
    lab.look("come back as bytes, the way asyncssh returns them")
    lab.expect("hello from the agent" in answer.output(), "the command did not run")


def journal_records(lab: Lab, path: Path) -> set[tuple[str, tuple[str, ...], str]]:
    """(schedule, nodes, result line) of every record, read by zmq_journal.py itself."""
    return {
        (body["schedule"], tuple(sorted(body["nodes"])), body["result_line"])
        for body in journal_bodies(lab, path)
    }


def schedules(lab: Lab) -> None:
    section("schedules: cluster_runner's three schedules over ZeroMQ, then over SSH")
    journals = {
        name: lab.alias(f"week3-{name}.jsonl", f"/tmp/week3-{name}.jsonl")
        for name in ("zmq", "ssh")
    }
    runs = []
    for transport, journal in journals.items():
        run = lab.start(
            "Terminal 1", RUN_SCHEDULES, f"--local 4 --transport {transport} --journal {journal}"
        )
        run.wait(SCHEDULES_TIMEOUT_S)
        runs.append(run)
    table = lab.run("Terminal 1", JOURNAL, f"read {journals['zmq']} --format table")
    lab.show(*runs, table)
    same = journal_records(lab, journals["zmq"]) == journal_records(lab, journals["ssh"])
    lab.look("the busbw column is not a measurement: every node ran scheduling.py's simulated")
    lab.look("all_reduce_perf, which computes its line from the group's size")
    lab.look(
        "both journals hold the same (schedule, nodes, result line) records"
        if same
        else "the two journals differ"
    )
    lab.expect(all(run.popen.returncode == 0 for run in runs), "a schedule run failed")
    lab.expect(same, "the ZeroMQ and SSH journals hold different records")


EXPERIMENTS: Final[dict[str, tuple[Callable[[Lab], object], str]]] = {
    "agent": (agent, "week 3: keys, a CURVE agent, a command through the executor"),
    "schedules": (schedules, "week 3: the three schedules over ZeroMQ and SSH, the journal"),
}


# --- exercise checks ---------------------------------------------------------------------------


def check_unknown_key(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 3, exercise 1: a probe that tells an authorized key from a refused one."""
    keys, _ = generate_keys(lab, "keys", "agent-keys")
    other, _ = generate_keys(lab, "keys", "other-keys")
    # A client that knows the agent's public key but holds a key the agent never authorized:
    # the handshake reaches the ZAP handler, which refuses it and logs its fingerprint.
    shutil.copyfile(keys / "agent.key", other / "agent.key")
    daemon, port = serve(lab, "agent", keys)
    good = lab.run("attempt", attempt, f"127.0.0.1 {port} {keys}")
    if not usage_ok(verdicts, good, "127.0.0.1 PORT /tmp/agent-keys"):
        return
    verdicts.judge(
        good.popen.returncode == 0 and "authorized" in good.output(),
        "with the agent's own client key: `authorized ...`, exit 0",
        f"with the agent's own client key it should print `authorized ...` and exit 0 (it"
        f" exited {good.popen.returncode}):\n{indent(good.output())}",
    )
    started = time.monotonic()
    bad = lab.run("attempt", attempt, f"127.0.0.1 {port} {other}")
    took = time.monotonic() - started
    ours = fingerprint(load_public(other / "client.key"))
    denied = re.search(r"denied handshake #\d+ from \S+ key (SHA256:\w+)", daemon.output())
    verdicts.judge(
        bad.popen.returncode == 1 and "not authorized" in bad.output() and took < 15,
        f"with another client key: `not authorized ...`, exit 1, after {took:.1f} s",
        f"with another client key it should print `not authorized ...` and exit 1 within 15 s"
        f" (it exited {bad.popen.returncode} after {took:.1f} s):\n{indent(bad.output())}",
    )
    verdicts.judge(
        ours in bad.output() and denied is not None and denied.group(1) == ours,
        f"it named the refused key {ours}, the fingerprint in the agent's log",
        f"it should print the refused client key's fingerprint, {ours}; the agent logged"
        f" {denied.group(1) if denied else 'no denial'}:\n{indent(bad.output())}",
    )


SLEEP_MARKER_S: Final = "30.4817"  # a sleep no other program on the machine runs


def sleeping(seconds: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", seconds]:
            found.append(proc)
    return found


def check_timeout_tree(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 3, exercise 2: a timeout kills the command's whole process group."""
    keys, _ = generate_keys(lab, "keys", "agent-keys")
    _, port = serve(lab, "agent", keys)
    cases = ((False, 0), (True, 1))  # setsid: one sleep leaves the group and survives
    for escape, survivors in cases:
        flags = f"--seconds {SLEEP_MARKER_S}" + (" --escape" if escape else "")
        run = lab.run("attempt", attempt, f"127.0.0.1 {port} {keys} {flags}")
        if not escape and not usage_ok(verdicts, run, f"127.0.0.1 PORT KEYS {flags}"):
            return
        left = sleeping(SLEEP_MARKER_S)
        for proc in left:
            proc.kill()  # the check's own clean-up of what escaped
        timed = re.search(r"timed out after ([\d.]+) s", run.output())
        said = re.search(r"(\d+) of the sleep \S+ processes left", run.output())
        what = "with `setsid` before the first sleep" if escape else "as given"
        verdicts.judge(
            run.popen.returncode == 0 and timed is not None and 0.9 <= float(timed[1]) < 4,
            f"the command {what} timed out after {timed[1] if timed else '?'} s",
            f"the command {what} should end with `timed out after X s` (X about 1) and exit 0"
            f" (exit {run.popen.returncode}):\n{indent(run.output())}",
        )
        verdicts.judge(
            said is not None and int(said[1]) == len(left) == survivors,
            f"{len(left)} sleep left, and it said so",
            f"{len(left)} `sleep {SLEEP_MARKER_S}` process(es) were left ({survivors} expected),"
            f" and it said {said[1] if said else 'nothing'}:\n{indent(run.output())}",
        )


CREDIT_TOTAL_BYTES: Final = 20_000_000


def check_credit(lab: Lab, attempt: Path, verdicts: Verdicts) -> None:
    """Week 3, exercise 3: a client that withholds credit stalls its own command's output."""
    _, port = serve(lab, "agent", None)
    run = lab.start("attempt", attempt, f"127.0.0.1 {port} --bytes {CREDIT_TOTAL_BYTES}")
    try:
        run.wait(60)
    finally:
        output = run.output()
    if not usage_ok(verdicts, run, f"127.0.0.1 PORT --bytes {CREDIT_TOTAL_BYTES}"):
        return
    before = re.search(r"before credit: (\d+) bytes", output)
    after = re.search(r"after credit: (\d+) bytes, exit status (\d+)", output)
    low, high = CREDIT_WINDOW_BYTES - OUTPUT_CHUNK_BYTES, CREDIT_WINDOW_BYTES + OUTPUT_CHUNK_BYTES
    verdicts.judge(
        before is not None and low <= int(before[1]) <= high,
        f"without credit it received {before[1] if before else '?'} bytes: the 8 MiB window",
        f"without credit it should receive about the window, {CREDIT_WINDOW_BYTES} bytes"
        f" ({low}-{high}), and print `before credit: N bytes`:\n{indent(output)}",
    )
    verdicts.judge(
        after is not None and int(after[1]) == CREDIT_TOTAL_BYTES and after[2] == "0",
        f"with credit the rest flowed: all {CREDIT_TOTAL_BYTES} bytes, exit status 0",
        f"with credit it should get all {CREDIT_TOTAL_BYTES} bytes and print"
        f" `after credit: {CREDIT_TOTAL_BYTES} bytes, exit status 0`:\n{indent(output)}",
    )


EXERCISES: Final[dict[str, tuple[Callable[[Lab, Path, Verdicts], None], str, str]]] = {
    "unknown-key": (
        check_unknown_key,
        "week 3, exercise 1: a probe that names the key an agent refused",
        "docs/solutions/week3/probe.py",
    ),
    "timeout-tree": (
        check_timeout_tree,
        "week 3, exercise 2: a timeout kills the process group (and what escapes it)",
        "docs/solutions/week3/tree_timeout.py",
    ),
    "credit": (
        check_credit,
        "week 3, exercise 3: a client that withholds credit stalls its command's output",
        "docs/solutions/week3/stalled_client.py",
    ),
}
