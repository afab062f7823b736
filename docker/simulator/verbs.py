"""The table of verbs: every command's name, help line, arguments and what it runs.

cli.py turns this table into the argparse parser and the help text, so adding a command is
one row here (and its function in commands.py or faults.py). Argument types raise messages
that start with the flag's name, as the errors quote them ("--workers needs a number ...").
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cluster_patterns.cli_args import output_file
from cluster_patterns.protocol import TaskKind
from cluster_simulator import commands
from cluster_simulator.backend import CompareOptions
from cluster_simulator.commands import Context
from cluster_simulator.config import DEFAULT_WORKERS, MAX_WORKERS
from cluster_simulator.faults import Faults
from cluster_simulator.mpi import MpiOptions
from cluster_simulator.output import ExitCode
from cluster_simulator.roles import Workload
from cluster_simulator.swarm_backend import MAX_SWARM_WORKERS

Run = Callable[[Context, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that takes no arguments of its own."""


@dataclass(frozen=True)
class Command:
    name: str
    signature: str  # as the help lists it: "start [--workers N]"
    summary: str  # lines of the help text
    section: str
    run: Run
    add_arguments: AddArguments = field(default=no_arguments)


# --- argument types: each message names its flag, as the errors quote them ------------------


def _whole(text: str, low: int, high: int | None, message: str) -> int:
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        raise argparse.ArgumentTypeError(message.format(text=text))
    return int(text)


def workers_count(text: str) -> int:
    message = f"--workers needs a number from 1 to {MAX_WORKERS}, not '{{text}}'"
    return _whole(text, 1, MAX_WORKERS, message)


def replicas(text: str) -> int:
    message = f"N needs a number from 1 to {MAX_SWARM_WORKERS}, not '{{text}}'"
    return _whole(text, 1, MAX_SWARM_WORKERS, message)


def positive(flag: str) -> Callable[[str], int]:
    return lambda text: _whole(text, 1, None, f"{flag} needs a positive number, not '{{text}}'")


def milliseconds(flag: str) -> Callable[[str], int]:
    return lambda text: _whole(
        text, 0, None, f"{flag} needs a number of milliseconds, not '{{text}}'"
    )


def percent(text: str) -> int:
    return _whole(text, 0, 100, "PERCENT must be a whole number from 0 to 100, not '{text}'")


def delay_ms(text: str) -> int:
    return _whole(text, 0, None, "MS must be a whole number of milliseconds, not '{text}'")


def task_kind(text: str) -> TaskKind:
    try:
        return TaskKind(text)
    except ValueError:
        kinds = "|".join(kind.value for kind in TaskKind)
        raise argparse.ArgumentTypeError(f"--kind is {kinds}, not '{text}'") from None


def executor_list(text: str) -> str:
    if not re.fullmatch(r"[a-z_]+(,[a-z_]+)*", text):
        raise argparse.ArgumentTypeError("--executors takes a comma list such as zmq,asyncssh")
    return text


# --- the commands' arguments and runners ---------------------------------------------------


def _node(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", metavar="NODE", help="coordinator, workerN or monitor")


def _start_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=workers_count,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"how many workers (1-{MAX_WORKERS})",
    )


def _scale_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workers", type=replicas, metavar="N", help="how many worker replicas")


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="one node (default: all)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def _json_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=output_file, metavar="PATH", help=f"also write {what} here")


def _test_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks", type=positive("--tasks"), default=200, metavar="N", help="tasks per step"
    )
    _json_arg(parser, "the figures as JSON")


def _workload_args(parser: argparse.ArgumentParser) -> None:
    work = Workload()
    parser.add_argument(
        "--count", type=positive("--count"), default=work.count, metavar="N", help="how many tasks"
    )
    kinds = "|".join(kind.value for kind in TaskKind)
    parser.add_argument(
        "--kind", type=task_kind, default=work.kind.value, metavar=kinds, help="the tasks' kind"
    )
    parser.add_argument(
        "--ms",
        type=milliseconds("--ms"),
        default=work.ms,
        metavar="MS",
        help="how long a sleep or cpu task takes",
    )
    _json_arg(parser, "client.py's summary as JSON")


