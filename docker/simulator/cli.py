"""The command line of docker/simulate-cluster.sh: argparse over the table in verbs.py.

Global options (--local, --docker, -p, --no-wait) may come before or after the command, as
they always could. Bad input is one line on stderr and exit code 2; every flag's help shows
its default; `help` (or -h) lists every command, and `COMMAND -h` its own flags.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, NoReturn

from cluster_patterns import defaults
from cluster_simulator.backend import Backend
from cluster_simulator.commands import Context
from cluster_simulator.config import ENVIRONMENT, BackendChoice, SimConfig, build_config
from cluster_simulator.containers import engine_answers
from cluster_simulator.docker_backend import DockerBackend
from cluster_simulator.lifecycle import Interrupted, Signals, Undo
from cluster_simulator.local_backend import LocalBackend
from cluster_simulator.output import ExitCode, SimError, UsageError, flush_all, say_err, warn
from cluster_simulator.swarm_backend import SwarmBackend
from cluster_simulator.verbs import BY_NAME, COMMANDS

BACKENDS: Final[dict[BackendChoice, type[Backend]]] = {
    BackendChoice.LOCAL: LocalBackend,
    BackendChoice.DOCKER: DockerBackend,
    BackendChoice.SWARM: SwarmBackend,
}
SIGNATURE_WIDTH: Final = 22
EXIT_CODES: Final = (
    "Exit codes: 0 ok, 1 failed (or `test` found a violation), 2 bad input, 3 a port is taken\n"
    "(the message names its holder), 130 Ctrl-C (129 hang-up, 143 SIGTERM)"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Our own line breaks in the command list, every flag's default, and "Usage:"."""

    def add_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup],
        prefix: str | None = None,
    ) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


class Parser(argparse.ArgumentParser):
    """Errors become UsageError (one line, exit 2), worded as the commands word them."""

    command = ""

    def error(self, message: str) -> NoReturn:
        raise UsageError(explain(message, self.command))


def explain(message: str, command: str) -> str:
    """argparse's message, in the simulator's words ("start: --workers needs ...")."""
    prefix = f"{command}: " if command else ""
    if match := re.match(r"argument COMMAND: invalid choice: '([^']*)'", message):
        return f"unknown command '{match[1]}' (see `help`)"
    if match := re.match(r"the following arguments are required: (.*)", message):
        return f"{prefix}missing {match[1]} (see --help)"
    if match := re.match(r"argument ([^:]+): (.*)", message):
        names, rest = match[1], match[2]
        if any(rest.startswith(name) for name in names.split("/")):
            return prefix + rest  # the type's own message names the flag
        return f"{prefix}{names}: {rest}"
    return prefix + message


def command_list() -> str:
    """The commands by section, as `help` shows them."""
    sections: dict[str, list[str]] = {}
    indent = " " * (SIGNATURE_WIDTH + 3)
    for command in COMMANDS:
        lines = command.summary.splitlines()
        if len(command.signature) > SIGNATURE_WIDTH:
            rows = [f"  {command.signature}"] + [indent + line for line in lines]
        else:
            rows = [f"  {command.signature:<{SIGNATURE_WIDTH}} {lines[0]}"]
            rows += [indent + line for line in lines[1:]]
        sections.setdefault(command.section, []).extend(rows)
    return "\n\n".join(f"{title}\n" + "\n".join(rows) for title, rows in sections.items())


def epilog() -> str:
    width = max(len(name) for name in ENVIRONMENT)
    variables = [f"  {name:<{width}}  {meaning}" for name, meaning in ENVIRONMENT.items()]
    return (
        "Environment (each overrides a default):\n"
        + "\n".join(variables)
        + f"\n\nDashboard: http://localhost:{defaults.MONITOR_PORT}/ (or MONITOR_PORT)\n"
        + EXIT_CODES
    )


def global_options() -> Parser:
    """Options every command takes, before or after its name (defaults: from the environment)."""
    common = Parser(add_help=False)
    backends = common.add_mutually_exclusive_group()
    for backend in (BackendChoice.LOCAL, BackendChoice.DOCKER, BackendChoice.SWARM):
        backends.add_argument(
            f"--{backend.value}",
            dest="backend",
            action="store_const",
            const=backend.value,
            default=argparse.SUPPRESS,
            help=f"use the {backend.value} backend (default: $CLUSTER_BACKEND, else auto)",
        )
    common.add_argument(
        "-p",
        "--project",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="Compose project / state name (default: $COMPOSE_PROJECT_NAME, else zmqsim)",
    )
    common.add_argument(
        "--no-wait",
        action="store_true",
        default=argparse.SUPPRESS,
        help="fail/recover/partition/heal return without waiting for the monitor's verdict",
    )
    return common


