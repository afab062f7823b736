"""AsyncSSHExecutor: the SSH baseline, shaped like cluster_runner's NodeExecutorSSH.

Connects with asyncssh to one node's sshd (port 22, or the test harness's private
port): ONE persistent connection per node, a new session channel per command.
This is what the ZeroMQ executor has to beat.

Every command runs as
    exec /bin/sh -c 'echo $$ >&2; [cd DIR;] [export K=V;] exec /bin/sh -c CMD'
OpenSSH's sshd starts each session's shell with setsid(), so that shell (and,
through the execs, the command) leads its own process group; it reports the
group's id on the first stderr line, which is stripped before the caller sees
stderr. (A bare ``setsid -w`` wrapper would fork again and turn a signal
death into exit status 137, so it is not used.) On a timeout or a
cancellation a second channel runs ``kill -KILL -- -PGID``: the whole group
dies and nothing is left orphaned. ``system_facts`` ships node_facts.py to the
node and runs it with the node's python3: the same code the ZeroMQ agent answers
``facts`` with, so both transports report the same facts. ``stream`` reads the channel's
stdout and stderr as they come and writes stdin to it (asyncssh's flow control: the
channel window), with the same wrapper and the same kill.

Try it:
    python 03-cluster-runner-simulation/ssh_executor.py HOST [PORT] [USER]   # --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncssh

from cluster_patterns.cli_args import port_number
from cluster_runner_simulation import node_facts
from cluster_runner_simulation.agent_protocol import (
    ENV_NAME,
    ProtocolError,
    decode_facts,
    system_config_from_facts,
)
from cluster_runner_simulation.protocols import (
    ClosedOnExit,
    Env,
    CommandExit,
    CommandResult,
    CommandTimeout,
    ExecutorError,
    NodeExecutorProtocol,
    NodeUnreachable,
    OutputChunk,
    OutputStream,
    Stdin,
    StreamEvent,
    SystemConfiguration,
)

CONNECT_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
FACTS_TIMEOUT_S = 30.0
SSH_PORT = 22
READ_BYTES = 256 * 1024  # one streamed read of a channel's stdout or stderr


def wrap_command(command: str, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The remote command line: own process group, pgid on stderr's first line, env, cwd."""
    inner = ['echo "$$" >&2']
    if cwd is not None:
        inner.append(f"cd -- {shlex.quote(cwd)} || exit 1")
    for name, value in (env or {}).items():
        if not ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        inner.append(f"export {name}={shlex.quote(value)}")
    inner.append(f"exec /bin/sh -c {shlex.quote(command)}")
    # exec keeps the pid of the session leader that sshd made for this channel.
    return f"exec /bin/sh -c {shlex.quote('; '.join(inner))}"


def _signal_name(exit_signal: Any) -> str | None:
    if not exit_signal:
        return None
    return str(exit_signal[0]) if isinstance(exit_signal, tuple) else str(exit_signal)


