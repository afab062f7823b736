"""Environment parity: env_parity.py against a real sshd and real agents, and the agent's
--env-file, --workdir and --command-shell that close the gaps it finds."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_runner_simulation.agent_environment import (
    EnvFileError,
    load_env_file,
    parse_command_shell,
    parse_env_file,
    render_env_file,
    wrap_command,
)
from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.env_parity import Probe, compare, parse_probe
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    sshd_unavailable_reason,
    write_local_descriptor,
)
from cluster_runner_simulation.zmq_node_agent import SetupError, build_parser, config_from

SCRIPT = "03-cluster-runner-simulation/env_parity.py"
HOME = pwd.getpwuid(os.getuid()).pw_dir  # where sshd starts a session, whatever $HOME says


# --- The env file ----------------------------------------------------------------------------


def test_an_env_file_reads_like_systemd_s_without_any_expansion() -> None:
    text = (
        "# modules and conda, captured from a login\n"
        "\n"
        "PATH=/opt/cuda/bin:/usr/bin:/bin\n"
        "export CUDA_HOME=/opt/cuda\n"
        'GREETING="say \\"hi\\"\\nto all"\n'
        "RAW='$HOME stays $HOME'\n"
        "EMPTY=\n"
    )
    assert parse_env_file(text) == {
        "PATH": "/opt/cuda/bin:/usr/bin:/bin",
        "CUDA_HOME": "/opt/cuda",
        "GREETING": 'say "hi"\nto all',
        "RAW": "$HOME stays $HOME",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    "line, problem",
    [
        ("JUST_A_NAME", "2: expected NAME=VALUE"),
        ("1BAD=x", "2: '1BAD' is not a variable name"),
        ("A-B=x", "2: 'A-B' is not a variable name"),
        ('Q="open', "2: a double-quoted value must end"),
        ("Q='open", "2: unbalanced quotes"),
        ('Q="a\\tb"', "2: unknown escape \\\\t"),
        ('Q="a"b"', "2: a double quote inside the value"),
    ],
)
def test_a_bad_line_is_named(line: str, problem: str) -> None:
    with pytest.raises(EnvFileError, match=f"node.env:{problem}"):
        parse_env_file(f"OK=1\n{line}\n", "node.env")


@given(
    st.dictionaries(
        st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"),
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")),
        max_size=8,
    )
)
def test_render_and_parse_round_trip(variables: dict[str, str]) -> None:
    assert parse_env_file(render_env_file(variables, "a header\nof two lines")) == variables


def test_an_unreadable_or_huge_env_file_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match="cannot read"):
        load_env_file(tmp_path / "missing.env")
    big = tmp_path / "big.env"
    big.write_bytes(b"A=" + b"x" * (1 << 20) + b"\n")
    with pytest.raises(EnvFileError, match="over the 1048576-byte limit"):
        load_env_file(big)
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nnot a line\n")
    args = build_parser().parse_args(["serve", "--insecure", "--env-file", str(bad)])
    with pytest.raises(SetupError, match="bad.env:2: expected NAME=VALUE"):
        config_from(args)


def test_the_command_shell_and_workdir_flags_are_checked(tmp_path: Path) -> None:
    def problem(*flags: str) -> str:
        with pytest.raises(SetupError) as caught:
            config_from(build_parser().parse_args(["serve", "--insecure", *flags]))
        return str(caught.value)

    assert "must be an absolute path" in problem("--command-shell", "bash -l -c")
    assert "not an executable file" in problem("--command-shell", "/nonexistent/bash -c")
    assert "needs a program" in problem("--command-shell", "")
    assert "not a directory" in problem("--workdir", str(tmp_path / "nope"))
    config = config_from(
        build_parser().parse_args(["serve", "--insecure", "--command-shell", "/bin/sh -e -c"])
    )
    assert config.command_shell == ("/bin/sh", "-e", "-c")
    assert parse_command_shell("/bin/sh -c") == ("/bin/sh", "-c")


async def test_a_wrapped_command_reaches_the_shell_unchanged() -> None:
    command = "printf '%s|' \"$0\" 'it''s' \"a  b\"; echo $((6 * 7))"
    wrapped = wrap_command(("/bin/sh", "-c"), command)
    proc = await asyncio.create_subprocess_shell(wrapped, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    plain = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE)
    expected, _ = await plain.communicate()
    assert out == expected and out.endswith(b"its|a  b|42\n")


# --- The comparison --------------------------------------------------------------------------


def test_differences_are_named_one_per_line() -> None:
    ssh = Probe(
        {"PATH": "/usr/local/bin:/usr/bin", "USER": "runner", "SSH_CONNECTION": "x"},
        {"cwd": "/home/runner", "gpus": "GPU 0: A100"},
    )
    zmq = Probe(
        {"PATH": "/usr/bin:/opt/bin", "LANG": "C.UTF-8", "USER": "runner"},
        {"cwd": "/", "gpus": "GPU 0: A100"},
    )
    found = compare(ssh, zmq, {"SSH_CONNECTION"})
    assert found == [
        "env LANG: only under zmq ('C.UTF-8')",
        "env PATH: missing under zmq ['/usr/local/bin'], only under zmq ['/opt/bin']",
        "cwd: ssh has ['/home/runner']; zmq has ['/']",
    ]
    assert compare(ssh, ssh, set()) == []


def test_the_probe_output_is_cut_into_sections() -> None:
    stdout = "\n@@zmq-parity@@ env\nA=1\0B=two\nlines\0\n@@zmq-parity@@ cwd\n/tmp\n"
    probe = parse_probe(stdout)
    assert probe.env == {"A": "1", "B": "two\nlines"} and probe.sections == {"cwd": "/tmp"}


# --- For real: an sshd and agents on loopback --------------------------------------------------


@pytest.fixture
def sshd() -> Any:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(f"env parity needs sshd: {reason}")
    with LocalSshd() as server:
        yield server


def test_parity_finds_the_gaps_and_the_env_file_closes_them(
    sshd: LocalSshd, tmp_path: Path, run: Any
) -> None:
    env_file = tmp_path / "node.env"
    with LocalAgents(1) as agents:
        descriptor = write_local_descriptor(sshd, agents, tmp_path / "before.toml")
        before = run(SCRIPT, "--descriptor", str(descriptor), "--write-env-file", str(env_file))
    assert before.returncode == 1, before.stdout + before.stderr
    # The agents inherit this test's environment and directory; sshd gives its own.
    assert f"cwd: ssh has ['{HOME}']" in before.stdout
    assert "env NODE_ID: only under zmq ('node0')" in before.stdout
    assert "SSH_CONNECTION" not in before.stdout  # a transport's own variable, ignored
    captured = load_env_file(env_file)
    assert captured["HOME"] == HOME and "SSH_CONNECTION" not in captured and "PATH" in captured
    fixed_flags = ["--env-file", str(env_file), "--workdir", HOME]
    with LocalAgents(1, extra_args=fixed_flags) as agents:
        descriptor = write_local_descriptor(sshd, agents, tmp_path / "after.toml")
        after = run(SCRIPT, "--descriptor", str(descriptor), "--json", str(tmp_path / "p.json"))
    assert after.returncode == 0, after.stdout + after.stderr
    assert after.stdout.strip() == "node0: same environment over ssh and zmq"
    assert '"gpus"' in (tmp_path / "p.json").read_text()


async def test_the_command_shell_runs_every_command(tmp_path: Path) -> None:
    with LocalAgents(1, extra_args=["--command-shell", "/bin/bash -c"]) as agents:
        executor = agents.executor(0)
        try:
            shell = await executor.run('readlink /proc/$$/exe; echo "$BASH_VERSION" | cut -c1')
            quoted = await executor.run("printf '<%s>' 'a b' \"$((1 + 1))\"")
        finally:
            await executor.close()
    lines = shell.stdout_text.splitlines()
    assert lines[0].endswith("bash") and lines[1].isdigit()
    assert quoted.stdout_text == "<a b><2>"


def test_unreachable_nodes_and_bad_arguments(tmp_path: Path, run: Any, free_port: Any) -> None:
    keys = tmp_path / "keys"
    text = f'[[nodes]]\nid = "gone"\nhost = "127.0.0.1"\nssh_port = {free_port()}\n'
    text += f'zmq_port = {free_port()}\ncurve_keys_dir = "{keys}"\n'
    (tmp_path / "c.toml").write_text(text)
    keys.mkdir()
    no_keys = run(SCRIPT, "--descriptor", str(tmp_path / "c.toml"), timeout=60)
    assert no_keys.returncode == 2 and "env_parity: error:" in no_keys.stderr
    generate_keys(keys)
    gone = run(SCRIPT, "--descriptor", str(tmp_path / "c.toml"), timeout=60)
    assert gone.returncode == 3 and "gone: UNREACHABLE NodeUnreachable" in gone.stdout
    assert run(SCRIPT, "--local", "0").returncode == 2
    bad_tools = run(SCRIPT, "--local", "1", "--tools", "rm -rf")
    assert bad_tools.returncode == 2 and "--tools" in bad_tools.stderr
    no_descriptor = run(SCRIPT, "--descriptor", str(tmp_path / "nope.toml"))
    assert no_descriptor.returncode == 2 and "cannot read" in no_descriptor.stderr
