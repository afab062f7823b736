"""CURVE keys and the ZAP allow-list, shared by every daemon that can run encrypted.

Nothing here binds or connects a network socket: it reads and writes key files in ZeroMQ's
certificate format (the one ``zmq.auth.load_certificate`` reads), sets the CURVE options on
sockets the caller owns, and answers ZAP requests on ``inproc://zeromq.zap.01``.

A keys directory made by ``generate DIR --server NAME`` holds:

    DIR/NAME.key                        the server's public key   (give it to clients)
    DIR/NAME.key_secret                 the server's secret key   (0600, stays on the server)
    DIR/client.key                      a client's public key
    DIR/client.key_secret               that client's secret key  (0600, stays with the client)
    DIR/authorized_clients/client.key   the allow-list the server's ZAP handler reads

The node agent uses NAME ``agent``, the coordinator ``coordinator``, the journal collector
``agent`` too (it shares the agent's layout).

Ordering pitfalls, all handled by the helpers below:
- the ZAP handler must be bound before the server socket binds, or libzmq admits every
  client without asking anyone (``bind_zap`` first, then ``curve_server``, then ``bind``);
- ``CURVE_SERVER`` and the keys must be set before ``bind``; a client's keys before
  ``connect``.

Run it:
    python 02-cluster-patterns/curve.py generate /tmp/keys --server coordinator
    python 02-cluster-patterns/curve.py authorize /tmp/keys other-client.key
    python 02-cluster-patterns/curve.py fingerprint /tmp/keys/client.key
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import zmq
import zmq.utils.z85

from cluster_patterns.transport import RateLimitedLog, print_to

if TYPE_CHECKING:  # the command-line clients (zrun, zcp, zrsh) start without these
    import argparse

    import zmq.asyncio

CLIENT_NAME: Final = "client"
AUTHORIZED_DIR: Final = "authorized_clients"
SECRET_MODE: Final = 0o600
# Any of these bits on a secret key file means someone else may read it.
FORBIDDEN_SECRET_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_VERSION: Final = b"1.0"
Z85_KEY_CHARS: Final = 40
# How often a ZAP thread looks up from its socket to see whether it should stop.
ZAP_THREAD_POLL_MS: Final = 100


class KeyFileError(Exception):
    """A key file is missing, malformed or readable by others (the message names it)."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def fingerprint(public_z85: bytes) -> str:
    """A short, stable name for a public key, for logs: ``SHA256:`` and 16 hex digits."""
    try:
        raw = zmq.utils.z85.decode(public_z85) if len(public_z85) == Z85_KEY_CHARS else public_z85
    except ValueError:
        raw = public_z85
    import hashlib  # here: clients that only load keys start without OpenSSL's bindings

    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


# --- Key files -------------------------------------------------------------------------------


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ****  Generated on {time.strftime('%Y-%m-%d %H:%M:%S')} by zmq-cluster-learning",
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


def generate_keys(directory: Path, server_name: str) -> None:
    """Create a server and a client keypair, and authorize the client."""
    write_keypair(directory, server_name)
    write_keypair(directory, CLIENT_NAME)
    authorize_client(directory, directory / f"{CLIENT_NAME}.key")


def authorize_client(directory: Path, public_key_file: Path) -> Path:
    """Copy a client's public key into the server's allow-list directory."""
    load_public(public_key_file)  # refuse to authorize a file that is not a public key
    allowed = directory / AUTHORIZED_DIR
    allowed.mkdir(parents=True, exist_ok=True)
    target = allowed / (public_key_file.stem + ".key")
    import shutil  # here: it imports the compression modules, which clients never need

    shutil.copyfile(public_key_file, target)
    return target


def check_secret_permissions(path: Path) -> None:
    """Refuse a secret key file that group or others could read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"secret key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read secret key {path}: {exc.strerror}") from None
    if mode & FORBIDDEN_SECRET_BITS:
        raise KeyFileError(
            f"secret key file {path} has mode {stat.S_IMODE(mode):04o}; "
            f"refusing to use it (run: chmod 600 {path})"
        )


def _load_certificate(path: Path, what: str) -> tuple[bytes | None, bytes | None]:
    import zmq.auth  # here, not at the top: it imports logging, which clients may not need

    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(f"cannot read {what} {path}: {reason}") from None


def load_public(path: Path) -> bytes:
    """The Z85 public key in ``path``, or KeyFileError naming the file."""
    public, _ = _load_certificate(path, "public key")
    if public is None or len(public) != Z85_KEY_CHARS:
        raise KeyFileError(f"{path} holds no valid CURVE public key")
    return public


def load_keypair(path: Path) -> KeyPair:
    """Read ``name.key_secret`` after checking nobody else can read it."""
    check_secret_permissions(path)
    public, secret = _load_certificate(path, "secret key")
    if public is None or secret is None or {len(public), len(secret)} != {Z85_KEY_CHARS}:
        raise KeyFileError(f"{path} holds no valid CURVE keypair")
    return KeyPair(public, secret)


def load_allowed_keys(directory: Path) -> dict[bytes, str]:
    """Every ``*.key`` in the allow-list directory: raw public key -> name (the file's stem).

    One file that cannot be parsed stops the caller (KeyFileError naming it): starting with a
    partial allow-list would print "ready" and then refuse the very client it was meant for.
    """
    if not directory.is_dir():
        raise KeyFileError(f"no client keys in {directory}: nobody could connect")
    allowed: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.key")):
        allowed[zmq.utils.z85.decode(load_public(path))] = path.stem
    if not allowed:
        raise KeyFileError(f"no client keys in {directory}: nobody could connect")
    return allowed


# --- Socket options --------------------------------------------------------------------------


# --8<-- [start:curve-options]
def curve_server(sock: zmq.Socket, pair: KeyPair) -> None:  # type: ignore[type-arg]
    """Make ``sock`` a CURVE server; call before ``bind`` (and after ``bind_zap``)."""
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    # With a domain set, libzmq refuses clients when no ZAP handler answers, instead of
    # admitting everyone: a forgotten handler fails closed.
    sock.setsockopt(zmq.ZAP_DOMAIN, b"global")


def curve_client(
    sock: zmq.Socket, server_public: bytes, client: KeyPair  # type: ignore[type-arg]
) -> None:
    """Make ``sock`` a CURVE client of the server with ``server_public``; before ``connect``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)


