"""Environment parity: what a test sees on each node over SSH, and over the ZeroMQ agent.

Connects to every descriptor node twice (its sshd with ``AsyncSSHExecutor``, its agent with
``ZmqNodeExecutor``), runs one read-only probe through both, and prints per node what
differs: environment variables (PATH entry by entry), resource limits, the shell that ran
the command, user and groups, umask, working directory, which tools are found, and the GPUs
(``nvidia-smi -L``, where present). Variables that only say which transport ran the command
(SSH_CONNECTION, SHLVL, ...) are ignored; ``--ignore`` adds more.

Limits come from /proc/self/limits, not from ``ulimit -a``: the two sides run different
shells (bash over SSH, dash under the agent) whose ``ulimit -a`` print the same limits in
different words. The probe prints ``ulimit -a`` too, for the record (``--json``).

    python 03-cluster-runner-simulation/env_parity.py --descriptor cluster.toml
    python 03-cluster-runner-simulation/env_parity.py --local 1 --write-env-file node.env

``--write-env-file FILE`` saves what SSH gave the first node (without SSH's own variables) in
the format of the agent's ``--env-file``; start the agents with it (agent_environment.py) and
run this again. Exit codes: 0 the same on every node, 1 differences, 2 bad arguments or
descriptor, 3 a node unreachable over either transport, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import ErrorExit, output_file, run_interruptible
from cluster_runner_simulation.agent_environment import render_env_file
from cluster_runner_simulation.agent_keys import KeyFileError
from cluster_runner_simulation.descriptor import DescriptorError, NodeSpec, load_descriptor
from cluster_runner_simulation.protocols import ExecutorError, NodeExecutorProtocol
from cluster_runner_simulation.ssh_context import ssh_executor_for
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for

# Set by sshd, the login or the shell itself: they tell the transports apart, not the tests.
TRANSPORT_VARIABLES: Final = frozenset(
    {"SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK", "SSH_ORIGINAL_COMMAND"}
    | {"SHLVL", "_", "PWD", "OLDPWD", "MAIL", "MOTD_SHOWN", "TERM"}
    | {"XDG_SESSION_ID", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS", "XDG_RUNTIME_DIR"}
)
DEFAULT_TOOLS: Final = ("python3", "mpirun", "nvidia-smi")
PROBE_TIMEOUT_S: Final = 30.0
SECTION: Final = "@@zmq-parity@@ "
# One read-only probe, POSIX sh, run identically by both transports.
PROBE: Final = r"""
section() { printf '\n@@zmq-parity@@ %s\n' "$1"; }
section env; env -0 2>/dev/null || env
section limits; cat /proc/self/limits 2>/dev/null
section ulimit; ulimit -a 2>&1
section shell; readlink /proc/$$/exe 2>/dev/null || echo "${0:-unknown}"
section id; id
section umask; umask
section cwd; pwd
section tools; for t in $PARITY_TOOLS; do printf '%s=%s\n' "$t" "$(command -v "$t" || echo -)"; done
section gpus
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>&1; else echo '(no nvidia-smi)'; fi
"""
COMPARED: Final = ("env", "limits", "shell", "id", "umask", "cwd", "tools", "gpus")


@dataclass(frozen=True)
class Probe:
    """What one transport's probe saw on one node."""

    env: dict[str, str]
    sections: dict[str, str]


@dataclass
class NodeParity:
    node: str
    differences: list[str] = field(default_factory=list)
    ssh: Probe | None = None
    zmq: Probe | None = None
    error: str | None = None


def _parse_env(text: str) -> dict[str, str]:
    if "\0" in text:
        pairs = [item for item in text.split("\0") if item.strip("\n")]
    else:  # `env` without -0: values with newlines cannot be told apart; keep what parses
        pairs = text.splitlines()
    variables = {}
    for pair in pairs:
        name, equals, value = pair.lstrip("\n").partition("=")
        if equals:
            variables[name] = value
    return variables


def parse_probe(stdout: str) -> Probe:
    """The probe's output, cut into its sections."""
    sections: dict[str, str] = {}
    for chunk in stdout.split("\n" + SECTION)[1:]:
        name, _, body = chunk.partition("\n")
        sections[name.strip()] = body.rstrip("\n") if name.strip() != "env" else body
    return Probe(_parse_env(sections.pop("env", "")), sections)


def _env_differences(ssh: Mapping[str, str], zmq: Mapping[str, str], ignore: set[str]) -> list[str]:
    found = []
    for name in sorted((set(ssh) | set(zmq)) - ignore):
        left, right = ssh.get(name), zmq.get(name)
        if left == right:
            continue
        if left is None:
            found.append(f"env {name}: only under zmq ({right!r})")
        elif right is None:
            found.append(f"env {name}: only under ssh ({left!r})")
        elif name == "PATH":
            found.append(_path_difference(left, right))
        else:
            found.append(f"env {name}: ssh {left!r}, zmq {right!r}")
    return found


def _path_difference(ssh: str, zmq: str) -> str:
    ssh_dirs, zmq_dirs = ssh.split(":"), zmq.split(":")
    missing = [d for d in ssh_dirs if d not in zmq_dirs]
    extra = [d for d in zmq_dirs if d not in ssh_dirs]
    if not missing and not extra:
        return f"env PATH: same directories, another order (ssh {ssh}, zmq {zmq})"
    return f"env PATH: missing under zmq {missing or '-'}, only under zmq {extra or '-'}"


