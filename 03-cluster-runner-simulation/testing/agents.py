"""N ZeroMQ node agents on loopback (LocalAgents), with freshly generated CURVE keys.

Each agent is a ``zmq_node_agent.py serve`` subprocess on 127.0.0.1 that picks its own
port (printed in its "ready" line); any of them can be stopped, killed or restarted on the
same port. Test and benchmark code only.

    with LocalAgents(4) as agents:
        executors = agents.executors()       # one ZmqNodeExecutor per agent
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster_patterns.defaults import LOOPBACK
from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.testing.processes import Started, stop_process
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

START_TIMEOUT_S: Final = 60.0
AGENT_SCRIPT: Final = Path(__file__).resolve().parent.parent / "zmq_node_agent.py"
READY_LINE: Final = re.compile(r"ready on tcp://(?:\[[^\]]*\]|[^:\s]+):(\d+)")


@dataclass
class AgentProcess:
    node_id: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0  # where this run's output starts in the (appended) log


class LocalAgents(Started):
    """N local zmq_node_agent.py processes sharing one generated keys directory."""

    host = LOOPBACK

    def __init__(
        self,
        count: int,
        concurrency: int | None = None,
        prefix: str = "node",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        files_roots: bool = False,
        private_tmp: bool = False,
    ) -> None:
        """``env``: the agents' environment (None: this process's); ``extra_args`` go to
        every ``serve``; ``files_roots``: each agent gets ``--files-root DIR/files/NODE``
        (``files_root(index)``), as separate nodes have separate disks; ``private_tmp``: each
        agent's commands get a $TMPDIR of their own, as on separate machines (Open MPI keeps
        its session files there)."""
        self.private_tmp = private_tmp
        self.count = count
        self.concurrency = concurrency
        self.prefix = prefix
        self.env = None if env is None else dict(env)
        self.extra_args = list(extra_args)
        self.files_roots = files_roots
        self.agents: list[AgentProcess] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = Path()

    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="agents-", dir="/tmp")
        self.dir = Path(self._tmp.name)
        generate_keys(self.keys_dir)
        self.agents = []
        try:
            # Each one is listed as soon as it is launched, so that an interruption while the
            # others start (Ctrl-C, SIGTERM) stops every one of them, not none.
            for i in range(self.count):
                self.agents.append(self._launch(f"{self.prefix}{i}", 0))
            self.agents = [self._await_ready(agent) for agent in self.agents]
        except BaseException:
            self.stop()
            raise

    def _launch(self, node_id: str, port: int) -> AgentProcess:
        log_path = self.dir / f"{node_id}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [
            sys.executable,
            "-u",
            str(AGENT_SCRIPT),
            "serve",
            "--node-id",
            node_id,
            "--bind",
            self.host,
            "--port",
            str(port),
            "--keys",
            str(self.keys_dir),
        ]
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        argv += self.extra_args
        if self.files_roots:
            root = self.dir / "files" / node_id
            root.mkdir(parents=True, exist_ok=True)
            argv += ["--files-root", str(root)]
        # NODE_ID names the node to what runs under the agent (allreduce_bench prints it).
        env = {**(os.environ if self.env is None else self.env), "NODE_ID": node_id}
        if self.private_tmp:
            env["TMPDIR"] = str(self.dir / f"{node_id}-tmp")
            Path(env["TMPDIR"]).mkdir(exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
            )
        return AgentProcess(node_id, self.host, port, proc, log_path, offset)

    def _await_ready(self, agent: AgentProcess) -> AgentProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = agent.log_path.read_bytes()[agent.log_offset :].decode(errors="replace")
            ports = READY_LINE.findall(text)
            if ports:
                agent.port = int(ports[-1])
                return agent
            if agent.proc.poll() is not None:
                raise RuntimeError(f"agent {agent.node_id} exited:\n{text}")
            time.sleep(0.02)
        raise RuntimeError(f"agent {agent.node_id} never printed its ready line")

    def files_root(self, index: int) -> Path:
        """Agent ``index``'s --files-root (with ``files_roots=True``)."""
        return self.dir / "files" / self.agents[index].node_id

    def executor(self, index: int, **options: float) -> ZmqNodeExecutor:
        agent = self.agents[index]
        return ZmqNodeExecutor.from_keys_dir(
            agent.node_id, agent.host, agent.port, self.keys_dir, **options
        )

    def executors(self, **options: float) -> list[ZmqNodeExecutor]:
        return [self.executor(i, **options) for i in range(len(self.agents))]

    def stop_one(self, index: int, sig: int = signal.SIGTERM) -> None:
        stop_process(self.agents[index].proc, sig)

    def restart(self, index: int) -> AgentProcess:
        """Stop agent ``index`` and start it again on the same port."""
        old = self.agents[index]
        self.stop_one(index)
        agent = self._await_ready(self._launch(old.node_id, old.port))
        self.agents[index] = agent
        return agent

    def stop(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(ProcessLookupError):
                if agent.proc.poll() is None:
                    os.kill(agent.proc.pid, signal.SIGTERM)
        for agent in self.agents:
            stop_process(agent.proc)
        self.agents = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