class AsyncSSHExecutor(ClosedOnExit):
    """Runs commands on one node over a persistent asyncssh connection."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int = SSH_PORT,
        *,
        username: str | None = None,
        client_keys: list[str] | None = None,
        known_hosts: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """``known_hosts=None`` uses ~/.ssh/known_hosts, as asyncssh does by default."""
        self._node_id = node_id
        self.host = host
        self.port = port
        self.username = username
        self.client_keys = client_keys
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def node_id(self) -> str:
        return self._node_id

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._closed:
            raise NodeUnreachable(self._node_id, "executor is closed")
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        # Only what was given: asyncssh treats known_hosts=None as "do not check".
        given = {
            "username": self.username,
            "known_hosts": self.known_hosts,
            "client_keys": self.client_keys,
        }
        options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        where = f"ssh://{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncssh.connect(self.host, self.port, **options)
        except TimeoutError:
            raise NodeUnreachable(
                self._node_id, f"{where}: no connection within {self.connect_timeout}s"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise NodeUnreachable(self._node_id, f"{where}: {exc}") from None

    async def _open_process(
        self, line: str, stdin: bool = False
    ) -> asyncssh.SSHClientProcess[bytes]:
        """A new channel; one reconnect if the persistent connection has died."""
        source = asyncssh.PIPE if stdin else asyncssh.DEVNULL
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await conn.create_process(line, encoding=None, stdin=source)
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
                self._conn = None
                if attempt == 2:
                    raise NodeUnreachable(self._node_id, f"connection lost: {exc}") from None
            except asyncssh.ChannelOpenError as exc:
                raise NodeUnreachable(self._node_id, f"sshd refused a channel: {exc}") from None
        raise AssertionError("unreachable")

    async def _open_uncancellable(
        self, line: str, stdin: bool = False
    ) -> asyncssh.SSHClientProcess[bytes]:
        """Open the channel even if cancelled meanwhile: once the exec request is out the
        command may be running, and only a finished open tells us its process group."""
        opening = asyncio.ensure_future(self._open_process(line, stdin))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                proc = await asyncio.wait_for(opening, KILL_TIMEOUT_S)
                await self._kill_group(proc, None)
            raise

    async def run(
        self, command: str, *, timeout: float | None = None, env: Env = None, cwd: str | None = None
    ) -> CommandResult:
        proc = await self._open_uncancellable(wrap_command(command, env, cwd))
        pgid: int | None = None
        try:
            async with asyncio.timeout(timeout):
                pgid = await _read_pgid(proc)
                done = await proc.wait()
        except TimeoutError:
            await self._kill_group(proc, pgid)
            raise CommandTimeout(
                self._node_id, f"{command!r} ran longer than {timeout}s; process group killed"
            ) from None
        except asyncio.CancelledError:
            await self._kill_group(proc, pgid)
            raise
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError) as exc:
            # Same as the ZeroMQ executor: the node is gone; the command may have run.
            self._conn = None
            raise NodeUnreachable(
                self._node_id, f"connection lost while {command!r} ran: {exc}"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            self._conn = None
            raise ExecutorError(self._node_id, f"{command!r}: {exc}") from None
        stdout = done.stdout if isinstance(done.stdout, bytes) else b""
        stderr = done.stderr if isinstance(done.stderr, bytes) else b""
        return CommandResult(
            command=command,
            exit_status=done.exit_status if done.exit_status != -1 else None,
            stdout=stdout,
            stderr=stderr,
            exit_signal=_signal_name(done.exit_signal),
        )

    async def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Env = None,
        cwd: str | None = None,
        stdin: Stdin = None,
    ) -> AsyncIterator[StreamEvent]:
        proc = await self._open_uncancellable(wrap_command(command, env, cwd), stdin is not None)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        events: asyncio.Queue[OutputChunk | BaseException | None] = asyncio.Queue()
        helpers: list[asyncio.Task[None]] = []
        pgid: int | None = None
        finished = False
        try:
            async with asyncio.timeout_at(deadline):
                pgid = await _read_pgid(proc)
            helpers = [
                asyncio.create_task(_pump(proc.stdout, OutputStream.STDOUT, events)),
                asyncio.create_task(_pump(proc.stderr, OutputStream.STDERR, events)),
            ]
            if stdin is not None:
                helpers.append(asyncio.create_task(_feed(proc, stdin, events)))
            open_streams = 2
            while open_streams:
                async with asyncio.timeout_at(deadline):
                    item = await events.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
            async with asyncio.timeout_at(deadline):
                done = await proc.wait()
            finished = True
            status = done.exit_status if done.exit_status != -1 else None
            yield CommandExit(status, _signal_name(done.exit_signal))
        except TimeoutError:
            raise CommandTimeout(
                self._node_id, f"{command!r} ran longer than {timeout}s; process group killed"
            ) from None
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError) as exc:
            self._conn = None
            raise NodeUnreachable(
                self._node_id, f"connection lost while {command!r} ran: {exc}"
            ) from None
        finally:
            for helper in helpers:
                helper.cancel()
            if not finished:  # a timeout, an error, or the caller left: kill the whole group
                await asyncio.shield(self._kill_group(proc, pgid))
            proc.close()

    async def _kill_group(self, proc: asyncssh.SSHClientProcess[bytes], pgid: int | None) -> None:
        """Kill the remote process group through a second channel, then drop the first."""
        if pgid is None:
            # Cancelled before the wrapper reported its group: it is about to.
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError, ValueError):
                async with asyncio.timeout(KILL_TIMEOUT_S):
                    pgid = await _read_pgid(proc)
        if pgid is not None and self._conn is not None:
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                async with asyncio.timeout(KILL_TIMEOUT_S):
                    await self._conn.run(f"kill -KILL -- -{pgid}", check=False)
        proc.close()

    async def system_facts(self) -> SystemConfiguration:
        command = node_facts.remote_command(self._node_id)
        result = await self.run(command, timeout=FACTS_TIMEOUT_S)
        if not result.ok:
            raise ExecutorError(self._node_id, f"node_facts.py failed: {result.stderr_text[-300:]}")
        try:
            return system_config_from_facts(decode_facts(result.stdout), self._node_id)
        except ProtocolError as exc:
            raise ExecutorError(self._node_id, f"node_facts.py printed garbage: {exc}") from None

    async def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(asyncssh.Error, OSError):
                await self._conn.wait_closed()
            self._conn = None


async def _read_pgid(proc: asyncssh.SSHClientProcess[bytes]) -> int | None:
    """The remote process group that wrap_command's wrapper reports on stderr's first line."""
    first = await proc.stderr.readline()
    return int(first) if first.strip().isdigit() else None


async def _pump(
    reader: asyncssh.SSHReader[bytes],
    stream: OutputStream,
    events: asyncio.Queue[OutputChunk | BaseException | None],
) -> None:
    """Move one channel stream's bytes into ``events`` as they come; None at its end."""
    try:
        while chunk := await reader.read(READ_BYTES):
            events.put_nowait(OutputChunk(stream, chunk))
    except (asyncssh.Error, OSError) as exc:
        events.put_nowait(exc)
    events.put_nowait(None)


