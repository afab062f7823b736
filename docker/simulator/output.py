"""Messages, errors and exit codes, and output that survives a closed stdout.

A user who pipes the simulator into `tee` and presses Ctrl-C kills `tee` too: from then on
every write to stdout fails with EPIPE. That must not stop a run that is still stopping the
cluster it started, so ``say`` and ``warn`` point a dead stream at /dev/null and carry on
(Python ignores SIGPIPE, so a write only fails; it never kills the process).
"""

from __future__ import annotations

import enum
import os
import sys
from typing import TextIO

PREFIX = "simulate-cluster: "


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # the operation failed, or `test` found a violation
    USAGE = 2  # bad input: command, option, node, no engine, never started
    PORT_TAKEN = 3  # a port the cluster would bind is taken (nothing was started)


class SimError(Exception):
    """An operation failed; the message is shown as it is, one line per problem."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(SimError):
    exit_code = ExitCode.USAGE


class PortTaken(SimError):
    exit_code = ExitCode.PORT_TAKEN


def say(text: str = "") -> None:
    """One line on stdout, flushed at once (so nothing is left to fail at exit)."""
    _write(sys.stdout, text)


def warn(text: str) -> None:
    """One line on stderr, prefixed with the program's name."""
    _write(sys.stderr, PREFIX + text)


def say_err(text: str) -> None:
    """Lines on stderr as they are (a report's failure section)."""
    _write(sys.stderr, text)


def _write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text + "\n")
        stream.flush()
    except (BrokenPipeError, ConnectionResetError):
        silence(stream)


def silence(stream: TextIO) -> None:
    """From now on, writes to ``stream`` (and to its file descriptor) go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def flush_all() -> None:
    """Flush stdout and stderr before exit; a dead one is silenced instead of complaining."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ConnectionResetError):
            silence(stream)
