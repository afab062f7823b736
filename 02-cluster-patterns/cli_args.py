"""Argument types shared by every command line of the cluster and the 03 tools.

argparse calls these with the raw text; an ``ArgumentTypeError`` becomes a one-line
usage error and exit code 2, so a typo never reaches the sockets as a traceback.
Used as ``parser.add_argument("--port", type=port_number)``; ``make_parser`` builds a
parser whose ``--help`` shows every default (``ArgumentDefaultsHelpFormatter``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from cluster_patterns import defaults
from cluster_patterns.defaults import MAX_INTERVAL_S, MAX_LIVENESS, MIN_INTERVAL_S

N = TypeVar("N", int, float)
C = TypeVar("C")


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def port_number(text: str) -> int:
    """A TCP port a peer can connect to: 1-65535."""
    value = int(_number(text, int))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text}")
    return value


def bind_port(text: str) -> int:
    """A port to bind: 1-65535, or 0 to let the kernel pick a free one."""
    if text.strip() == "0":
        return 0
    return port_number(text)


def bounded(low: N, high: N) -> Callable[[str], N]:
    """An argparse type for a value in [low, high], an integer when the bounds are integers
    (the protocol's own limits, say: ``bounded(1, MAX_CAPACITY)``)."""
    kind = type(low)

    def parse(text: str) -> N:
        value = kind(_number(text, kind))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def add_heartbeat_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    interval_help: str,
    liveness_help: str,
) -> None:
    """--heartbeat-interval and --liveness, with the cluster's defaults and the wire's bounds."""
    parser.add_argument(
        "--heartbeat-interval",
        dest="heartbeat_interval_s",
        metavar="S",
        type=bounded(MIN_INTERVAL_S, MAX_INTERVAL_S),
        default=defaults.HEARTBEAT_INTERVAL_S,
        help=interval_help,
    )
    parser.add_argument(
        "--liveness",
        metavar="N",
        type=bounded(1, MAX_LIVENESS),
        default=defaults.LIVENESS,
        help=liveness_help,
    )


def output_file(text: str) -> Path:
    """An argparse type for a file a command writes when it is done (--json, --plot), checked
    while parsing so that a typo costs a usage line, not the run: the path is not a directory,
    and its directory exists and may be written in. A write that fails anyway (a full disk)
    is the command's to report."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    directory = path.parent
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"{directory} does not exist (or is not a directory)")
    return _writable_in(directory, path)


def output_directory(text: str) -> Path:
    """An argparse type for a directory a command writes into, created if missing (--out):
    not a file, and the nearest part of it that exists is a directory that may be written in."""
    path = Path(text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a directory")
    return _writable_in(existing, path)


def _writable_in(directory: Path, path: Path) -> Path:
    """``path``, if this process may create files in ``directory``."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {directory}")
    return path


def identifier(max_chars: int) -> Callable[[str], str]:
    """An argparse type for a name others see in logs: 1..max_chars code points (the wire's
    rule), printable, without whitespace (so that a log line cannot be forged or misread)."""

    def parse(text: str) -> str:
        if not 0 < len(text) <= max_chars:
            raise argparse.ArgumentTypeError(f"must be 1 to {max_chars} characters: {text!r}")
        if not text.isprintable() or any(char.isspace() for char in text):
            raise argparse.ArgumentTypeError(f"no spaces or control characters: {text!r}")
        return text

    return parse


def make_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows every flag's default next to its help text."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def config_from(config_class: Callable[..., C], args: argparse.Namespace) -> C:
    """A role's frozen config from parsed arguments: each field from the argument of the same
    name (so a parser names its ``dest``s after the fields), the class default otherwise."""
    values: dict[str, Any] = vars(args)
    names = [field.name for field in dataclasses.fields(config_class)]  # type: ignore[arg-type]
    return config_class(**{name: values[name] for name in names if name in values})


class ErrorExit(NamedTuple):
    """An expected failure of a command: its exception types, its exit code, and a prefix
    for the message (``journal: ``, say)."""

    kinds: type[BaseException] | tuple[type[BaseException], ...]
    code: int
    prefix: str = ""


def error_text(exc: BaseException) -> str:
    """One line for an error; an OSError names its file, as ``cp`` would, and an error
    without a message is named by its type (``TimeoutError``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def run_interruptible(
    prog: str, body: Callable[[], int], exits: Sequence[ErrorExit] = (), note: str = ""
) -> int:
    """``body()``'s exit status, with SIGTERM stopping it like Ctrl-C: its cleanup runs,
    then ``PROG: interrupted`` (and ``note``) on stderr and 130, as a shell reports a
    SIGINT. An exception of one of ``exits`` (the first that matches) becomes
    ``PROG: error: MESSAGE`` and that exit's code. No traceback for either."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{note}", file=sys.stderr)
        return 130
    except BaseException as exc:
        for expected in exits:
            if isinstance(exc, expected.kinds):
                print(f"{prog}: error: {expected.prefix}{error_text(exc)}", file=sys.stderr)
                return expected.code
        raise
