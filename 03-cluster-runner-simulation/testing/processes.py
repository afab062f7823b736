"""Pieces every loopback harness here shares: free ports, stopping a process group, contexts.

Test and benchmark code only: production modules never import ``cluster_runner_simulation.testing``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
from types import TracebackType
from typing import Final, TypeVar

import psutil

from cluster_patterns.defaults import LOOPBACK

STOP_TIMEOUT_S: Final = 5.0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a process started in its own session, then kill its group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


def unique_sleep() -> str:
    """A sleep duration nobody else uses, so ``processes_with`` finds exactly one test's."""
    return f"{random.randint(1000, 9999)}.{random.randint(100, 999)}"


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes (not zombies) with ``marker`` in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in cmdline):
            found.append(proc)
    return found


Self = TypeVar("Self", bound="Started")


class Started:
    """Something with ``start()`` and ``stop()``, usable as a sync or an async context manager."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: Self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self: Self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
