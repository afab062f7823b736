"""CURVE key files for the ZeroMQ node agent and its clients.

Nothing here binds or connects: it only writes and reads key files in
ZeroMQ's certificate format (the one ``zmq.auth.load_certificate`` reads).

A keys directory made by ``keys generate DIR`` holds:

    DIR/agent.key                       the agent's public key   (give it to clients)
    DIR/agent.key_secret                the agent's secret key   (0600, stays on the node)
    DIR/client.key                      the client's public key
    DIR/client.key_secret               the client's secret key  (0600, stays with cluster_runner)
    DIR/authorized_clients/client.key   the allow-list the agent's ZAP handler reads

Run it:
    python 03-cluster-runner-simulation/zmq_node_agent.py keys generate /tmp/agent-keys
    python 03-cluster-runner-simulation/zmq_node_agent.py keys authorize /tmp/agent-keys other.key
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

AGENT_NAME = "agent"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"
SECRET_MODE = 0o600
# Any of these bits on a secret key file means someone else may read it.
FORBIDDEN_SECRET_BITS = stat.S_IRWXG | stat.S_IRWXO


class KeyFileError(Exception):
    """A key file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ****  Generated on {time.strftime('%Y-%m-%d %H:%M:%S')} by zmq_node_agent  ****",
        f"#   ZeroMQ CURVE **{kind}** Certificate",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_file(path: Path, text: str, mode: int) -> None:
    # Create with the final mode straight away: a chmod afterwards would leave a
    # window in which the secret is world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def write_keypair(directory: Path, name: str) -> KeyPair:
    """Write ``name.key`` (0644) and ``name.key_secret`` (0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_file(directory / f"{name}.key", _certificate_text(public, None), 0o644)
    _write_file(directory / f"{name}.key_secret", _certificate_text(public, secret), SECRET_MODE)
    return KeyPair(public, secret)


def generate_keys(directory: Path) -> None:
    """Create agent and client keypairs and authorize the client."""
    write_keypair(directory, AGENT_NAME)
    write_keypair(directory, CLIENT_NAME)
    authorize_client(directory, directory / f"{CLIENT_NAME}.key")


def authorize_client(directory: Path, public_key_file: Path) -> Path:
    """Copy a client's public key into the agent's allow-list directory."""
    load_public(public_key_file)  # refuse to authorize a file that is not a public key
    allowed = directory / AUTHORIZED_DIR
    allowed.mkdir(parents=True, exist_ok=True)
    target = allowed / (public_key_file.stem + ".key")
    shutil.copyfile(public_key_file, target)
    return target


def check_secret_permissions(path: Path) -> None:
    """Refuse a secret key file that group or others could read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"secret key file {path} does not exist") from None
    if mode & FORBIDDEN_SECRET_BITS:
        raise KeyFileError(
            f"secret key file {path} has mode {stat.S_IMODE(mode):04o}; "
            f"refusing to use it (run: chmod 600 {path})"
        )


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path} holds no valid CURVE public key")
    return public


def load_keypair(path: Path) -> KeyPair:
    """Read ``name.key_secret`` after checking nobody else can read it."""
    check_secret_permissions(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read secret key {path}: {exc}") from None
    if public is None or secret is None or len(public) != 40 or len(secret) != 40:
        raise KeyFileError(f"{path} holds no valid CURVE keypair")
    return KeyPair(public, secret)