def compare(ssh: Probe, zmq: Probe, ignore: set[str]) -> list[str]:
    """Every difference a test could notice, one line each."""
    found = _env_differences(ssh.env, zmq.env, ignore)
    for name in COMPARED[1:]:
        left, right = ssh.sections.get(name, ""), zmq.sections.get(name, "")
        if left == right:
            continue
        left_lines, right_lines = left.splitlines(), right.splitlines()
        only_ssh = [line for line in left_lines if line not in right_lines]
        only_zmq = [line for line in right_lines if line not in left_lines]
        found.append(f"{name}: ssh has {only_ssh or '-'}; zmq has {only_zmq or '-'}")
    return found


async def probe(executor: NodeExecutorProtocol, tools: Sequence[str]) -> Probe:
    result = await executor.run(
        PROBE, timeout=PROBE_TIMEOUT_S, env={"PARITY_TOOLS": " ".join(tools)}
    )
    return parse_probe(result.stdout_text)


async def node_parity(node: NodeSpec, tools: Sequence[str], ignore: set[str]) -> NodeParity:
    parity = NodeParity(node.id)
    ssh, zmq = ssh_executor_for(node), zmq_executor_for(node)
    try:
        over_ssh, over_zmq = await asyncio.gather(probe(ssh, tools), probe(zmq, tools))
        parity.ssh, parity.zmq = over_ssh, over_zmq
        parity.differences = compare(over_ssh, over_zmq, ignore | {"PARITY_TOOLS"})
    except ExecutorError as exc:
        parity.error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.gather(ssh.close(), zmq.close())
    return parity


def report(results: Sequence[NodeParity]) -> int:
    status = 0
    for parity in results:
        if parity.error:
            print(f"{parity.node}: UNREACHABLE {parity.error}")
            status = 3
            continue
        if not parity.differences:
            print(f"{parity.node}: same environment over ssh and zmq")
            continue
        status = max(status, 1)
        print(f"{parity.node}: {len(parity.differences)} difference(s)")
        for line in parity.differences:
            print(f"  {line}")
    return status


def write_env_file(path: Path, parity: NodeParity, ignore: set[str]) -> None:
    assert parity.ssh is not None
    variables = {k: v for k, v in parity.ssh.env.items() if k not in ignore | {"PARITY_TOOLS"}}
    header = (
        f"What SSH gave the commands of node {parity.node} (env_parity.py), for the agent's\n"
        "--env-file: every command then starts with exactly these variables."
    )
    path.write_text(render_env_file(variables, header))
    print(f"wrote {len(variables)} variables to {path} (zmq_node_agent.py serve --env-file)")


@contextlib.contextmanager
def local_descriptor(count: int) -> Iterator[Path]:
    """A loopback sshd and ``count`` agents (the test harness), described in a TOML file."""
    from cluster_runner_simulation.testing import LocalAgents, LocalSshd, write_local_descriptor

    with tempfile.TemporaryDirectory(prefix="env-parity-") as tmp:
        with LocalSshd() as sshd, LocalAgents(count) as agents:
            yield write_local_descriptor(sshd, agents, Path(tmp) / "cluster.toml")


async def check(
    path: Path, nodes: list[str] | None, tools: Sequence[str], ignore: set[str]
) -> list[NodeParity]:
    descriptor = load_descriptor(path)
    if nodes:
        descriptor = descriptor.select(nodes)
    return list(await asyncio.gather(*(node_parity(n, tools, ignore) for n in descriptor.nodes)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare what a test sees over SSH and over the ZeroMQ agent, per node",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--descriptor", type=Path, help="cluster descriptor (TOML)")
    where.add_argument("--local", type=int, metavar="N", help="a loopback sshd and N agents")
    parser.add_argument("--nodes", help="comma-separated node ids; None: all")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help="tools to look up")
    parser.add_argument("--ignore", default="", help="more variable names to ignore (commas)")
    parser.add_argument(
        "--json", type=output_file, help="also write every probe and difference here"
    )
    parser.add_argument(
        "--write-env-file",
        type=output_file,
        metavar="FILE",
        help="save SSH's environment of one node",
    )
    args = parser.parse_args(argv)
    if args.local is not None and not 1 <= args.local <= 16:
        parser.error("--local must be 1-16")
    args.nodes = [n for n in (args.nodes or "").split(",") if n] or None
    args.tools = [t for t in args.tools.split(",") if t]
    if any(not t.replace("-", "").replace("_", "").replace(".", "").isalnum() for t in args.tools):
        parser.error("--tools: names of programs, such as python3,mpirun")
    args.ignore = TRANSPORT_VARIABLES | {n for n in args.ignore.split(",") if n}
    return args


# Exit codes: 2 bad input or files, 3 no node answered over ssh.
EXITS: Final = (ErrorExit((DescriptorError, KeyFileError), 2), ErrorExit(OSError, 2))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_interruptible("env_parity", lambda: compare_and_report(args), EXITS)


def compare_and_report(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        path = args.descriptor or stack.enter_context(local_descriptor(args.local))
        results = asyncio.run(check(path, args.nodes, args.tools, args.ignore))
    status = report(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.write_env_file:
        reachable = [r for r in results if r.ssh is not None]
        if not reachable:
            print("env_parity: error: no node answered over ssh", file=sys.stderr)
            return 3
        write_env_file(args.write_env_file, reachable[0], args.ignore)
    return status


if __name__ == "__main__":
    sys.exit(main())