# --8<-- [end:curve-options]


# --- ZAP: who may connect ---------------------------------------------------------------------


class ZapPolicy:
    """Answers ZAP requests: admits CURVE clients whose public key is on the allow-list.

    Pure logic, no socket: ``reply(request_frames)`` returns the reply frames. Denials are
    counted and logged (rate-limited) with the peer's address and key fingerprint.
    """

    def __init__(
        self,
        allowed: Mapping[bytes, str],
        who: str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.allowed = dict(allowed)
        self.who = who
        self.admitted = 0
        self.denied = 0
        self._log = RateLimitedLog(log or print_to(None))

    # --8<-- [start:zap-reply]
    def reply(self, frames: Sequence[bytes]) -> list[bytes]:
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            request_id = frames[1] if len(frames) > 1 else b""
            return self._deny(request_id, "?", "", "malformed ZAP request", "500")
        request_id, address, mechanism = frames[1], frames[3], frames[5]
        peer = address.decode("utf-8", "replace")
        if mechanism != b"CURVE" or len(frames) != 7 or len(frames[6]) != 32:
            return self._deny(request_id, peer, "", f"mechanism {mechanism!r} refused", "400")
        client_key = frames[6]
        name = self.allowed.get(client_key)
        if name is None:
            print_key = fingerprint(client_key)
            return self._deny(request_id, peer, print_key, "key not authorized", "400")
        self.admitted += 1
        return [ZAP_VERSION, request_id, b"200", b"OK", name.encode(), b""]

    # --8<-- [end:zap-reply]

    def _deny(self, request_id: bytes, peer: str, key: str, why: str, code: str) -> list[bytes]:
        self.denied += 1
        key_text = f" key {key}" if key else ""
        self._log(f"{self.who}: denied handshake #{self.denied} from {peer}{key_text}: {why}")
        return [ZAP_VERSION, request_id, code.encode(), why.encode(), b"", b""]


# --8<-- [start:zap-socket]
def bind_zap(ctx: zmq.Context) -> zmq.Socket:  # type: ignore[type-arg]
    """The ZAP handler's socket, bound in ``ctx``; bind it before any CURVE server binds."""
    sock: zmq.Socket = ctx.socket(zmq.REP)  # type: ignore[type-arg]
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(ZAP_ENDPOINT)
    return sock


def answer_zap(sock: zmq.Socket, policy: ZapPolicy) -> None:  # type: ignore[type-arg]
    """Answer one waiting ZAP request (for a poll loop that found ``sock`` readable)."""
    sock.send_multipart(policy.reply(sock.recv_multipart()))


async def serve_zap(sock: zmq.asyncio.Socket, policy: ZapPolicy) -> None:
    """Answer ZAP requests forever (an asyncio task; cancel it to stop)."""
    while True:
        frames = await sock.recv_multipart()
        await sock.send_multipart(policy.reply(frames))


# --8<-- [end:zap-socket]


class ZapThread:
    """A ZAP handler on its own thread, for servers whose loop cannot poll the ZAP socket.

    The socket is created, used and closed inside the thread (sockets are not thread-safe).
    """

    def __init__(self, ctx: zmq.Context, policy: ZapPolicy) -> None:  # type: ignore[type-arg]
        self._ctx = ctx
        self.policy = policy
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            sock = bind_zap(self._ctx)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(ZAP_THREAD_POLL_MS):
                    answer_zap(sock, self.policy)
        finally:
            sock.close(linger=0)


def server_policy(keys: Path, who: str, log: Callable[[str], None] | None = None) -> ZapPolicy:
    """The allow-list policy of a server whose keys directory is ``keys``."""
    return ZapPolicy(load_allowed_keys(keys / AUTHORIZED_DIR), who, log)


# --- Command line ----------------------------------------------------------------------------


def build_parser(
    default_server: str = "coordinator", prog: str | None = None
) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Create and manage CURVE key files (ZeroMQ certificate format).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser(
        "generate",
        help="create a server and a client keypair in DIR and authorize the client",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("dir", type=Path, help="keys directory (created if missing)")
    gen.add_argument("--server", default=default_server, help="name of the server keypair")
    auth = sub.add_parser("authorize", help="add a client's public key to DIR's allow-list")
    auth.add_argument("dir", type=Path, help="the server's keys directory")
    auth.add_argument("public_key_file", type=Path, help="the client's NAME.key")
    show = sub.add_parser("fingerprint", help="print the fingerprint that logs show for a key")
    show.add_argument("key_file", type=Path, help="a NAME.key or NAME.key_secret file")
    return parser


def main(argv: list[str] | None = None, default_server: str = "coordinator") -> int:
    args = build_parser(default_server).parse_args(argv)
    try:
        if args.command == "generate":
            generate_keys(args.dir, args.server)
            print(f"wrote {args.server} and {CLIENT_NAME} keypairs to {args.dir} (secrets 0600)")
        elif args.command == "authorize":
            target = authorize_client(args.dir, args.public_key_file)
            print(f"authorized {target}; restart the server to load it")
        else:
            print(fingerprint(load_public(args.key_file)))
    except (KeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
