"""The cluster descriptor: one TOML file that both the SSH and the ZeroMQ contexts read.

Nothing here binds or connects. ``load_descriptor(path)`` parses and validates the
file and returns a ``ClusterDescriptor``; every mistake is reported as one line
that names the bad field, e.g. ``nodes[2].zmq_port: must be an integer 1-65535``.

    [cluster]
    name = "lab"

    [defaults]                      # copied into every node that does not set the field
    ssh_user = "runner"
    ssh_port = 22
    zmq_port = 5580
    ssh_key = "keys/id_ed25519"     # relative paths are relative to this file
    ssh_known_hosts = "keys/known_hosts"
    curve_keys_dir = "keys/curve"   # agent.key + client.key_secret, from `keys generate`

    [[nodes]]
    id = "gpu-01"
    host = "10.0.0.11"
    leaf = "leaf-a"
    rack = "rack-1"

    [groups]                        # optional: names for zrun -w @NAME (node sets or lists)
    canary = "gpu-[01-02]"

Every node also belongs to the groups named after its leaf and its rack (``@leaf-a``).

Check one:  python 03-cluster-runner-simulation/descriptor.py cluster.toml
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_runner_simulation.nodeset import NodeSetError, expand

NODE_FIELDS = {
    "id",
    "host",
    "zmq_port",
    "ssh_port",
    "ssh_user",
    "ssh_key",
    "ssh_known_hosts",
    "curve_keys_dir",
    "leaf",
    "rack",
}
PATH_FIELDS = ("ssh_key", "ssh_known_hosts", "curve_keys_dir")
DEFAULT_ZMQ_PORT = 5580
DEFAULT_SSH_PORT = 22
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class DescriptorError(ValueError):
    """The descriptor is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class NodeSpec:
    id: str
    host: str
    zmq_port: int = DEFAULT_ZMQ_PORT
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_user: str | None = None
    ssh_key: Path | None = None
    ssh_known_hosts: Path | None = None
    curve_keys_dir: Path | None = None
    leaf: str = "default"
    rack: str = "default"


