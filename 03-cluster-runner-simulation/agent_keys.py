"""CURVE key files of the ZeroMQ node agent (and of the journal collector, which shares them).

The key files, their format and the ZAP allow-list are the cluster's shared ones
(``cluster_patterns.curve``); this module only names the agent's layout:

    DIR/agent.key                       the agent's public key   (give it to clients)
    DIR/agent.key_secret                the agent's secret key   (0600, stays on the node)
    DIR/client.key                      the client's public key
    DIR/client.key_secret               the client's secret key  (0600, stays with cluster_runner)
    DIR/authorized_clients/client.key   the allow-list the agent's ZAP handler reads

Run it (``zmq_node_agent.py keys ...`` does the same):
    python 03-cluster-runner-simulation/agent_keys.py generate /tmp/agent-keys
    python 03-cluster-runner-simulation/agent_keys.py authorize /tmp/agent-keys other.key
    python 03-cluster-runner-simulation/agent_keys.py fingerprint /tmp/agent-keys/client.key
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from cluster_patterns import curve
from cluster_patterns.curve import (
    AUTHORIZED_DIR,
    CLIENT_NAME,
    KeyFileError,
    KeyPair,
    authorize_client,
    check_secret_permissions,
    load_keypair,
    load_public,
    write_keypair,
)

AGENT_NAME: Final = "agent"

__all__ = [
    "AGENT_NAME",
    "AUTHORIZED_DIR",
    "CLIENT_NAME",
    "KeyFileError",
    "KeyPair",
    "authorize_client",
    "check_secret_permissions",
    "client_keys",
    "generate_keys",
    "load_keypair",
    "load_public",
    "write_keypair",
]


def client_keys(directory: Path) -> tuple[bytes, KeyPair]:
    """What a client of the agent needs from DIR: the agent's public key and its own keypair
    (KeyFileError if either is missing or malformed)."""
    return (
        load_public(directory / f"{AGENT_NAME}.key"),
        load_keypair(directory / f"{CLIENT_NAME}.key_secret"),
    )


def generate_keys(directory: Path) -> None:
    """Create the agent's and a client's keypairs in ``directory`` and authorize the client."""
    curve.generate_keys(directory, AGENT_NAME)


def main(argv: list[str] | None = None) -> int:
    return curve.main(argv, default_server=AGENT_NAME)


if __name__ == "__main__":
    sys.exit(main())
