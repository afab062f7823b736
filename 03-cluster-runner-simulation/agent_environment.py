"""The environment the agent's commands start in: an env file, a command shell, a workdir.

Nothing here binds or connects. Over SSH a test ran in the SSH user's shell, with what sshd,
PAM and the shell's rc files gave it (PATH, modules, conda, limits) and in $HOME. The agent
runs ``/bin/sh -c COMMAND`` with its own environment and working directory. Three options of
``zmq_node_agent.py serve`` close the gap, and ``env_parity.py`` shows what is left:

  --env-file FILE       every command starts with exactly the variables in FILE (plus the
                        request's own ``env``): the agent replaces its environment with the
                        file's at start-up, as systemd's ``EnvironmentFile=`` with an empty
                        unit environment would. ``env_parity.py --write-env-file`` writes one
                        from what SSH gave a node.
  --command-shell ARGV  run every command as ``ARGV... COMMAND`` instead of ``/bin/sh -c``:
                        ``'/bin/bash -l -c'`` sources /etc/profile and ~/.bash_profile
                        (modules, conda) for every command, which costs its time per command.
  --workdir DIR         start commands in DIR (SSH started them in $HOME).

Env file format: one ``NAME=VALUE`` per line; blank lines and lines starting with ``#`` are
skipped; ``export NAME=VALUE`` is accepted; a value in double quotes may use ``\\"``, ``\\\\``
and ``\\n``, one in single quotes is taken as it is. No expansion, no command substitution:
the file is data, never run.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cluster_runner_simulation.agent_protocol import ENV_NAME
from cluster_runner_simulation.agent_spawn import AGENT_ENV

MAX_ENV_FILE_BYTES: Final = 1 << 20
MAX_ENV_FILE_ENTRIES: Final = 4096
BLANKS: Final = " \t\r"  # around a line (\r: a file with CRLF line ends)
_UNESCAPE: Final = {'"': '"', "\\": "\\", "n": "\n"}


class EnvFileError(ValueError):
    """The env file is unreadable or malformed; the message names the file and the line."""


def _unquote(raw: str, where: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if not raw.startswith('"'):
        if raw[-1:] in {'"', "'"} or raw[:1] == "'":
            raise EnvFileError(f"{where}: unbalanced quotes")
        return raw
    if len(raw) < 2 or not raw.endswith('"'):
        raise EnvFileError(f"{where}: a double-quoted value must end with a double quote")
    body, out, index = raw[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1 : index + 2]
            if escaped not in _UNESCAPE:
                raise EnvFileError(f'{where}: unknown escape \\{escaped} (use \\", \\\\ or \\n)')
            out.append(_UNESCAPE[escaped])
            index += 2
            continue
        if char == '"':
            raise EnvFileError(f'{where}: a double quote inside the value must be written \\"')
        out.append(char)
        index += 1
    return "".join(out)


def parse_env_file(text: str, source: str = "env file") -> dict[str, str]:
    """The variables of an env file's text; ``EnvFileError`` names the bad line."""
    variables: dict[str, str] = {}
    # Lines end at \n only (str.splitlines would also cut at \x1e, \x85, \u2028...).
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{source}:{number}"
        stripped = line.strip(BLANKS)
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip(BLANKS)
        name, equals, raw = stripped.partition("=")
        if not equals:
            raise EnvFileError(f"{where}: expected NAME=VALUE")
        if not ENV_NAME.match(name):
            raise EnvFileError(f"{where}: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        value = _unquote(raw, where)
        if "\0" in value:
            raise EnvFileError(f"{where}: a value cannot hold a NUL byte")
        variables[name] = value
        if len(variables) > MAX_ENV_FILE_ENTRIES:
            raise EnvFileError(f"{where}: more than {MAX_ENV_FILE_ENTRIES} variables")
    return variables


def load_env_file(path: Path) -> dict[str, str]:
    try:
        size = path.stat().st_size
        if size > MAX_ENV_FILE_BYTES:
            raise EnvFileError(f"{path}: {size} bytes, over the {MAX_ENV_FILE_BYTES}-byte limit")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise EnvFileError(f"{path}: not UTF-8 (byte {exc.start})") from None
    return parse_env_file(text, str(path))


def render_env_file(variables: Mapping[str, str], header: str = "") -> str:
    """Env file text that ``parse_env_file`` reads back into ``variables``."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name in sorted(variables):
        value = variables[name]
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name")
        quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'{name}="{quoted}"')
    return "\n".join(lines) + "\n"


def parse_command_shell(text: str) -> tuple[str, ...]:
    """``--command-shell``'s argv, checked: an absolute, executable program first."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"--command-shell {text!r}: {exc}") from None
    if not argv:
        raise ValueError("--command-shell needs a program, such as '/bin/bash -l -c'")
    program = Path(argv[0])
    if not program.is_absolute():
        raise ValueError(f"--command-shell: {argv[0]!r} must be an absolute path")
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise ValueError(f"--command-shell: {argv[0]} is not an executable file")
    return argv


def wrap_command(shell: Sequence[str], command: str) -> str:
    """The /bin/sh command that hands ``command`` to ``shell`` as its last argument."""
    return f"exec {shlex.join(shell)} {shlex.quote(command)}"


def apply_process_environment(variables: Mapping[str, str] | None, workdir: Path | None) -> None:
    """Make this process's environment (and cwd) the one every command inherits."""
    if variables is not None:
        os.environ.clear()
        os.environ.update(variables)
        # The spawner's copy of the environment, read once at import (agent_spawn.py).
        AGENT_ENV.clear()
        AGENT_ENV.update(variables)
    if workdir is not None:
        os.chdir(workdir)
