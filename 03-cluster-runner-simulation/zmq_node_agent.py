"""The ZeroMQ node agent: a daemon on every node that runs commands for cluster_runner.

Binds a ROUTER on tcp://BIND:PORT (default port 5580, cluster_patterns.defaults; 5570-5572
belong to the cluster patterns). Clients (``zmq_node_executor.py``, a DEALER; zrun, zcp and
zrsh) send ``run``, ``cancel``, ``facts``, ``ping``, ``credit``, ``data`` (a run's stdin, a
put's contents), ``put`` and ``get``; the agent answers with ``accepted`` (for runs still
silent after 50 ms), streamed ``output`` chunks, one ``exit``, ``data_credit``,
``file_data``, ``file_end``, ``facts_reply``, ``pong``, ``heartbeat`` (every second while a
client has commands or transfers in flight) and ``error``. ``put`` and ``get`` work only
below ``--files-root``. Wire spec: docs/agent-protocol.md.

This file is the process: it turns the command line into an ``AgentConfig``, makes the
sockets, sets up security and signals, and hands the ROUTER to ``NodeAgent``
(agent_service.py), which handles the requests.

Security is on by default: CURVE encryption, and a ZAP handler (cluster_patterns.curve)
that admits only the client public keys in KEYS/authorized_clients/, bound before the
ROUTER, and logs denied handshakes (rate-limited) with the peer's address and key
fingerprint. A key file there that cannot be parsed stops the agent at start-up.

Run it:
    python 03-cluster-runner-simulation/zmq_node_agent.py keys generate /tmp/agent-keys
    python 03-cluster-runner-simulation/zmq_node_agent.py serve --node-id n1 \\
        --bind 127.0.0.1 --port 5580 --keys /tmp/agent-keys --files-root /tmp
    # lessons only, no encryption, loopback only:
    python 03-cluster-runner-simulation/zmq_node_agent.py serve --insecure --port 5580
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.asyncio

from cluster_patterns.cli_args import bind_port, positive_float, positive_int
from cluster_patterns.curve import ZapPolicy, bind_zap, curve_server, serve_zap, server_policy
from cluster_patterns.transport import configure, endpoint
from cluster_runner_simulation.agent_environment import (
    apply_process_environment,
    load_env_file,
    parse_command_shell,
)
from cluster_runner_simulation.agent_files import TRANSFER_IDLE_S
from cluster_runner_simulation.agent_keys import (
    AGENT_NAME,
    KeyFileError,
    authorize_client,
    generate_keys,
    load_keypair,
)
from cluster_runner_simulation.agent_protocol import DEFAULT_PORT, MAX_REQUEST_BYTES
from cluster_runner_simulation.agent_service import DEFAULT_CONCURRENCY, AgentConfig, NodeAgent

ZMTP_HEARTBEAT_MS: Final = 2000  # TCP-level liveness, so dead clients are noticed
RCVHWM_MESSAGES: Final = 100  # requests buffered per connection before libzmq stops reading it

log = logging.getLogger("zmq_node_agent")


class SetupError(Exception):
    """Bad configuration: reported on one line, exit status 2."""


# --8<-- [start:router]
def make_router(ctx: zmq.asyncio.Context) -> zmq.Socket[bytes]:
    # A bounded ROUTER queue would silently drop output chunks (SNDHWM 0 is unbounded);
    # each connection's credit window (agent_flow.py) bounds what is queued instead.
    # A plain socket: NodeAgent reads it from an add_reader callback (agent_service.py).
    sock: zmq.Socket[bytes] = configure(
        zmq.Socket(ctx, zmq.ROUTER),
        max_message_bytes=MAX_REQUEST_BYTES,
        linger_ms=0,
        sndhwm=0,
        rcvhwm=RCVHWM_MESSAGES,
    )
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * 3)
    return sock


# --8<-- [end:router]


# --8<-- [start:secure-router]
def secure_router(
    ctx: zmq.asyncio.Context, sock: zmq.Socket[bytes], keys: Path
) -> tuple[zmq.asyncio.Socket, ZapPolicy]:
    """The ZAP handler's socket and policy, and CURVE server keys on ``sock``.

    Call before bind(): libzmq asks the ZAP handler only if it was bound first.
    One unparsable key in KEYS/authorized_clients/ stops the agent (KeyFileError names it).
    """
    policy = server_policy(keys, "agent", log.warning)
    pair = load_keypair(keys / f"{AGENT_NAME}.key_secret")
    zap = bind_zap(ctx)
    assert isinstance(zap, zmq.asyncio.Socket)
    curve_server(sock, pair)
    return zap, policy


# --8<-- [end:secure-router]


def bind(sock: zmq.Socket[bytes], host: str, port: int) -> int:
    address = endpoint(host, port)
    if not port:
        address = address.rsplit(":", 1)[0] + ":*"  # the kernel picks a free port
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise SetupError(f"cannot bind {address}: {exc}") from None
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(last.rsplit(":", 1)[1])


def warn_insecure(host: str) -> None:
    banner = "!" * 72
    print(
        f"{banner}\n!! INSECURE MODE: no encryption, no authentication, for lessons only.\n"
        f"!! Anyone who can reach {host} can run any command as this user.\n{banner}",
        file=sys.stderr,
        flush=True,
    )


async def serve(config: AgentConfig) -> int:
    """Set up and serve until cancelled; run it under run_until_signalled()."""
    ctx = zmq.asyncio.Context()
    sock = make_router(ctx)
    zap: zmq.asyncio.Socket | None = None
    zap_task: asyncio.Task[None] | None = None
    try:
        # --8<-- [start:serve-setup]
        if config.insecure or config.keys is None:
            warn_insecure(config.host)
        else:
            zap, policy = secure_router(ctx, sock, config.keys)
            zap_task = asyncio.create_task(serve_zap(zap, policy))
        port = bind(sock, config.host, config.port)
        agent = NodeAgent(config, sock)
        asyncio.get_running_loop().set_exception_handler(agent.loop_error)
        mode = "INSECURE" if config.insecure else "curve"
        ready = endpoint(config.host, port)
        print(f"agent {config.node_id} ready on {ready} ({mode})", flush=True)
        # --8<-- [end:serve-setup]
        try:
            await agent.serve()
        finally:
            log.info(
                "stopped (bad messages: %d, dropped requests: %d, internal errors: %d)",
                agent.bad_messages,
                agent.dropped_requests,
                agent.internal_errors,
            )
    finally:
        if zap_task is not None:
            zap_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await zap_task
        if zap is not None:
            zap.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    return 0


async def run_until_signalled(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work`` until SIGINT or SIGTERM, then cancel it so it cleans up; 0 if signalled.

    The handlers are in place before ``work`` takes its first step, so a signal that
    arrives while it sets up or prints its ready line still ends it cleanly.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        description="ZeroMQ node agent for cluster_runner", formatter_class=formatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the agent", formatter_class=formatter)
    srv.add_argument("--node-id", default=socket.gethostname(), help="name in pong and facts")
    srv.add_argument(
        "--bind", default=None, help="address to bind; None: 0.0.0.0, or 127.0.0.1 with --insecure"
    )
    srv.add_argument("--port", type=bind_port, default=DEFAULT_PORT, help="0 picks a free port")
    srv.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="keys directory from 'keys generate' (required unless --insecure)",
    )
    srv.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="commands run at once; later ones queue (their timeout counts the wait)",
    )
    srv.add_argument(
        "--files-root",
        type=Path,
        default=None,
        help="put/get (zcp) only below this directory; None: file transfer off",
    )
    srv.add_argument(
        "--transfer-idle-s",
        type=positive_float,
        default=TRANSFER_IDLE_S,
        help="a put that gets no data this long is cut (its temporary file removed)",
    )
    env = srv.add_argument_group("the commands' environment (agent_environment.py)")
    env.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="commands start with exactly the NAME=VALUE variables of this file; None: the "
        "agent's own environment (env_parity.py --write-env-file makes one from SSH's)",
    )
    env.add_argument(
        "--command-shell",
        default=None,
        help="run commands as 'ARGV... COMMAND', e.g. '/bin/bash -l -c' for a login shell's "
        "profile (modules, conda); None: /bin/sh -c",
    )
    env.add_argument(
        "--workdir", type=Path, default=None, help="commands start here; None: the agent's cwd"
    )
    srv.add_argument("--insecure", action="store_true", help="NO encryption; loopback; lessons")
    srv.add_argument("--verbose", action="store_true", help="debug logging, with tracebacks")
    keys = sub.add_parser("keys", help="manage CURVE keys", formatter_class=formatter)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser(
        "generate", help="create agent and client keypairs in DIR", formatter_class=formatter
    )
    gen.add_argument("dir", type=Path, help="keys directory (created if missing)")
    auth = keys_sub.add_parser(
        "authorize", help="allow a client public key", formatter_class=formatter
    )
    auth.add_argument("dir", type=Path, help="the agent's keys directory")
    auth.add_argument("public_key_file", type=Path, help="the client's NAME.key")
    return parser


def config_from(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration from ``serve``'s flags; SetupError says what is wrong."""
    try:
        if args.workdir is not None and not args.workdir.is_dir():
            raise ValueError(f"--workdir {args.workdir}: not a directory")
        return AgentConfig(
            node_id=args.node_id,
            bind=args.bind,
            port=args.port,
            keys=None if args.insecure or args.keys is None else args.keys.resolve(),
            concurrency=args.concurrency,
            files_root=None if args.files_root is None else args.files_root.resolve(),
            transfer_idle_s=args.transfer_idle_s,
            insecure=args.insecure,
            verbose=args.verbose,
            command_env=None if args.env_file is None else load_env_file(args.env_file),
            command_shell=(
                None if args.command_shell is None else parse_command_shell(args.command_shell)
            ),
            workdir=None if args.workdir is None else args.workdir.resolve(),
        )
    except ValueError as exc:  # EnvFileError included
        raise SetupError(str(exc)) from None


def keys_command(args: argparse.Namespace) -> int:
    try:
        if args.keys_command == "generate":
            generate_keys(args.dir)
            print(f"wrote agent and client keypairs to {args.dir} (secret files 0600)")
        else:
            target = authorize_client(args.dir, args.public_key_file)
            print(f"authorized {target}; restart the agent to load it")
    except OSError as exc:
        raise SetupError(f"{exc.filename or args.dir}: {exc.strerror or exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s agent %(levelname)s %(message)s")
    try:
        if args.command == "keys":
            return keys_command(args)
        config = config_from(args)
        apply_process_environment(config.command_env, config.workdir)
        return asyncio.run(run_until_signalled(serve(config)))
    except (SetupError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
