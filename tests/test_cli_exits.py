"""``run_interruptible``: expected errors become one line and their exit code, Ctrl-C and
SIGTERM become 130 after the command's own cleanup, and anything else stays a traceback.

The commands that use it (run_mpi, run_schedules, env_parity, campaign, benchmark,
scale-bench, zmq_journal.py and the journal bench, the fan-out and copy benchmarks,
latency_breakdown) are run for real by their own tests; these pin the helper's rules
in-process.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from cluster_patterns.cli_args import ErrorExit, error_text, run_interruptible


class Journal(Exception):
    pass


class JournalFile(Journal):
    pass


EXITS = (
    ErrorExit(JournalFile, 2, "journal: "),
    ErrorExit((Journal, ExceptionGroup), 4, "journal: "),
    ErrorExit(OSError, 5),
)


def fails_with(exc: BaseException) -> int:
    raise exc


def test_the_first_matching_exit_wins(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_interruptible("tool", lambda: fails_with(JournalFile("disk full")), EXITS) == 2
    assert run_interruptible("tool", lambda: fails_with(Journal("gone")), EXITS) == 4
    assert capsys.readouterr().err.splitlines() == [
        "tool: error: journal: disk full",
        "tool: error: journal: gone",
    ]


def test_an_os_error_names_its_file(capsys: pytest.CaptureFixture[str]) -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/nowhere/x.json")
    assert run_interruptible("tool", lambda: fails_with(missing), EXITS) == 5
    assert capsys.readouterr().err == "tool: error: /nowhere/x.json: No such file or directory\n"
    assert error_text(OSError("no file named")) == "no file named"
    assert error_text(TimeoutError()) == "TimeoutError"


def test_an_unexpected_error_is_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError):
        run_interruptible("tool", lambda: 1 // 0, EXITS)


def test_the_body_status_passes_through() -> None:
    assert run_interruptible("tool", lambda: 7, EXITS) == 7


def test_sigterm_runs_the_cleanup_then_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    cleaned: list[str] = []
    previous = signal.getsignal(signal.SIGTERM)

    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler's KeyboardInterrupt ends this at once
            return 0
        finally:
            cleaned.append("cleanup")

    try:
        status = run_interruptible("tool", body, EXITS, note="; run it again to resume")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 130 and cleaned == ["cleanup"]
    assert capsys.readouterr().err == "tool: interrupted; run it again to resume\n"
