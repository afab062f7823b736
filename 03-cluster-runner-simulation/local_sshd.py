"""Private test clusters on loopback: an sshd (LocalSshd) and N ZeroMQ agents (LocalAgents).

LocalSshd starts Debian's /usr/sbin/sshd in the foreground on 127.0.0.1:<free
port>, with a host key, a client key and an authorized_keys file generated in a
temporary directory; it logs in as the current user. LocalAgents starts N
``zmq_node_agent.py serve`` subprocesses on 127.0.0.1 with freshly generated
CURVE keys, each on a port the agent picks itself (printed in its "ready"
line), and can stop, kill or restart any of them on the same port.

Both are context managers (sync and async), used by the tests, by
performance_comparison.py and by the cluster_runner drop-ins:

    with LocalSshd() as sshd, LocalAgents(4) as agents:
        ssh = AsyncSSHExecutor.for_local_sshd("n1", sshd)
        zmq_executors = agents.executors()

Try it:
    python 03-cluster-runner-simulation/local_sshd.py      # starts both, prints, Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

SSHD_BINARY = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
AGENT_SCRIPT = Path(__file__).resolve().parent / "zmq_node_agent.py"
READY_LINE = re.compile(r"ready on tcp://[^:]+:(\d+)")
# Enough for 64 simultaneous handshakes and 64 sessions on one connection.
SSHD_MAX_STARTUPS = 512
SSHD_MAX_SESSIONS = 1024


def sshd_unavailable_reason() -> str | None:
    """Why a LocalSshd cannot run here, or None if it can."""
    if not Path(SSHD_BINARY).exists():
        return f"{SSHD_BINARY} not found (apt-get install openssh-server)"
    for tool in (SSH_KEYGEN, "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a process started in its own session, then kill its group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


class _SyncAndAsyncContext:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _SyncAndAsyncContext:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> _SyncAndAsyncContext:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- sshd -------------------------------------------------------------------------------------


class LocalSshd(_SyncAndAsyncContext):
    """A throwaway sshd on 127.0.0.1 that accepts one generated client key."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, source_rc: bool = False) -> None:
        self.port = port or _free_port()
        self.source_rc = source_rc
        self.username = getpass.getuser()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.dir = Path()

    @property
    def client_key_path(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def __enter__(self) -> LocalSshd:
        self.start()
        return self

    async def __aenter__(self) -> LocalSshd:
        self.start()
        return self

    def start(self) -> None:
        reason = sshd_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        # A short path: ssh ControlPath sockets must fit in 108 bytes.
        self._tmp = tempfile.TemporaryDirectory(prefix="sshd-", dir="/tmp")
        self.dir = Path(self._tmp.name)
        self._generate_keys()
        config = self.dir / "sshd_config"
        config.write_text(self._config())
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [SSHD_BINARY, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._wait_listening()

    def _generate_keys(self) -> None:
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                [
                    SSH_KEYGEN,
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    name,
                    "-f",
                    str(self.dir / name),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        shutil.copyfile(self.dir / "client_ed25519.pub", self.dir / "authorized_keys")
        host_pub = (self.dir / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")

    def _config(self) -> str:
        # Debian's bash sources ~/.bashrc for a command sshd runs (SSH_SOURCE_BASHRC) unless
        # SHLVL is already set. A login user's rc file (pyenv init, conda, nvm...) then costs
        # tens of ms per command that is not SSH's: the ZeroMQ agent runs /bin/sh and sources
        # nothing. SHLVL=1 makes the benchmark measure the transport; source_rc=True keeps the
        # rc cost in, to show what a user's shell setup adds to every SSH command.
        rc_setting = [] if self.source_rc else ["SetEnv SHLVL=1"]
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.dir / 'host_ed25519'}",
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                "PidFile none",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "PrintMotd no",
                *rc_setting,
                f"MaxStartups {SSHD_MAX_STARTUPS}",
                f"MaxSessions {SSHD_MAX_SESSIONS}",
                "LogLevel ERROR",
                "",
            ]
        )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def ssh_argv(self, control_path: Path | None = None) -> list[str]:
        """OpenSSH client argv (without the command); ``control_path`` turns on multiplexing."""
        return openssh_argv(
            self.host,
            self.port,
            self.username,
            self.client_key_path,
            self.known_hosts,
            control_path,
        )


def openssh_argv(
    host: str,
    port: int,
    user: str | None,
    key: Path | None,
    known_hosts: Path | None,
    control_path: Path | None = None,
) -> list[str]:
    """``ssh`` argv up to the command: batch mode, strict host keys, optional ControlMaster."""
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes"]
    argv += ["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"]
    if key is not None:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if control_path is None:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    else:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}"]
        argv += ["-o", "ControlPersist=300"]
    return [*argv, f"{user}@{host}" if user else host]


