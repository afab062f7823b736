"""Every shell command the documentation shows is run as a user would run it, or at least parsed.

Scope: fenced ``bash`` and ``console`` blocks in README.md, docs/*.md, integration-plan/*.md and
examples/**/README.md. In a ``console`` block only lines starting with ``$ `` are commands; the
other lines are output and are not checked here.

Marker convention (an HTML comment on the line right before the opening fence; GitHub hides it):

    <!-- doc-test: run -->                       the default when no marker is given
    <!-- doc-test: run timeout=120 -->           same, with a longer per-command bound (seconds)
    <!-- doc-test: parse-only (needs Docker) -->  the reason in brackets is mandatory
    <!-- doc-test: run finally="CMD" -->          CMD runs after the block, pass or fail (cleanup
                                                 of daemons that a command of the block started)

``run``: the block's commands run in order from the repository root, with ``.venv/bin`` first on
PATH (as after ``. .venv/bin/activate``), inside a private network namespace created for the
block (``unshare --net``, loopback only), so the documented default ports (5555, 5570-5572, ...)
are free and nothing collides with a cluster someone else runs on this machine. Without
``unshare`` (not root) the block is skipped, except in CI (``CI`` set), where the machine runs
nothing else and the block runs in the host's network namespace. Each command
must exit 0, unless it ends with ``# exits N`` (a documented failure, e.g. a client without a
server). Long-running commands (servers, workers, monitors, anything ending in ``&``) are started
in the background; the runner waits until they print their ready line (see LONG_RUNNING), and
stops them with SIGINT (then SIGKILL) when the block ends. A background process that dies before
the block ends fails the block.

``parse-only``: for commands that need Docker, real hosts, root on a remote machine or minutes
of runtime. Each command is still checked:
  * ``python SCRIPT ARGS``: the script exists, and its argparse parser accepts ARGS. The script
    is executed with ``ArgumentParser.parse_args`` patched to stop right after a successful parse,
    so nothing else runs (see PARSE_SHIM);
  * ``./SCRIPT.sh SUBCOMMAND ...``: the script exists, is executable, passes ``bash -n``, and
    its usage text lists SUBCOMMAND;
  * ``make TARGET``: ``make -n TARGET`` succeeds;
  * anything else: the program is a well-known tool (KNOWN_TOOLS) or a file in the repository.

Pipelines and ``&&`` chains are split and each part is checked. Line continuations are joined.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = sys.executable

DEFAULT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Long-running commands: a regex on the command line -> a regex its output prints once ready.
LONG_RUNNING: list[tuple[str, str]] = [
    (
        r"01-zmq-basics/(?!labs\.py)\w+\.py"
        r" (server|sink|worker|broker|publisher|subscriber|proxy)\b",
        r"\S",  # lessons print their endpoints once bound/connected: any output means up
    ),
    (r"02-cluster-patterns/reliability/\w+\.py (queue|worker|broker|primary|backup)\b", r"\S"),
    (r"docs/solutions/\w+/\w+\.py (server|broker)\b", r"\S"),
    (r"02-cluster-patterns/(coordinator|worker|monitor)\.py", r"(?i)ready"),
    (r"zmq_node_agent\.py serve", r"(?i)ready"),
    (r"zmq_journal\.py collector", r"(?i)ready|listening on"),
]

# Programs that parse-only blocks may call without further checks (their flags are theirs).
KNOWN_TOOLS = {
    "cat",
    "cd",
    "chmod",
    "cp",
    "curl",
    "docker",
    "docker-compose",
    "git",
    "grep",
    "head",
    "install",
    "journalctl",
    "jq",
    "ls",
    "mkdir",
    "mpiexec",
    "mpirun",
    "mv",
    "prometheus",
    "promtool",
    "rsync",
    "scp",
    "shellcheck",
    "ssh",
    "sudo",
    "systemctl",
    "systemd-analyze",
    "tail",
    "useradd",
    # This repository's console scripts ([project.scripts] in pyproject.toml, in .venv/bin).
    "zcp",
    "zrsh",
    "zrun",
}

DOC_GLOBS = ["README.md", "docs/*.md", "integration-plan/*.md", "examples/**/README.md"]

MARKER_RE = re.compile(r"<!--\s*doc-test:\s*(?P<mode>run|parse-only)(?P<rest>[^>]*)-->")
FENCE_RE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
EXPECT_EXIT_RE = re.compile(r"#\s*exits\s+(?P<code>\d+)\s*$")

# Executed with `python -c PARSE_SHIM SCRIPT ARGS...`: runs SCRIPT as __main__ but stops right
# after argparse accepted ARGS. Exit 0 + the OK line means "the flags parse".
PARSE_SHIM = r"""
import argparse, runpy, sys
_orig = argparse.ArgumentParser.parse_args
_orig_known = argparse.ArgumentParser.parse_known_args
_depth = [0]
def _done():
    print("DOC-TEST-PARSE-OK")
    sys.stdout.flush()
    raise SystemExit(0)