async def _feed(
    proc: asyncssh.SSHClientProcess[bytes],
    source: Stdin,
    events: asyncio.Queue[OutputChunk | BaseException | None],
) -> None:
    """Write ``source`` to the channel (asyncssh waits for the window), then EOF.

    The source's own failure ends the stream (it is raised there); the channel's does not:
    a command that closed its stdin just does not read the rest, as with a pipe, and a
    lost connection is reported by the stream's readers.
    """
    chunks = _chunks_of(source)
    while True:
        try:
            chunk = await anext(chunks, None)
        except Exception as exc:  # the caller's stdin failed: the stream raises it
            events.put_nowait(exc)
            return
        try:
            if chunk is None:
                await proc.stdin.drain()
                proc.stdin.write_eof()
                return
            proc.stdin.write(chunk)
            await proc.stdin.drain()
        except (BrokenPipeError, asyncssh.Error, OSError):
            return


async def _chunks_of(source: Stdin) -> AsyncIterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif source is not None:
        async for chunk in source:
            yield chunk


def _satisfies_protocol(executor: AsyncSSHExecutor) -> NodeExecutorProtocol:
    """Never called: mypy proves here that AsyncSSHExecutor is a NodeExecutorProtocol."""
    return executor


async def _demo(host: str, port: int, user: str | None) -> None:
    async with AsyncSSHExecutor(host, host, port, username=user) as executor:
        print(await executor.system_facts())
        print(await executor.run("uname -a"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="print a node's facts and `uname -a`, over SSH (asyncssh)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("host", help="the node's address (its key must be in known_hosts)")
    parser.add_argument("port", nargs="?", type=port_number, default=SSH_PORT, help="sshd port")
    parser.add_argument("user", nargs="?", default=None, help="login name; None: yours")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_demo(args.host, args.port, args.user))
    except ExecutorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
