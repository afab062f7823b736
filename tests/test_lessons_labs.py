"""01-zmq-basics/labs.py: its command line, and the exercise checks it offers learners.

Every exercise's check must pass on its reference solution and fail on the unchanged lesson
(or a near miss), saying why in words. The experiments themselves run in
tests/test_docs_outputs.py, because the pages quote their output; a test here makes sure
that every experiment is quoted somewhere, so that none goes untested.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LABS = "01-zmq-basics/labs.py"
REPO = Path(__file__).resolve().parent.parent


def listed(run) -> tuple[list[str], dict[str, str]]:
    result = run(LABS, "list", timeout=30)
    assert result.returncode == 0, result.stderr
    experiments = re.findall(r"^([a-z][\w-]*) ", result.stdout, re.M)
    exercises = dict(re.findall(r"^check ([\w-]+)\s+(.*)$", result.stdout, re.M))
    return [e for e in experiments if e != "check"], exercises


# Where the lab runner's exercises are declared: week 1 in labs.py, weeks 2-4 beside it.
EXERCISE_SOURCES = [LABS] + [f"03-cluster-runner-simulation/labs/week{n}.py" for n in (2, 3, 4)]


def solutions() -> dict[str, str]:
    """Exercise name -> its reference solution, as the lab runner names them."""
    source = "\n".join((REPO / path).read_text() for path in EXERCISE_SOURCES)
    return dict(re.findall(r'"([\w-]+)": \(\s*check_\w+,\s*"[^"]*",\s*"([^"]+)",', source))


def test_list_names_every_experiment_and_exercise(run):
    experiments, exercises = listed(run)
    assert {"basics", "slow-joiner", "hwm", "retry", "broker", "throughput"} <= set(experiments)
    assert {"simple-pirate", "paranoid-pirate", "majordomo", "binary-star"} <= set(experiments)
    assert {"cluster", "watch"} <= set(experiments)
    assert {"handshake", "lost-worker", "idempotent", "mmi"} <= set(exercises)
    assert {"freeze", "detection", "restart"} <= set(exercises)
    assert set(solutions()) == set(exercises)


def test_every_experiment_is_quoted_on_a_page(run):
    """test_docs_outputs.py runs each `output-of: ... labs.py NAME` command."""
    experiments, _ = listed(run)
    found = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "examples").glob("*/*.md")]
    pages = "\n".join(p.read_text() for p in found)
    quoted = set(re.findall(r"<!-- output-of: python 01-zmq-basics/labs\.py ([\w-]+)", pages))
    assert set(experiments) - {"throughput"} <= quoted, sorted(set(experiments) - quoted)
    results = (REPO / "docs" / "results" / "week1-labs.md").read_text()
    assert "labs.py throughput" in results  # throughput is quoted through its results file


@pytest.mark.parametrize("exercise", sorted(solutions()))
def test_reference_solution_passes_its_check(run, exercise):
    solution = solutions()[exercise]
    assert (REPO / solution).is_file(), solution
    result = run(LABS, "check", exercise, solution, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) of (\d+) checks passed", result.stdout)
    assert passed and passed[1] == passed[2], result.stdout
    assert "FAIL" not in result.stdout


@pytest.mark.parametrize(
    "exercise, lesson, reason",
    [
        ("idempotent", "01-zmq-basics/req_rep.py", "never catches up"),
        ("lost-worker", "01-zmq-basics/router_dealer.py", "never answered"),
        ("slow", "02-cluster-patterns/task_life.py", "does not accept `--delay-ms 300`"),
    ],
)
def test_the_unchanged_lesson_fails_its_check_in_plain_words(run, exercise, lesson, reason):
    result = run(LABS, "check", exercise, lesson, timeout=240)
    assert result.returncode == 1, result.stdout
    assert "FAIL" in result.stdout and reason in result.stdout
    assert "the reference solution: docs/solutions/" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# Near misses: an attempt one edit away from right, which its exercise's check must fail with
# the lines given (PASS for what the edit kept right, FAIL for what it broke).
NEAR_MISSES = {
    # --workers accepted, but the lesson's 500 ms sleep kept.
    "handshake": (
        "01-zmq-basics/push_pull.py",
        'vent.add_argument("tasks", type=int, help="how many tasks, at least 1")',
        'vent.add_argument("tasks", type=int, help="how many tasks, at least 1")\n'
        '    vent.add_argument("--workers", type=int, default=1, help="ignored")',
        240,
        [
            "PASS  it accepts `ventilator 30 --workers 3 --max-work-ms 5`",
            "FAIL  it did not wait for the third worker",
        ],
    ),
    # An "at most" gate that always passes, right for the committed run.
    "gate": (
        "docs/solutions/week4/gate.py",
        "ok = value <= limit if",
        "ok = True or value <= limit if",
        120,
        [
            "PASS  the committed full run: every line right, exit 0",
            "FAIL  a run failing floor: want exit 1",
        ],
    ),
    # It prints the line of a healthy log without reading twice-recorded ones.
    "restart": (
        "docs/solutions/week2/outcomes.py",
        "outcomes[task_id] += 1",
        "outcomes[task_id] = 1",
        240,
        ["FAIL  on a log with one outcome twice"],
    ),
}


@pytest.mark.parametrize("exercise", sorted(NEAR_MISSES))
def test_a_near_miss_fails_its_check(run, tmp_path, exercise):
    source, old, new, timeout, expected = NEAR_MISSES[exercise]
    original = (REPO / source).read_text()
    near_miss = original.replace(old, new)
    assert near_miss != original
    attempt = tmp_path / f"my_{Path(source).name}"
    attempt.write_text(near_miss)
    result = run(LABS, "check", exercise, str(attempt), timeout=timeout)
    assert result.returncode == 1, result.stdout
    for line in expected:
        assert line in result.stdout


def test_a_broken_attempt_gets_reasons_not_a_traceback(run, tmp_path):
    attempt = tmp_path / "attempt.py"
    attempt.write_text("raise SystemExit('I am not finished yet')\n")
    result = run(LABS, "check", "idempotent", str(attempt), timeout=120)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "I am not finished yet" in result.stdout
    assert "Traceback" not in result.stderr