def _compare_args(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_mutually_exclusive_group()
    for mode, what in (
        ("smoke", "only prove it works"),
        ("quick", "about 15 s"),
        ("full", "about 40 s"),
    ):
        modes.add_argument(
            f"--{mode}",
            dest="mode",
            action="store_const",
            const=f"--{mode}",
            help=f"performance_comparison.py --{mode} ({what})",
        )
    parser.set_defaults(mode="--quick")
    parser.add_argument(
        "--executors",
        type=executor_list,
        metavar="LIST",
        help="some of zmq,asyncssh,ssh_mux,ssh_fresh,local (default: all)",
    )
    _json_arg(parser, "the figures as JSON")


def _mpi_args(parser: argparse.ArgumentParser) -> None:
    options = MpiOptions()
    parser.add_argument(
        "--nodes",
        type=positive("--nodes"),
        default=None,
        metavar="N",
        help="workers in the job, from worker1 (at least 2); None: every worker",
    )
    parser.add_argument(
        "--ranks-per-node",
        type=positive("--ranks-per-node"),
        default=options.ranks_per_node,
        metavar="R",
        help="MPI ranks on each worker",
    )
    parser.add_argument(
        "--max-bytes",
        default=options.max_bytes,
        metavar="SIZE",
        help="largest all-reduce message (K, M or G), from 1K in steps of 4",
    )
    _json_arg(parser, "the journal records of the result lines")


def _shape_args(
    value: str, kind: Callable[[str], int], what: str
) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        _node(parser)
        parser.add_argument(value.lower(), metavar=value, type=kind, help=what)

    return add


FAULT_ACTIONS: Final[dict[str, Callable[[Faults, argparse.Namespace], None]]] = {
    "fail": lambda faults, args: faults.fail(args.node),
    "recover": lambda faults, args: faults.recover(args.node),
    "partition": lambda faults, args: faults.partition(args.node),
    "heal": lambda faults, args: faults.heal(args.node),
    "pause": lambda faults, args: faults.pause(args.node),
    "resume": lambda faults, args: faults.resume(args.node),
    "slow": lambda faults, args: faults.slow(args.node, int(args.ms)),
    "flaky": lambda faults, args: faults.flaky(args.node, int(args.percent)),
    "fast": lambda faults, args: faults.fast(args.node),
}


def _fault(verb: str) -> Run:
    def run(ctx: Context, args: argparse.Namespace) -> int:
        FAULT_ACTIONS[verb](Faults(ctx.backend, verb, ctx.config.wait_for_verdict), args)
        return ExitCode.OK

    return run


def run_workload(ctx: Context, args: argparse.Namespace) -> int:
    work = Workload(int(args.count), TaskKind(args.kind), int(args.ms))
    return commands.workload(ctx, work, args.json)


def run_mpi(ctx: Context, args: argparse.Namespace) -> int:
    options = MpiOptions(args.nodes, int(args.ranks_per_node), str(args.max_bytes), args.json)
    return commands.mpi(ctx, options)


MANAGE: Final = "Cluster management"
TESTING: Final = "Testing"
FAULTS: Final = (
    "Failure simulation (fail/recover/partition/heal wait for the monitor's verdict; "
    "--no-wait skips)"
)
COMMANDS: Final = [
    Command(
        "build",
        "build",
        "build the node image (docker); check the Python setup (local)",
        MANAGE,
        lambda ctx, args: commands.build(ctx),
    ),
    Command(
        "start",
        "start [--workers N]",
        f"start coordinator, N workers (default {DEFAULT_WORKERS}, max {MAX_WORKERS}) and monitor",
        MANAGE,
        lambda ctx, args: commands.start(ctx, int(args.workers)),
        _start_args,
    ),
    Command(
        "stop",
        "stop",
        "stop every node (the image stays, so start is quick)",
        MANAGE,
        lambda ctx, args: commands.stop(ctx),
    ),
    Command(
        "status",
        "status",
        "each node's container/process state next to the monitor's view",
        MANAGE,
        lambda ctx, args: commands.status(ctx),
    ),
    Command(
        "scale",
        "scale N",
        f"swarm: change the worker replicas to N (1-{MAX_SWARM_WORKERS}); prints each worker\n"
        "as the monitor sees it join or leave",
        MANAGE,
        lambda ctx, args: commands.scale(ctx, int(args.workers)),
        _scale_args,
    ),
    Command(
        "cleanup",
        "cleanup",
        "stop, then remove containers, networks, volumes, project images,\n"
        "namespaces and state files (the python:3.11-slim base image stays)",
        MANAGE,
        lambda ctx, args: commands.cleanup(ctx),
    ),
    Command(
        "logs",
        "logs [SERVICE] [-f]",
        "show logs of every node or of one (coordinator, workerN, monitor)",
        MANAGE,
        lambda ctx, args: commands.logs(ctx, args.service, bool(args.follow)),
        _logs_args,
    ),
    Command(
        "test",
        "test [--tasks N] [--json PATH]",
        ">= 200 tasks during baseline, fail worker1, recover worker1,\n"
        "partition worker2 and heal worker2; checks invariants after each\n"
        "step and prints the figures table; exits 1 on any violation",
        TESTING,
        lambda ctx, args: commands.test(ctx, int(args.tasks), args.json),
        _test_args,
    ),
    Command(
        "workload",
        "workload [--count N] [--kind echo|sleep|cpu|fail] [--ms MS] [--json PATH]",
        "submit tasks with client.py from inside the cluster",
        TESTING,
        run_workload,
        _workload_args,
    ),
    Command(
        "demo",
        "demo",
        "start, submit work, print the dashboard URL, stop on Ctrl-C\n"
        "(DEMO_SECONDS=N stops after N seconds)",
        TESTING,
        lambda ctx, args: commands.demo(ctx),
    ),
    Command(
        "compare",
        "compare [--smoke|--quick|--full] [--executors LIST] [--json PATH]",
        "docker: run 03 performance_comparison.py --descriptor from the\n"
        "coordinator container against every worker's ZeroMQ node agent\n"
        "and sshd (default --quick); prints its markdown table",
        TESTING,
        lambda ctx, args: commands.compare(
            ctx, CompareOptions(str(args.mode), args.executors, args.json)
        ),
        _compare_args,
    ),
    Command(
        "mpi",
        "mpi [--nodes N] [--ranks-per-node R] [--max-bytes SIZE] [--json PATH]",
        "an MPI all-reduce across the workers with no sshd running: mpirun\n"
        "through worker1's node agent, its daemons through zrsh and the\n"
        "other agents; prints the busbw table (docker: sshd stopped for it)",
        TESTING,
        run_mpi,
        _mpi_args,
    ),
    Command("fail", "fail NODE", "kill the node with SIGKILL", FAULTS, _fault("fail"), _node),
    Command(
        "recover", "recover NODE", "start a failed node again", FAULTS, _fault("recover"), _node
    ),
    Command(
        "partition",
        "partition NODE",
        "cut the node off the cluster network",
        FAULTS,
        _fault("partition"),
        _node,
    ),
    Command("heal", "heal NODE", "reconnect a partitioned node", FAULTS, _fault("heal"), _node),
    Command(
        "pause",
        "pause NODE",
        "freeze the node (SIGSTOP / docker pause)",
        FAULTS,
        _fault("pause"),
        _node,
    ),
    Command("resume", "resume NODE", "thaw a paused node", FAULTS, _fault("resume"), _node),
    Command(
        "slow",
        "slow NODE MS",
        "add MS milliseconds of delay to the node's traffic (tc netem)",
        FAULTS,
        _fault("slow"),
        _shape_args("MS", delay_ms, "milliseconds of delay per packet"),
    ),
    Command(
        "flaky",
        "flaky NODE PERCENT",
        "drop PERCENT % of the node's packets (tc netem)",
        FAULTS,
        _fault("flaky"),
        _shape_args("PERCENT", percent, "share of packets dropped"),
    ),
    Command("fast", "fast NODE", "remove delay and loss again", FAULTS, _fault("fast"), _node),
]
BY_NAME: Final = {command.name: command for command in COMMANDS}
