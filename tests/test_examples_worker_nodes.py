"""examples/worker-nodes: the key-provisioning script and the systemd units do what the README says.

* provision-keys.sh is ShellCheck-clean; ``generate`` makes per-node keys with private modes;
  ``install`` to a local directory ships only the node's share, with strict modes; ``check``
  refuses a world-readable secret.
* The provisioned keys work end to end: a real agent serving the installed keys accepts a real
  ZmqNodeExecutor that uses the controller's share, and runs a command.
* Each unit's ExecStart, with node.env's values substituted, is accepted by the script's argparse;
  the hardening options the README promises are present.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "examples" / "worker-nodes"
SCRIPT = FOLDER / "provision-keys.sh"
UNITS = ("zmq-node-agent.service", "cluster-worker.service")
HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "CapabilityBoundingSet",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "UMask",
)


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, cwd=REPO
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_generate_install_check(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = provision("generate", str(keys), "node1", "node2")
    assert result.returncode == 0, result.stderr
    for node in ("node1", "node2"):
        assert mode(keys / node) == 0o700
        assert mode(keys / node / "agent.key_secret") == 0o600
        assert mode(keys / node / "client.key_secret") == 0o600
    again = provision("generate", str(keys), "node1")
    assert "kept" in again.stdout

    target = tmp_path / "etc-zmq-cluster-keys"
    result = provision("install", str(keys), "node1", str(target))
    assert result.returncode == 0, result.stderr
    shipped = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert shipped == ["agent.key", "agent.key_secret", "authorized_clients/client.key"]
    assert mode(target) == 0o700 and mode(target / "agent.key_secret") == 0o600
    assert provision("check", str(target)).returncode == 0

    (target / "agent.key_secret").chmod(0o644)
    refused = provision("check", str(target))
    assert refused.returncode == 1 and "readable by others" in refused.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["bogus"], ["generate", "/tmp/x"], ["install", "a", "b"], ["generate", "/tmp/x", "a b"]],
)
def test_bad_input_exits_2_with_usage(args: list[str]) -> None:
    result = provision(*args)
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_provisioned_keys_let_the_controller_run_a_command(
    spawn: Any, port: int, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    node_keys = tmp_path / "node-keys"
    assert provision("generate", str(keys), "node1").returncode == 0
    assert provision("install", str(keys), "node1", str(node_keys)).returncode == 0
    agent = spawn(
        "03-cluster-runner-simulation/zmq_node_agent.py",
        "serve",
        "--node-id",
        "node1",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--keys",
        str(node_keys),
    )
    agent.wait_for("ready")

    async def run_once() -> str:
        executor = ZmqNodeExecutor.from_keys_dir("node1", "127.0.0.1", port, keys / "node1")
        try:
            result = await executor.run("echo provisioned", timeout=20)
        finally:
            await executor.close()
        assert result.exit_status == 0
        return result.stdout.decode() if isinstance(result.stdout, bytes) else str(result.stdout)

    assert "provisioned" in asyncio.run(run_once())


def node_env() -> dict[str, str]:
    values = {}
    for line in (FOLDER / "node.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.mark.parametrize("unit", UNITS)
def test_unit_execstart_parses_and_is_hardened(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(FOLDER / unit)
    service = parser["Service"]
    for option in HARDENING:
        assert option in service, f"{unit} lacks {option}="
    assert service["EnvironmentFile"] == "/etc/zmq-cluster/node.env"
    shell_command = shlex.split(service["ExecStart"])[-1]  # /bin/sh -c '...'
    env = node_env()
    env["REPO_DIR"] = str(REPO)
    env["PYTHON"] = "python"
    expanded = re.sub(r"\$(\w+)", lambda m: shlex.quote(env[m.group(1)]), shell_command)
    argv = shlex.split(expanded.removeprefix("exec "))
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "test_docs_commands.py"), "--parse", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
