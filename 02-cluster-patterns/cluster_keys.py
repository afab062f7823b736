"""``--keys DIR``: CURVE on the cluster's ports 5570 and 5571, for all four roles.

The keys directory is the shared layout of curve.py (``curve.py generate DIR --server
coordinator`` makes one that serves every role). Who reads what:

    coordinator   DIR/coordinator.key_secret      its keypair (0600)
                  DIR/authorized_clients/*.key    who may connect (the ZAP allow-list)
    worker, client, monitor
                  DIR/client.key_secret           their keypair (0600)
                  DIR/coordinator.key             the coordinator's public key

Without --keys every role speaks NULL (no encryption, no authentication): fine for the
lessons and for loopback, and the coordinator warns loudly when it binds anything else.
A key file that is missing, unreadable, readable by others or not a CURVE certificate stops
the program at start-up with one line naming the file, and exit code 2.

Try it:
    python 02-cluster-patterns/curve.py generate /tmp/keys --server coordinator
    python 02-cluster-patterns/coordinator.py --keys /tmp/keys
    python 02-cluster-patterns/worker.py --id w1 --keys /tmp/keys
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import zmq

from cluster_patterns.curve import AUTHORIZED_DIR, CLIENT_NAME, KeyFileError, KeyPair, curve_client
from cluster_patterns.curve import fingerprint, load_allowed_keys, load_keypair, load_public

SERVER_NAME: Final = "coordinator"
K = TypeVar("K", "ServerKeys", "ClientKeys")
# Exit code of a role whose key files are unusable (the same as for a bad command line).
KEYS_EXIT: Final = 2


@dataclass(frozen=True)
class ServerKeys:
    """The coordinator's side: its keypair and the raw public keys it admits (-> name)."""

    pair: KeyPair
    allowed: dict[bytes, str]


@dataclass(frozen=True)
class ClientKeys:
    """A worker's, client's or monitor's side: its keypair and the coordinator's public key."""

    pair: KeyPair
    server_public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pair.public)


def add_keys_option(parser: argparse.ArgumentParser, server: bool) -> None:
    if server:
        reads = f"{SERVER_NAME}.key_secret and {AUTHORIZED_DIR}/*.key"
    else:
        reads = f"{CLIENT_NAME}.key_secret and {SERVER_NAME}.key"
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"use CURVE on ports 5570/5571 with the keys in DIR (reads {reads}; make it "
        f"with: curve.py generate DIR --server {SERVER_NAME}); without it: NULL, no encryption",
    )


def load_server_keys(directory: Path) -> ServerKeys:
    pair = load_keypair(directory / f"{SERVER_NAME}.key_secret")
    return ServerKeys(pair, load_allowed_keys(directory / AUTHORIZED_DIR))


def load_client_keys(directory: Path) -> ClientKeys:
    pair = load_keypair(directory / f"{CLIENT_NAME}.key_secret")
    return ClientKeys(pair, load_public(directory / f"{SERVER_NAME}.key"))


def keys_or_exit(load: Callable[[Path], K], directory: Path | None, who: str) -> K | None:
    """``load(directory)``, or None without --keys; one line and exit 2 if a file is unusable.

    ``load`` is load_server_keys (the coordinator) or load_client_keys (everyone else).
    """
    if directory is None:
        return None
    try:
        return load(directory)
    except KeyFileError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        raise SystemExit(KEYS_EXIT) from None


def secure_client(sock: zmq.Socket, keys: ClientKeys | None) -> None:  # type: ignore[type-arg]
    """Make ``sock`` a CURVE client when ``keys`` are given; call before ``connect``."""
    if keys is not None:
        curve_client(sock, keys.server_public, keys.pair)


def refusal_hint(keys: ClientKeys | None) -> str:
    """What a refused peer should check, for its one-line error."""
    if keys is None:
        return "the coordinator uses CURVE: start this one with --keys DIR"
    return (
        f"is this peer's key ({keys.fingerprint}) in the coordinator's {AUTHORIZED_DIR}/, "
        f"and does the coordinator use --keys?"
    )
