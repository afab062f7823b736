"""What runs a command in the benchmark: the five executors behind one ``Runner`` face.

Nothing here measures: performance_comparison.py times these. ``zmq`` and ``asyncssh``
wrap the real NodeExecutorProtocol implementations (built from descriptor nodes the way
the contexts build them); ``ssh_mux``, ``ssh_fresh`` and ``local`` start a process per
command (OpenSSH with or without ControlMaster, or the command itself).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster_runner_simulation.descriptor import NodeSpec
from cluster_runner_simulation.protocols import NodeExecutorProtocol
from cluster_runner_simulation.ssh_context import ssh_executor_for
from cluster_runner_simulation.testing import openssh_argv
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for

EXECUTORS: Final = ("zmq", "asyncssh", "ssh_mux", "ssh_fresh", "local")
COMMAND_TIMEOUT_S: Final = 60.0


class SetupError(Exception):
    """The benchmark cannot be set up as asked; reported on one line, exit status 2."""


class Runner:
    """Runs a shell command on one node and returns its stdout; the benchmark's only view."""

    name = ""

    async def run(self, command: str) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class ExecutorRunner(Runner):
    """Any NodeExecutorProtocol: the ZeroMQ and asyncssh executors."""

    def __init__(self, name: str, executor: NodeExecutorProtocol) -> None:
        self.name = name
        self.executor = executor

    async def run(self, command: str) -> bytes:
        result = await self.executor.run(command, timeout=COMMAND_TIMEOUT_S)
        if result.exit_status != 0:
            raise RuntimeError(f"{self.name}: {command!r} exited {result.exit_status}")
        return result.stdout

    async def close(self) -> None:
        await self.executor.close()


class ProcessRunner(Runner):
    """A local process per command: `ssh ...` (mux or fresh), or the command itself."""

    def __init__(self, name: str, argv_prefix: list[str]) -> None:
        self.name = name
        self.argv_prefix = argv_prefix

    async def run(self, command: str) -> bytes:
        if self.argv_prefix:
            proc = await asyncio.create_subprocess_exec(
                *self.argv_prefix,
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        else:
            proc = await asyncio.create_subprocess_shell(
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {command!r} exited {proc.returncode}: {err[-200:]!r}")
        return out


@dataclass
class Bench:
    """Runners per executor name: index 0 is 'the' node; all of them are the fan-out."""

    runners: dict[str, list[Runner]]

    async def close(self) -> None:
        for group in self.runners.values():
            await asyncio.gather(*(r.close() for r in group), return_exceptions=True)


def make_runner(name: str, node: NodeSpec, control_path: Path) -> Runner:
    def ssh_argv(mux: bool) -> list[str]:
        return openssh_argv(
            node.host,
            node.ssh_port,
            node.ssh_user,
            node.ssh_key,
            node.ssh_known_hosts,
            control_path if mux else None,
        )

    if name == "zmq":
        if node.curve_keys_dir is None:
            raise SetupError(f"{node.id}: curve_keys_dir is needed to benchmark zmq")
        return ExecutorRunner(name, zmq_executor_for(node))
    if name == "asyncssh":
        return ExecutorRunner(name, ssh_executor_for(node))
    if name in ("ssh_mux", "ssh_fresh"):
        return ProcessRunner(name, ssh_argv(mux=name == "ssh_mux"))
    return ProcessRunner(name, [])  # local


def build_bench(names: list[str], nodes: list[NodeSpec], tmp: Path) -> Bench:
    return Bench(
        {
            name: [make_runner(name, node, tmp / f"cm{i}") for i, node in enumerate(nodes)]
            for name in names
        }
    )


async def stop_ssh_masters(bench: Bench) -> None:
    """``ssh -O exit`` for every ControlMaster the ssh_mux runners started."""
    for runner in bench.runners.get("ssh_mux", []):
        assert isinstance(runner, ProcessRunner)
        argv = runner.argv_prefix
        proc = await asyncio.create_subprocess_exec(
            *argv[:-1], "-O", "exit", argv[-1],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