@dataclass(frozen=True)
class ClusterDescriptor:
    name: str
    nodes: tuple[NodeSpec, ...]
    source: Path | None = None
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # expanded

    def group(self, name: str) -> list[str]:
        """The nodes of group ``name``: a [groups] entry, a leaf or a rack; ``all``: every node.

        ``KeyError`` names the groups there are.
        """
        if name in self.groups:
            return list(self.groups[name])
        members = [n.id for n in self.nodes if name in (n.leaf, n.rack) or name == "all"]
        if not members:
            known = sorted(
                {*self.groups, *(n.leaf for n in self.nodes), *(n.rack for n in self.nodes)}
            )
            raise KeyError(f"no group @{name}; groups: @all, @{', @'.join(known)}")
        return members

    def expand(self, text: str) -> list[str]:
        """The names of node set ``text`` (clush and pdsh syntax), ``@group`` resolved by
        ``group``. ``NodeSetError`` for a bad set or an unknown group; the names themselves
        are not checked (``unknown`` does that)."""

        def members(name: str) -> list[str]:
            try:
                return self.group(name)
            except KeyError as exc:
                raise NodeSetError(str(exc.args[0])) from None

        return expand(text, members)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that are no node of this descriptor, each once, in order."""
        known = set(self.node_ids())
        return [name for name in dict.fromkeys(names) if name not in known]

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"unknown node {node_id!r}; valid nodes: {', '.join(self.node_ids())}")

    def node_ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def select(self, node_ids: Sequence[str]) -> ClusterDescriptor:
        """Only ``node_ids`` (in descriptor order); unknown ids raise ``DescriptorError``."""
        unknown = sorted(set(node_ids) - set(self.node_ids()))
        if unknown:
            raise DescriptorError(
                f"unknown node(s) {', '.join(unknown)}; valid nodes: {', '.join(self.node_ids())}"
            )
        wanted = set(node_ids)
        groups = {
            name: tuple(m for m in members if m in wanted) for name, members in self.groups.items()
        }
        return ClusterDescriptor(
            self.name, tuple(n for n in self.nodes if n.id in wanted), self.source, groups
        )


# --- Validation -------------------------------------------------------------------------------


def _port(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise DescriptorError(f"{where}: must be an integer 1-65535 (got {value!r})")
    return value


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DescriptorError(f"{where}: must be a non-empty string (got {value!r})")
    return value


def _path(where: str, value: object, base: Path, check_files: bool) -> Path:
    path = Path(_text(where, value)).expanduser()
    if not path.is_absolute():
        path = base / path
    if check_files and not path.exists():
        raise DescriptorError(f"{where}: {path} does not exist")
    return path


def _node(
    index: int, raw: object, defaults: Mapping[str, Any], base: Path, check: bool
) -> NodeSpec:
    where = f"nodes[{index}]"
    if not isinstance(raw, dict):
        raise DescriptorError(f"{where}: must be a table ([[nodes]])")
    unknown = sorted(set(raw) - NODE_FIELDS)
    if unknown:
        raise DescriptorError(
            f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(NODE_FIELDS))})"
        )
    merged = {**defaults, **raw}
    for required in ("id", "host"):
        if required not in merged:
            raise DescriptorError(f"{where}.{required}: missing")
    node_id = _text(f"{where}.id", merged["id"])
    if not NODE_ID_PATTERN.match(node_id):
        raise DescriptorError(
            f"{where}.id: {node_id!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    paths = {
        name: _path(f"{where}.{name}", merged[name], base, check)
        for name in PATH_FIELDS
        if name in merged
    }
    return NodeSpec(
        id=node_id,
        host=_text(f"{where}.host", merged["host"]),
        zmq_port=_port(f"{where}.zmq_port", merged.get("zmq_port", DEFAULT_ZMQ_PORT)),
        ssh_port=_port(f"{where}.ssh_port", merged.get("ssh_port", DEFAULT_SSH_PORT)),
        ssh_user=_text(f"{where}.ssh_user", merged["ssh_user"]) if "ssh_user" in merged else None,
        ssh_key=paths.get("ssh_key"),
        ssh_known_hosts=paths.get("ssh_known_hosts"),
        curve_keys_dir=paths.get("curve_keys_dir"),
        leaf=_text(f"{where}.leaf", merged.get("leaf", "default")),
        rack=_text(f"{where}.rack", merged.get("rack", "default")),
    )


def parse_descriptor(
    data: Mapping[str, Any], *, base: Path, source: Path | None = None, check_files: bool = True
) -> ClusterDescriptor:
    unknown = sorted(set(data) - {"cluster", "defaults", "nodes", "groups"})
    if unknown:
        raise DescriptorError(
            f"{unknown[0]}: unknown top-level table (use cluster, defaults, nodes, groups)"
        )
    cluster = data.get("cluster", {})
    if not isinstance(cluster, dict):
        raise DescriptorError("cluster: must be a table")
    name = _text("cluster.name", cluster.get("name", "cluster"))
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise DescriptorError("defaults: must be a table")
    bad_defaults = sorted(set(defaults) - (NODE_FIELDS - {"id"}))
    if bad_defaults:
        raise DescriptorError(f"defaults.{bad_defaults[0]}: not a field that can have a default")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise DescriptorError("nodes: at least one [[nodes]] entry is needed")
    nodes = [_node(i, raw, defaults, base, check_files) for i, raw in enumerate(raw_nodes)]
    seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if node.id in seen:
            raise DescriptorError(
                f"nodes[{index}].id: {node.id!r} is already used by nodes[{seen[node.id]}]"
            )
        seen[node.id] = index
    groups = _groups(data.get("groups", {}), list(seen))
    return ClusterDescriptor(name, tuple(nodes), source, groups)


def _groups(raw: object, node_ids: list[str]) -> dict[str, tuple[str, ...]]:
    """``[groups]``: each name is a node set (``"n[1-4]"``) or a list of them, of known nodes."""
    if not isinstance(raw, dict):
        raise DescriptorError('groups: must be a table of NAME = "node set" or [list]')
    known = set(node_ids)
    groups: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        where = f"groups.{name}"
        if not NODE_ID_PATTERN.match(name):
            raise DescriptorError(f"{where}: a group name is 1-63 letters, digits, '.', '_', '-'")
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) for item in items):
            raise DescriptorError(f"{where}: must be a node set string or a list of them")
        members: dict[str, None] = {}
        for item in items:
            try:
                members.update(dict.fromkeys(expand(item)))
            except NodeSetError as exc:
                raise DescriptorError(f"{where}: {exc}") from None
        unknown = [m for m in members if m not in known]
        if unknown:
            raise DescriptorError(f"{where}: unknown node(s) {', '.join(unknown[:5])}")
        groups[name] = tuple(members)
    return groups


def load_descriptor(path: Path | str, *, check_files: bool = True) -> ClusterDescriptor:
    """Read and validate a TOML descriptor; ``DescriptorError`` names file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DescriptorError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_descriptor(data, base=path.parent, source=path, check_files=check_files)
    except DescriptorError as exc:
        raise DescriptorError(f"{path}: {exc}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_descriptor(descriptor: ClusterDescriptor) -> str:
    """TOML text that ``load_descriptor`` reads back into the same nodes."""
    lines = ["[cluster]", f"name = {_toml_value(descriptor.name)}", ""]
    for node in descriptor.nodes:
        lines.append("[[nodes]]")
        for name in (
            "id",
            "host",
            "zmq_port",
            "ssh_port",
            "ssh_user",
            *PATH_FIELDS,
            "leaf",
            "rack",
        ):
            value = getattr(node, name)
            if value is not None:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    if descriptor.groups:
        lines.append("[groups]")
        for name, members in descriptor.groups.items():
            listed = ", ".join(_toml_value(member) for member in members)
            lines.append(f"{name} = [{listed}]")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # only the checker needs it; the command-line tools start without it

    parser = argparse.ArgumentParser(description="Validate a cluster descriptor (TOML)")
    parser.add_argument("path")
    parser.add_argument("--no-file-check", action="store_true", help="do not check key paths")
    args = parser.parse_args(argv)
    try:
        descriptor = load_descriptor(args.path, check_files=not args.no_file_check)
    except DescriptorError as exc:
        print(f"descriptor: error: {exc}", file=sys.stderr)
        return 1
    for node in descriptor.nodes:
        print(f"{node.id:<16} {node.host}:{node.zmq_port} ssh {node.ssh_port} leaf {node.leaf}")
    print(f"{descriptor.name}: {len(descriptor.nodes)} nodes OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
