"""DropChain against real iptables, in a network namespace made for the test (never the host).

Swarm's partition and the no-netem `flaky` both rely on it; their end-to-end tests need a
Docker engine, this one only root and iproute2. Off CI, a machine without either skips it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from cluster_simulator.drop_chain import DropChain
from cluster_simulator.output import SimError

CHAIN = "ZSIM_TEST"


@pytest.fixture
def namespace() -> Iterator[list[str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.skip("needs root, iproute2 and iptables (a network namespace of its own)")
    name = f"zsim-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def rules(enter: list[str]) -> list[str]:
    listing = subprocess.run([*enter, "iptables", "-S"], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    return [line for line in listing.stdout.splitlines() if CHAIN in line]


def test_install_hooks_one_chain_into_input_and_output(namespace: list[str]) -> None:
    chain = DropChain(CHAIN, namespace, "flaky", interface="lo")
    chain.install("-m", "statistic", "--mode", "random", "--probability", "0.2500")
    installed = rules(namespace)
    assert f"-N {CHAIN}" in installed
    assert f"-A INPUT -i lo -j {CHAIN}" in installed
    assert f"-A OUTPUT -o lo -j {CHAIN}" in installed
    assert any("--probability 0.25" in rule and rule.endswith("-j DROP") for rule in installed)
    chain.install()  # again: replaced, not doubled
    assert len(rules(namespace)) == 4 and not any("statistic" in r for r in rules(namespace))
    chain.remove()
    assert rules(namespace) == []
    chain.remove()  # nothing left to remove: still fine


def test_a_namespace_that_is_gone_is_a_clear_error() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    chain = DropChain(CHAIN, ["ip", "netns", "exec", "zsim-no-such-namespace"], "partition")
    with pytest.raises(SimError, match="partition: `iptables-restore --noflush` failed"):
        chain.install()
