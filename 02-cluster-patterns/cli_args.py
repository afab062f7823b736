"""Argument types shared by every command line of the cluster and the 03 tools.

argparse calls these with the raw text; an ``ArgumentTypeError`` becomes a one-line
usage error and exit code 2, so a typo never reaches the sockets as a traceback.
Used as ``parser.add_argument("--port", type=port_number)``.
"""

from __future__ import annotations

import argparse
import math


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
