"""The TOML cluster descriptor: a full example loads; every mistake names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.descriptor import (
    ClusterDescriptor,
    DescriptorError,
    load_descriptor,
    render_descriptor,
)

FULL = """
[cluster]
name = "lab"

[defaults]
ssh_user = "runner"
ssh_port = 2222
zmq_port = 5580
ssh_key = "keys/id_ed25519"
curve_keys_dir = "keys/curve"

[[nodes]]
id = "gpu-01"
host = "10.0.0.11"
leaf = "leaf-a"
rack = "rack-1"

[[nodes]]
id = "gpu-02"
host = "10.0.0.12"
zmq_port = 5590
leaf = "leaf-b"
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    (tmp_path / "keys" / "curve").mkdir(parents=True)
    (tmp_path / "keys" / "id_ed25519").write_text("key")
    return tmp_path


def write(base: Path, text: str) -> Path:
    path = base / "cluster.toml"
    path.write_text(text)
    return path


def test_full_example_loads_with_defaults_and_relative_paths(keys: Path) -> None:
    descriptor = load_descriptor(write(keys, FULL))
    assert descriptor.name == "lab" and descriptor.node_ids() == ["gpu-01", "gpu-02"]
    first, second = descriptor.nodes
    assert (first.ssh_user, first.ssh_port, first.zmq_port) == ("runner", 2222, 5580)
    assert second.zmq_port == 5590 and second.rack == "default"
    assert first.ssh_key == keys / "keys" / "id_ed25519"
    assert first.curve_keys_dir == keys / "keys" / "curve"


def test_render_round_trips(keys: Path) -> None:
    descriptor = load_descriptor(write(keys, FULL))
    again = write(keys / "keys", render_descriptor(descriptor))
    assert load_descriptor(again).nodes == descriptor.nodes


def test_unknown_node_names_the_valid_ones(keys: Path) -> None:
    descriptor = load_descriptor(write(keys, FULL))
    with pytest.raises(KeyError, match="valid nodes: gpu-01, gpu-02"):
        descriptor.node("gpu-09")
    with pytest.raises(DescriptorError, match="unknown node.*gpu-09"):
        descriptor.select(["gpu-01", "gpu-09"])
    assert descriptor.select(["gpu-02"]).node_ids() == ["gpu-02"]


NODE = 'id = "n{i}"\nhost = "127.0.0.1"\n'


def nodes(count: int, extra: str = "", at: int = -1) -> str:
    out = ""
    for i in range(count):
        out += "[[nodes]]\n" + NODE.format(i=i) + (extra + "\n" if i == at % count else "")
    return out


@pytest.mark.parametrize(
    "text, message",
    [
        (nodes(3, "zmq_port = 70000", at=2), "nodes[2].zmq_port: must be an integer 1-65535"),
        (nodes(3, 'ssh_port = "22"', at=1), "nodes[1].ssh_port: must be an integer 1-65535"),
        (nodes(2, "zmq_port = true", at=0), "nodes[0].zmq_port: must be an integer 1-65535"),
        (nodes(2, 'hots = "x"', at=1), "nodes[1].hots: unknown field"),
        (nodes(2, 'leaf = ""', at=1), "nodes[1].leaf: must be a non-empty string"),
        (nodes(2, 'ssh_key = "missing"', at=0), "nodes[0].ssh_key: *missing does not exist"),
        ('[[nodes]]\nid = "a"\n', "nodes[0].host: missing"),
        ('[[nodes]]\nid = "a b"\nhost = "h"\n', "nodes[0].id: 'a b' must be"),
        (nodes(2) + '[[nodes]]\nid = "n0"\nhost = "h"\n', "nodes[2].id: 'n0' is already used"),
        ("[cluster]\nname = 'x'\n", "nodes: at least one"),
        ("[defaults]\nid = 'x'\n" + nodes(1), "defaults.id: not a field"),
        ("[extra]\n" + nodes(1), "extra: unknown top-level table"),
        ("nodes = [1]\n", "nodes[0]: must be a table"),
        ("[[nodes]\n", "not valid TOML"),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DescriptorError) as info:
        load_descriptor(write(tmp_path, text))
    for fragment in message.split("*"):  # "*" separates literal fragments
        assert fragment in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "cluster.toml"))
    assert "\n" not in str(info.value)


def test_cli_reports_ok_and_errors(tmp_path: Path, keys: Path, run: Any) -> None:
    script = "03-cluster-runner-simulation/descriptor.py"
    good = run(script, str(write(keys, FULL)))
    assert good.returncode == 0 and "lab: 2 nodes OK" in good.stdout
    bad = run(script, str(write(tmp_path, nodes(3, "zmq_port = 0", at=2))))
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("nodes[2].zmq_port: must be an integer 1-65535 (got 0)")
    missing = run(script, str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_descriptor_is_frozen(keys: Path) -> None:
    descriptor: ClusterDescriptor = load_descriptor(write(keys, FULL))
    with pytest.raises(AttributeError):
        descriptor.nodes[0].host = "elsewhere"  # type: ignore[misc]
