"""A throwaway sshd on loopback (LocalSshd) and the OpenSSH client argv that reaches it.

LocalSshd starts Debian's /usr/sbin/sshd in the foreground on 127.0.0.1:<free
port>, with a host key, a client key and an authorized_keys file generated in a
temporary directory; it logs in as the current user. Test and benchmark code only.

    with LocalSshd() as sshd:
        executor = sshd.executor("n1")       # an AsyncSSHExecutor with the generated key
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from cluster_runner_simulation.ssh_executor import AsyncSSHExecutor
from cluster_runner_simulation.testing.processes import Started, free_port, stop_process

SSHD_BINARY: Final = "/usr/sbin/sshd"
SSH_KEYGEN: Final = "ssh-keygen"
PRIVSEP_DIR: Final = Path("/run/sshd")
START_TIMEOUT_S: Final = 20.0
# Enough for 64 simultaneous handshakes and 64 sessions on one connection.
SSHD_MAX_STARTUPS: Final = 512
SSHD_MAX_SESSIONS: Final = 1024


def sshd_unavailable_reason() -> str | None:
    """Why a LocalSshd cannot run here, or None if it can."""
    if not Path(SSHD_BINARY).exists():
        return f"{SSHD_BINARY} not found (apt-get install openssh-server)"
    for tool in (SSH_KEYGEN, "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install openssh-client)"
    return None


class LocalSshd(Started):
    """A throwaway sshd on 127.0.0.1 that accepts one generated client key."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, source_rc: bool = False) -> None:
        self.port = port or free_port(self.host)
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
                # Debian's own sshd_config has it; scp (SFTP by default since OpenSSH 9) needs it.
                "Subsystem sftp internal-sftp",
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
            stop_process(self._proc)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def executor(self, node_id: str, **options: float) -> AsyncSSHExecutor:
        """An asyncssh executor that logs in to this sshd with its generated client key."""
        return AsyncSSHExecutor(
            node_id,
            self.host,
            self.port,
            username=self.username,
            client_keys=[str(self.client_key_path)],
            known_hosts=str(self.known_hosts),
            **options,
        )

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