def _parse_then_stop(parse, self, args, namespace):
    _depth[0] += 1
    try:
        parse(self, args, namespace)
    finally:
        _depth[0] -= 1
    _done()
def parse_args(self, args=None, namespace=None):
    _parse_then_stop(_orig, self, args, namespace)
def parse_known_args(self, args=None, namespace=None):
    if _depth[0]:
        return _orig_known(self, args, namespace)
    _parse_then_stop(_orig_known, self, args, namespace)
argparse.ArgumentParser.parse_args = parse_args
argparse.ArgumentParser.parse_known_args = parse_known_args
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
print("DOC-TEST-NO-ARGPARSE: the script finished without calling argparse")
sys.exit(3)
"""


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    mode: str
    reason: str
    timeout: float
    commands: list[str] = field(default_factory=list)
    cleanup: str = ""

    @property
    def ident(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    found: set[Path] = set()
    for pattern in DOC_GLOBS:
        found.update(p for p in REPO.glob(pattern) if ".venv" not in p.parts)
    return sorted(found)


def _join_continuations(lines: list[str]) -> list[str]:
    joined: list[str] = []
    buffer = ""
    for raw in lines:
        line = raw.rstrip()
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    if buffer:
        joined.append(buffer)
    return joined


def _commands_of(lang: str, body: list[str]) -> list[str]:
    if lang == "console":
        body = [line.strip()[2:] for line in body if line.strip().startswith("$ ")]
    commands = []
    for line in _join_continuations(body):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            commands.append(stripped)
    return commands


def parse_blocks(path: Path) -> list[Block]:
    """All bash/console blocks of one markdown file, with their marker."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE_RE.match(lines[index])
        if not fence:
            index += 1
            continue
        lang = fence.group("lang")
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if lang in ("bash", "console", "sh", "shell"):
            marker = MARKER_RE.search(lines[index - 1]) if index > 0 else None
            mode, rest = (marker.group("mode"), marker.group("rest")) if marker else ("run", "")
            reason_match = re.search(r"\((.+)\)", rest)
            timeout_match = re.search(r"timeout=(\d+)", rest)
            finally_match = re.search(r'finally="([^"]+)"', rest)
            block = Block(
                path=path,
                line=index + 1,
                lang=lang,
                mode=mode,
                reason=reason_match.group(1) if reason_match else "",
                timeout=float(timeout_match.group(1)) if timeout_match else DEFAULT_TIMEOUT_S,
                commands=_commands_of(lang, lines[index + 1 : end]),
                cleanup=finally_match.group(1) if finally_match else "",
            )
            blocks.append(block)
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in parse_blocks(path)]


# --- parse-only checks ---------------------------------------------------------------------


def split_simple_commands(command: str) -> list[list[str]]:
    """`a | b && c; d &` -> [[a...], [b...], [c...], [d...]] (argv lists, env prefixes dropped)."""
    command = EXPECT_EXIT_RE.sub("", command)
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("|&;"):
            parts.append([])
        else:
            parts[-1].append(token)
    argvs = []
    for argv in parts:
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv:
            argvs.append(argv)
    return argvs