# --- ZeroMQ agents ----------------------------------------------------------------------------


@dataclass
class AgentProcess:
    node_id: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0  # where this run's output starts in the (appended) log


class LocalAgents(_SyncAndAsyncContext):
    """N local zmq_node_agent.py processes sharing one generated keys directory."""

    host = "127.0.0.1"

    def __init__(self, count: int, concurrency: int | None = None, prefix: str = "node") -> None:
        self.count = count
        self.concurrency = concurrency
        self.prefix = prefix
        self.agents: list[AgentProcess] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = Path()

    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    def __enter__(self) -> LocalAgents:
        self.start()
        return self

    async def __aenter__(self) -> LocalAgents:
        self.start()
        return self

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="agents-", dir="/tmp")
        self.dir = Path(self._tmp.name)
        generate_keys(self.keys_dir)
        try:
            launched = [self._launch(f"{self.prefix}{i}", 0) for i in range(self.count)]
            self.agents = [self._await_ready(agent) for agent in launched]
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
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        return AgentProcess(node_id, self.host, port, proc, log_path, offset)

    def _await_ready(self, agent: AgentProcess) -> AgentProcess:
        deadline = time.monotonic() + START_TIMEOUT_S * 3
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

    def executor(self, index: int, **options: float) -> ZmqNodeExecutor:
        agent = self.agents[index]
        return ZmqNodeExecutor.from_keys_dir(
            agent.node_id, agent.host, agent.port, self.keys_dir, **options
        )

    def executors(self, **options: float) -> list[ZmqNodeExecutor]:
        return [self.executor(i, **options) for i in range(len(self.agents))]

    def stop_one(self, index: int, sig: int = signal.SIGTERM) -> None:
        _stop_process(self.agents[index].proc, sig)

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
            _stop_process(agent.proc)
        self.agents = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def main() -> int:
    """Start an sshd and two agents on loopback, print how to reach them, wait for Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    with contextlib.suppress(KeyboardInterrupt), LocalSshd() as sshd, LocalAgents(2) as agents:
        print(f"sshd: {' '.join(sshd.ssh_argv())} true")
        for agent in agents.agents:
            print(f"agent {agent.node_id}: tcp://{agent.host}:{agent.port} keys {agents.keys_dir}")
        print("Ctrl-C stops them", flush=True)
        while True:
            time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())


LOCAL_LEAVES = ("leaf-a", "leaf-b")


def write_local_descriptor(
    sshd: LocalSshd, agents: LocalAgents, path: Path, name: str = "local"
) -> Path:
    """Describe the loopback cluster (one sshd, N agents) like a real one, in a TOML file.

    Nodes alternate between two leaves (and racks), so pair schedules have pairs.
    """
    nodes = tuple(
        NodeSpec(
            id=agent.node_id,
            host=agent.host,
            zmq_port=agent.port,
            ssh_port=sshd.port,
            ssh_user=sshd.username,
            ssh_key=sshd.client_key_path,
            ssh_known_hosts=sshd.known_hosts,
            curve_keys_dir=agents.keys_dir,
            leaf=LOCAL_LEAVES[index % len(LOCAL_LEAVES)],
            rack=f"rack-{index % len(LOCAL_LEAVES) + 1}",
        )
        for index, agent in enumerate(agents.agents)
    )
    path.write_text(render_descriptor(ClusterDescriptor(name, nodes)))
    return path
