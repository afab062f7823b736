"""Argument types shared by every command line of the cluster and the 03 tools.

argparse calls these with the raw text; an ``ArgumentTypeError`` becomes a one-line
usage error and exit code 2, so a typo never reaches the sockets as a traceback.
Used as ``parser.add_argument("--port", type=port_number)``; ``make_parser`` builds a
parser whose ``--help`` shows every default (``ArgumentDefaultsHelpFormatter``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


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


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse type for a number in [low, high] (the protocol's own bounds, say)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for an integer in [low, high]."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    return parse


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