def _check_python(argv: list[str]) -> str | None:
    if len(argv) >= 3 and argv[1] == "-m":
        module = argv[2]
        result = subprocess.run(
            [PYTHON, "-c", f"import importlib.util as u; assert u.find_spec({module!r})"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        return None if result.returncode == 0 else f"module {module} not importable"
    if len(argv) < 2 or argv[1] == "-c":
        return None
    script = REPO / argv[1]
    if not script.is_file():
        return f"script {argv[1]} does not exist"
    result = subprocess.run(
        [PYTHON, "-c", PARSE_SHIM, str(script), *argv[2:]],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0 or "DOC-TEST-PARSE-OK" not in result.stdout:
        output = result.stdout[-500:] + result.stderr[-1500:]
        return f"argparse rejected {shlex.join(argv[1:])}: {output}"
    return None


def _check_shell_script(argv: list[str]) -> str | None:
    script = REPO / argv[0]
    if not script.is_file():
        return f"script {argv[0]} does not exist"
    if not os.access(script, os.X_OK):
        return f"script {argv[0]} is not executable"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    if syntax.returncode != 0:
        return f"bash -n {argv[0]}: {syntax.stderr}"
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not words:
        return None
    usage = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    text = usage.stdout + usage.stderr
    # Option values (e.g. `-p NAME`) are words too, so one of the words must be a command the
    # usage text lists at the start of a line.
    listed = set(re.findall(r"^\s+([a-z][\w-]*)", text, re.MULTILINE))
    if not listed & set(words):
        return f"{argv[0]} --help lists none of {words} as a command:\n{text}"
    return None


def _check_make(argv: list[str]) -> str | None:
    args = argv[1:]
    if args[:1] == ["-C"]:
        args = args[2:]  # `make -C /opt/checkout target`: check the target in this checkout
    result = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO)
    return None if result.returncode == 0 else f"make -n {args}: {result.stderr}"


def check_parses(argv: list[str]) -> str | None:
    """None when the command would be accepted, else a one-line-ish reason."""
    program = argv[0]
    if program in ("python", "python3") or program.endswith("/python"):
        return _check_python(argv)
    if program == "make":
        return _check_make(argv)
    if program in (".", "source"):
        return None if (REPO / argv[1]).exists() else f"{argv[1]} does not exist"
    if program.endswith(".sh") or program.startswith("./"):
        return _check_shell_script(argv)
    if program == "sudo":
        return check_parses(argv[1:]) if len(argv) > 1 else None
    if program in KNOWN_TOOLS:
        return None
    if (REPO / program).exists():
        return None
    return f"unknown program {program!r} (add it to KNOWN_TOOLS if it is a standard tool)"


# --- running blocks ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(REPO / ".venv")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ready_pattern(command: str) -> str | None:
    for command_re, ready_re in LONG_RUNNING:
        if re.search(command_re, command):
            return ready_re
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def execute_block(
    commands: list[str], timeout: float, logdir: Path, cleanup: str = ""
) -> list[str]:
    """Run the commands in order; return the failures (empty means the block works)."""
    env = _env()
    failures: list[str] = []
    background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for number, command in enumerate(commands):
            if command.split()[0] in (".", "source"):
                continue  # activating the venv: the runner already has .venv/bin on PATH
            expect = EXPECT_EXIT_RE.search(command)
            shell_command = EXPECT_EXIT_RE.sub("", command).strip()
            ready = _ready_pattern(shell_command)
            if shell_command.endswith("&") or ready:
                shell_command = shell_command.rstrip("&").strip()
                log = logdir / f"bg{number}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        ["bash", "-c", f"exec {shell_command}"],
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                background.append((command, proc, log))
                problem = _wait_ready(proc, log, ready or r"(?i)ready")
                if problem:
                    failures.append(f"{command}: {problem}")
                    return failures
                continue
            try:
                result = subprocess.run(
                    ["bash", "-c", shell_command],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired:
                failures.append(f"{command}: did not finish within {timeout} s")
                return failures
            wanted = int(expect.group("code")) if expect else 0
            if result.returncode != wanted:
                failures.append(
                    f"{command}: exit {result.returncode}, wanted {wanted}\n"
                    f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
                )
                return failures
        for command, proc, log in background:
            if proc.poll() is not None:
                failures.append(f"{command}: died during the block:\n{log.read_text()[-2000:]}")
    finally:
        for _command, proc, _log in reversed(background):
            _stop(proc)
        if cleanup:
            subprocess.run(
                ["bash", "-c", cleanup], cwd=REPO, env=env, capture_output=True, timeout=120
            )
    return failures


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, ready: str) -> str | None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(ready, text):
            return None
        if proc.poll() is not None:
            return f"exited {proc.returncode} before printing {ready!r}:\n{text[-2000:]}"
        time.sleep(0.1)
    return f"no {ready!r} within {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-2000:]}"


def _netns_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(
        ["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True
    )
    return probe.returncode == 0


# --- the tests -----------------------------------------------------------------------------

BLOCKS = all_blocks()
RUN_BLOCKS = [b for b in BLOCKS if b.mode == "run" and b.commands]
PARSE_BLOCKS = [b for b in BLOCKS if b.mode == "parse-only" and b.commands]


def test_doc_files_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in doc_files()}
    assert "README.md" in names


# Commands that keep running until Ctrl-C when run in the foreground (not the lessons'
# publishers and subscribers, which end by themselves).
BLOCKING_RE = re.compile(
    r"(01-zmq-basics/(?!labs\.py)\w+\.py (server|sink|worker|broker|proxy)\b"
    r"|02-cluster-patterns/reliability/\w+\.py (queue|worker|broker|primary|backup)\b"
    r"|02-cluster-patterns/(coordinator|worker|monitor)\.py"
    r"|zmq_node_agent\.py serve|zmq_journal\.py collector|docs/solutions/\w+/\w+\.py server)"
)
# Every page follows the terminal rule (issue 12): a command that blocks names its terminal.
TERMINAL_RULE_PAGES = [str(path.relative_to(REPO)) for path in doc_files()]


def terminal_rule_problems(path: Path) -> list[str]:
    """A blocking command needs a `# Terminal N` comment above it in its block, and no
    command may follow it before the next `# Terminal` comment: pasting one terminal's
    lines into one shell must never hang before the last of them."""
    problems = []
    lines = path.read_text().splitlines()
    for block in parse_blocks(path):
        if block.lang not in ("bash", "sh", "shell"):
            continue
        body_start = block.line  # the fence is at block.line (1-based): the body follows
        terminal_seen, blocked_by = False, ""
        for raw in _join_continuations(lines[body_start:]):
            stripped = raw.strip()
            if stripped.startswith("```"):
                break
            if not stripped:
                continue
            if stripped.startswith("#"):
                if "Terminal" in stripped:
                    terminal_seen, blocked_by = True, ""
                continue
            if blocked_by:
                problems.append(
                    f"{block.ident}: `{stripped}` follows `{blocked_by}` in one terminal"
                )
            if BLOCKING_RE.search(stripped) and not stripped.rstrip().endswith("&"):
                if not terminal_seen:
                    problems.append(f"{block.ident}: `{stripped}` blocks, but no `# Terminal N`")
                blocked_by = stripped
    return problems


@pytest.mark.parametrize("page", TERMINAL_RULE_PAGES)
def test_blocking_commands_are_marked_with_their_terminal(page: str) -> None:
    problems = terminal_rule_problems(REPO / page)
    assert not problems, "\n".join(problems)


def test_parse_only_blocks_give_a_reason() -> None:
    missing = [b.ident for b in BLOCKS if b.mode == "parse-only" and not b.reason]
    assert not missing, f"parse-only blocks need a reason in brackets: {missing}"


@pytest.mark.parametrize("block", PARSE_BLOCKS, ids=[b.ident for b in PARSE_BLOCKS])
def test_parse_only_block(block: Block) -> None:
    problems = []
    for command in block.commands:
        for argv in split_simple_commands(command):
            problem = check_parses(argv)
            if problem:
                problems.append(f"{command}\n  -> {problem}")
    assert not problems, f"{block.ident}:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.ident for b in RUN_BLOCKS])
def test_run_block(block: Block, tmp_path: Path) -> None:
    # Every runnable command must at least parse; that gives clearer errors than a failed run.
    for command in block.commands:
        for argv in split_simple_commands(command):
            problem = check_parses(argv)
            assert problem is None, f"{block.ident}: {command}\n  -> {problem}"
    spec = tmp_path / "block.json"
    spec.write_text(
        json.dumps(
            {
                "commands": block.commands,
                "timeout": block.timeout,
                "logdir": str(tmp_path),
                "cleanup": block.cleanup,
            }
        )
    )
    if _netns_available():
        argv = ["unshare", "--net", "--", PYTHON, __file__, "--execute", str(spec)]
    elif os.environ.get("CI"):
        # A CI machine runs nothing else, so the documented fixed ports are free there.
        argv = [PYTHON, __file__, "--execute-here", str(spec)]
    else:
        pytest.skip("needs `unshare --net` (root) to run documented fixed ports in isolation")
    overall = block.timeout * (len(block.commands) + 1) + READY_TIMEOUT_S * 2
    result = subprocess.run(argv, capture_output=True, text=True, timeout=overall, cwd=REPO)
    assert result.returncode == 0, f"{block.ident}:\n{result.stdout}\n{result.stderr}"


def _main_execute(spec_path: str, private_netns: bool = True) -> int:
    """Entry point inside the private network namespace: bring up loopback, run one block."""
    if private_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    spec = json.loads(Path(spec_path).read_text())
    failures = execute_block(
        spec["commands"], float(spec["timeout"]), Path(spec["logdir"]), spec["cleanup"]
    )
    for failure in failures:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--execute", "--execute-here"):
        sys.exit(_main_execute(sys.argv[2], private_netns=sys.argv[1] == "--execute"))
    if len(sys.argv) >= 3 and sys.argv[1] == "--parse":
        # `--parse python SCRIPT ARGS...`: the parse-only check on one command (other tests use
        # it for command lines that live outside markdown, e.g. systemd units).
        reason = check_parses(sys.argv[2:])
        print(reason or "parses")
        sys.exit(1 if reason else 0)
    print(f"usage: {sys.argv[0]} --execute BLOCK.json | --parse ARGV...", file=sys.stderr)
    sys.exit(2)