def build_parser(prog: str) -> Parser:
    common = global_options()
    parser = Parser(
        prog=prog,
        usage=f"{prog} [--local|--docker|--swarm] [-p PROJECT] COMMAND [ARGS]",
        description="Run the 02 cluster and break it on purpose.\n\n" + command_list(),
        epilog=epilog(),
        formatter_class=HelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    sub.add_parser("help", help="this text", add_help=False)
    for command in COMMANDS:
        child = sub.add_parser(
            command.name,
            prog=f"{prog} {command.name}",
            description=command.summary,
            formatter_class=HelpFormatter,
            parents=[common],
        )
        assert isinstance(child, Parser)
        child.command = command.name
        command.add_arguments(child)
    return parser


def parse(parser: Parser, argv: Sequence[str]) -> argparse.Namespace:
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = BY_NAME.get(args.command) if args.command else None
        word = extras[0]
        what = "unknown option" if word.startswith("-") else "unexpected argument"
        usage = f" (usage: {command.signature})" if command else ""
        prefix = f"{command.name}: " if command else ""
        raise UsageError(f"{prefix}{what} '{word}'{usage}")
    return args


def choose_backend(config: SimConfig, signals: Signals, undo: Undo) -> Backend:
    """--local/--docker/--swarm as asked; auto: a running local cluster, else a swarm cluster
    started from here, else Docker if it answers (Swarm only when asked or already running)."""
    local = LocalBackend(config, signals, undo)
    if config.backend is BackendChoice.LOCAL:
        return local
    if config.backend is BackendChoice.AUTO and local.is_started():
        return local
    if engine_answers():
        if config.backend is BackendChoice.SWARM:
            return SwarmBackend(config, signals, undo)
        if config.backend is BackendChoice.AUTO:
            swarm = SwarmBackend(config, signals, undo)
            if swarm.was_started():
                return swarm
        return DockerBackend(config, signals, undo)
    if config.backend in (BackendChoice.DOCKER, BackendChoice.SWARM):
        raise UsageError(
            "no Docker engine answers (is dockerd running? try `docker info`). "
            "Use the local backend instead: --local or CLUSTER_BACKEND=local"
        )
    return local


def run_command(argv: Sequence[str], signals: Signals, undo: Undo) -> int:
    prog = os.environ.get("SIMULATE_CLUSTER_PROG", "simulate-cluster.sh")
    parser = build_parser(Path(prog).name)
    try:
        args = parse(parser, argv)
        if args.command is None or args.command == "help":
            if args.command is None:
                parser.print_help(sys.stderr)
                return ExitCode.USAGE
            parser.print_help()
            return ExitCode.OK
        config = build_config(
            os.environ,
            backend=getattr(args, "backend", None),
            project=getattr(args, "project", None),
            no_wait=getattr(args, "no_wait", False),
        )
        backend = choose_backend(config, signals, undo)
        return BY_NAME[args.command].run(Context(config, backend, signals, undo), args)
    except SimError as exc:
        for line in str(exc).splitlines():
            warn(line)
        return exc.exit_code
    except OSError as exc:  # the state directory or an output file: unusable, or a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        warn(f"error: {where}{exc.strerror or exc}")
        return ExitCode.FAILED
    except Interrupted as exc:
        return exc.exit_code
    except SystemExit as exc:  # -h printed the help
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE


def finish(undo: Undo, code: int) -> int:
    """Run what the run must not leave behind, whatever ended it; a stop that fails is exit 1."""
    while undo.armed:
        try:
            if undo.description:
                warn(undo.description)
            undo.run()
        except Interrupted as exc:  # arrived just before the undo could shield itself
            code = exc.exit_code
        except (SimError, OSError) as exc:
            say_err(f"simulate-cluster: the stop failed: {exc}")
            code = ExitCode.FAILED
    return code


def main(argv: Sequence[str]) -> int:
    signals = Signals()
    signals.install()
    undo = Undo(signals)
    code = finish(undo, run_command(argv, signals, undo))
    flush_all()
    return code
