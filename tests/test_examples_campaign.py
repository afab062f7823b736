"""examples/cluster-coordinator: the campaign runs, survives a SIGKILL and resumes without repeats.

Real ZeroMQ agents (zmq_node_agent.py with CURVE keys, started by LocalAgents) on loopback, the
real campaign script as a subprocess, and the real journal file checked with the reader API.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.journal_format import scan_journal
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.scheduling import SCHEDULE_NAMES, build_schedule

CAMPAIGN = "examples/cluster-coordinator/campaign.py"
CONFIG = "examples/cluster-coordinator/campaign.toml"
LEAVES = ("leaf-a", "leaf-b")


def write_descriptor(agents: LocalAgents, path: Path) -> dict[str, str]:
    lines = ['[cluster]\nname = "test"\n']
    leaf_of = {}
    for index, agent in enumerate(agents.agents):
        leaf_of[agent.node_id] = LEAVES[index % 2]
        lines.append(
            f'[[nodes]]\nid = "{agent.node_id}"\nhost = "{agent.host}"\nzmq_port = {agent.port}\n'
            f'curve_keys_dir = "{agents.keys_dir}"\nleaf = "{leaf_of[agent.node_id]}"\n'
        )
    path.write_text("\n".join(lines))
    return leaf_of


def expected_ids(run_id: str, leaf_of: dict[str, str]) -> set[str]:
    return {
        f"{run_id}/{schedule}/all_reduce_perf/{'+'.join(group)}"
        for schedule in SCHEDULE_NAMES
        for group in build_schedule(schedule, leaf_of)
    }


def test_campaign_with_local_agents_prints_the_report(run: Any, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    result = run(CAMPAIGN, "--config", CONFIG, "--local", "3", "--journal", str(journal))
    assert result.returncode == 0, result.stdout + result.stderr
    for schedule in SCHEDULE_NAMES:
        assert re.search(rf"^\| {schedule} \| \d+ \| 0 \| \d+ \| 0 \|", result.stdout, re.M)
    assert len(scan_journal(journal).entries) > 0


def test_campaign_resumes_after_sigkill_without_repeats(
    spawn: Any, run: Any, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    descriptor = tmp_path / "cluster.toml"
    with LocalAgents(8) as agents:
        leaf_of = write_descriptor(agents, descriptor)
        wanted = expected_ids("resume-test", leaf_of)
        args = ["--config", CONFIG, "--descriptor", str(descriptor), "--journal", str(journal)]
        args += ["--run-id", "resume-test"]
        first = spawn(CAMPAIGN, *args)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.popen.poll() is None:
            if journal.exists() and journal.stat().st_size > 0:
                break
            time.sleep(0.01)
        first.signal(signal.SIGKILL)
        first.wait()
        before = set(scan_journal(journal).record_ids)
        assert before, "the first run journaled nothing before it was killed"
        assert before <= wanted
        print(f"killed after {len(before)} of {len(wanted)} records")

        second = run(CAMPAIGN, *args, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        skipped = sum(
            int(n) for n in re.findall(r"groups, (\d+) already in the journal", second.stdout)
        )
        assert skipped == len(before), second.stdout
        ids = scan_journal(journal).record_ids
        assert len(ids) == len(set(ids)), "a record was journaled twice"
        assert set(ids) == wanted


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "/nonexistent/campaign.toml"], "cannot read"),
        (["--config", CONFIG, "--local", "0"], "--local"),
    ],
)
def test_campaign_bad_input_is_one_clear_line(run: Any, args: list[str], message: str) -> None:
    result = run(CAMPAIGN, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
