"""One function per cluster command, written once against the Backend interface.

The fault verbs (fail, partition, ...) live in faults.py and `test` in scenario.py; this
module holds the rest: build, start, stop, status, scale, cleanup, logs, workload, demo,
compare, mpi.
Each returns the process's exit code or raises a SimError (see output.py).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster_patterns.protocol import TaskKind
from cluster_simulator.backend import Backend, CompareOptions
from cluster_simulator.config import DEFAULT_WORKERS, SimConfig
from cluster_simulator.lifecycle import Signals, Undo
from cluster_simulator.monitor_api import role_view
from cluster_simulator.mpi import MpiOptions
from cluster_simulator.output import ExitCode, UsageError, say, warn
from cluster_simulator.roles import Workload
from cluster_simulator.scenario import run_scenario

# The demo: a first workload a user can watch, then small batches until it is stopped.
DEMO_FIRST: Final = Workload(200, TaskKind.SLEEP, 20)
DEMO_BATCH: Final = Workload(50, TaskKind.CPU, 5)
DEMO_PAUSE_S: Final = 1.0
FLAG_POLL_S: Final = 0.05


@dataclass(frozen=True)
class Context:
    """What every command works with."""

    config: SimConfig
    backend: Backend
    signals: Signals
    undo: Undo


def build(ctx: Context) -> int:
    ctx.backend.build()
    return ExitCode.OK


def start(ctx: Context, workers: int) -> int:
    backend = ctx.backend
    say(f"starting cluster '{ctx.config.project}' ({backend.name} backend, {workers} workers)")
    backend.start(workers)
    ctx.undo.started()  # `start` leaves the cluster running, the demo stops it when it ends
    say(f"cluster ready: {workers} workers alive; dashboard {backend.api().url}/")
    return ExitCode.OK


def stop(ctx: Context) -> int:
    ctx.signals.shield()  # once begun, a stop runs to the end
    ctx.backend.stop()
    say(f"cluster '{ctx.config.project}' stopped ({ctx.backend.name} backend)")
    return ExitCode.OK


def status(ctx: Context) -> int:
    backend = ctx.backend
    backend.require_started()
    rows = backend.status_rows(backend.topology())
    api = backend.api()
    document = api.cluster()
    say(f"cluster '{ctx.config.project}' ({backend.summary()})")
    say(f"{'NODE':<13} {'RUNTIME':<22} {'DETAIL':<22} CLUSTER VIEW (monitor)")
    for row in rows:
        say(f"{row.node:<13} {row.runtime:<22} {row.detail:<22} {role_view(row.node, document)}")
    if document is None:
        say(f"monitor API {api.url}/api/cluster does not answer")
        return ExitCode.OK
    totals = document.get("totals", {})
    counts = ", ".join(f"{key} {totals.get(key, 0)}" for key in ("submitted", "done", "failed"))
    say(f"tasks: {counts}; dashboard {api.url}/")
    return ExitCode.OK


def scale(ctx: Context, workers: int) -> int:
    ctx.backend.scale(workers)
    return ExitCode.OK


def cleanup(ctx: Context) -> int:
    ctx.signals.shield()
    ctx.backend.cleanup()
    try:
        ctx.config.state_root.rmdir()  # only if no other project has state there
    except OSError:
        pass
    say(f"cluster '{ctx.config.project}' cleaned up ({ctx.backend.name} backend)")
    return ExitCode.OK


def logs(ctx: Context, node: str | None, follow: bool) -> int:
    ctx.backend.require_started()
    if node is not None:
        ctx.backend.topology().check("logs", node)
    return ctx.backend.show_logs(node, follow)


def workload(ctx: Context, work: Workload, json_path: Path | None) -> int:
    ctx.backend.require_started()
    return ctx.backend.start_client(work, json_path).finish()


def test(ctx: Context, tasks: int, json_path: Path | None) -> int:
    backend = ctx.backend
    backend.require_started()
    if backend.worker_count() < 2:
        raise UsageError(f"test needs at least 2 workers: start --workers {DEFAULT_WORKERS}")
    say(f"test: {tasks} tasks per step on cluster '{ctx.config.project}' ({backend.name} backend)")
    return run_scenario(backend, tasks, json_path)


def compare(ctx: Context, options: CompareOptions) -> int:
    return ctx.backend.compare(options)


def mpi(ctx: Context, options: MpiOptions) -> int:
    ctx.backend.require_started()
    return ctx.backend.mpi(options)


def demo(ctx: Context) -> int:
    """Start (unless a cluster runs), submit work, show the dashboard; Ctrl-C or DEMO_SECONDS
    stops what it started, and that is a normal end (exit 0)."""
    backend, config = ctx.backend, ctx.config
    if backend.is_started():
        running = f"cluster '{config.project}' ({backend.name} backend) is already running"
        say(f"demo: {running}; using it as it is")
    else:
        say(f"demo: starting cluster '{config.project}' on the {backend.name} backend")
        stopping = f"stopping what this run started (cluster '{config.project}')"
        ctx.undo.after_start = (backend.stop, stopping)
        start(ctx, DEFAULT_WORKERS)
    # From here on Ctrl-C, SIGTERM or a hang-up only raise a flag, which the loop notices.
    ctx.signals.flag_only = True
    api = backend.api()
    say(f"submitting {DEMO_FIRST.count} tasks with client.py")
    if backend.start_client(DEMO_FIRST, None).finish() != 0 and not ctx.signals.interrupted:
        warn("the first workload reported failures")
    say()
    say(f"dashboard: http://localhost:{api.port}/   (API: {api.url}/api/cluster)")
    if config.demo_seconds:
        say(f"demo runs for {config.demo_seconds} s (DEMO_SECONDS), submitting more work meanwhile")
    else:
        say(f"press Ctrl-C to stop; in another terminal try: {config.prog} fail worker1")
    _demo_loop(ctx)
    if ctx.undo.armed:
        say("stopping the demo cluster")
        ctx.undo.run()
    return ExitCode.OK


def _demo_loop(ctx: Context) -> None:
    deadline = time.monotonic() + ctx.config.demo_seconds
    forever = ctx.config.demo_seconds == 0
    while not ctx.signals.interrupted and (forever or time.monotonic() < deadline):
        quiet = subprocess.DEVNULL
        ctx.backend.start_client(DEMO_BATCH, None, quiet, quiet).finish()
        pause_until = time.monotonic() + DEMO_PAUSE_S
        while not ctx.signals.interrupted and time.monotonic() < pause_until:
            time.sleep(FLAG_POLL_S)
