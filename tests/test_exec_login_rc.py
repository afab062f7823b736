"""The SSH baseline measures the transport: LocalSshd hands sessions SHLVL=1 unless asked not to.

Debian's bash sources ~/.bashrc for a command sshd runs unless SHLVL is already
set, so without it every SSH command would also pay the login user's rc file.
These tests read the environment a real sshd gave the session's shell (its
/proc/PID/environ, fixed at exec, before the shell changes anything), and run
performance_comparison.py with and without --ssh-login-rc.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import pytest

from cluster_runner_simulation.testing import LocalSshd, sshd_unavailable_reason

SCRIPT = "03-cluster-runner-simulation/performance_comparison.py"
# What sshd put in the shell's environment, whatever the login shell does with SHLVL later.
SESSION_SHLVL = "tr '\\0' '\\n' < /proc/$$/environ | grep '^SHLVL=' || echo 'SHLVL unset'"


@pytest.fixture(autouse=True)
def _needs_sshd() -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)


async def session_shlvl(source_rc: bool) -> str:
    # A bare channel, not AsyncSSHExecutor: its wrapper execs /bin/sh, whose environment the
    # login shell has already edited. Here $$ is the login shell sshd started.
    with LocalSshd(source_rc=source_rc) as sshd:
        async with asyncssh.connect(
            sshd.host,
            sshd.port,
            username=sshd.username,
            client_keys=[str(sshd.client_key_path)],
            known_hosts=str(sshd.known_hosts),
        ) as conn:
            result = await conn.run(SESSION_SHLVL, timeout=30)
    assert result.exit_status == 0, result.stderr
    return str(result.stdout).strip()


async def test_default_sshd_sets_shlvl_so_bash_skips_the_rc_file() -> None:
    assert await session_shlvl(source_rc=False) == "SHLVL=1"


async def test_source_rc_leaves_shlvl_unset() -> None:
    assert await session_shlvl(source_rc=True) == "SHLVL unset"


@pytest.mark.parametrize("login_rc", [False, True])
def test_benchmark_reports_which_mode_it_measured(
    run: object, tmp_path: Path, login_rc: bool
) -> None:
    assert callable(run)
    out_json = tmp_path / "perf.json"
    extra = ["--ssh-login-rc"] if login_rc else []
    result = run(
        SCRIPT, "--smoke", "--nodes", "1", "--executors", "asyncssh,local", "--no-progress",
        "--json", str(out_json), *extra,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = "login ~/.bashrc sourced" if login_rc else "login ~/.bashrc not sourced (SHLVL=1)"
    assert expected in result.stdout
    report = json.loads(out_json.read_text())
    assert report["machine"]["ssh_login_rc"] is login_rc
    assert report["executors"]["asyncssh"]["p50_ms"] > 0
