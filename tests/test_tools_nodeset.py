"""Node sets as clush and pdsh users write them (nodeset.py), and the descriptor's [groups]."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_runner_simulation.descriptor import DescriptorError, load_descriptor
from cluster_runner_simulation.nodeset import MAX_NODES, NodeSetError, expand, fold


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("node[0-3]", ["node0", "node1", "node2", "node3"]),
        ("node[00-02]", ["node00", "node01", "node02"]),
        ("node[1,3,5-6]", ["node1", "node3", "node5", "node6"]),
        ("rack[1-2]-gpu[0-1]", ["rack1-gpu0", "rack1-gpu1", "rack2-gpu0", "rack2-gpu1"]),
        ("a, b ,node[7-8]", ["a", "b", "node7", "node8"]),
        ("n1,n1,n[1-2]", ["n1", "n2"]),
        ("gpu-01.lab", ["gpu-01.lab"]),
    ],
)
def test_expand(text: str, names: list[str]) -> None:
    assert expand(text) == names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty node set"),
        ("node[5-2]", "range 5-2 goes down"),
        ("node[", "'[' without ']'"),
        ("node]", "']' without '['"),
        ("node[[1]]", "brackets inside brackets"),
        ("node[]", "empty brackets"),
        ("node[a-b]", "'a-b' is not a number"),
        ("node[1-]", "'1-' is not a number"),
        ("a,,b", "empty item between commas"),
        ("nöde", "is not a node name"),
        ("node x", "is not a node name"),
        (f"node[0-{MAX_NODES}]", "more than"),
        ("a[0-999]b[0-999]", "more than"),
        ("@gpu", "groups need a descriptor"),
    ],
)
def test_bad_node_sets_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(NodeSetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        expand(text)


def test_groups_are_resolved_by_the_caller() -> None:
    groups = {"leaf-a": ["n1", "n3"]}
    assert expand("@leaf-a,n2", lambda name: groups[name]) == ["n1", "n3", "n2"]


def test_fold() -> None:
    names = ["node3", "node1", "node2", "node7", "login", "gpu01", "gpu02", "gpu10"]
    assert fold(names) == "login,gpu[01-02,10],node[1-3,7]"
    assert fold(["gpu01", "gpu7"]) == "gpu7,gpu01"  # two widths: two series
    assert fold(["node5"]) == "node5"
    assert fold([]) == ""


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1), st.sampled_from(["n", "x-"]))
def test_fold_then_expand_gives_the_names_back(numbers: set[int], prefix: str) -> None:
    names = [f"{prefix}{n}" for n in numbers]
    assert sorted(expand(fold(names))) == sorted(names)


def descriptor_with_groups(tmp_path: Path, groups: str) -> Path:
    path = tmp_path / "cluster.toml"
    nodes = "".join(
        f'[[nodes]]\nid = "n{i}"\nhost = "127.0.0.1"\nleaf = "leaf-{i % 2}"\n\n' for i in range(4)
    )
    path.write_text(nodes + groups)
    return path


def test_descriptor_groups_leaves_racks_and_all(tmp_path: Path) -> None:
    path = descriptor_with_groups(tmp_path, '[groups]\ncanary = "n[0-1]"\nodd = ["n1", "n3"]\n')
    descriptor = load_descriptor(path, check_files=False)
    assert descriptor.group("canary") == ["n0", "n1"]
    assert descriptor.group("odd") == ["n1", "n3"]
    assert descriptor.group("leaf-0") == ["n0", "n2"]
    assert descriptor.group("all") == ["n0", "n1", "n2", "n3"]
    with pytest.raises(KeyError, match="no group @gpu; groups: @all, @canary"):
        descriptor.group("gpu")


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ('[groups]\nbad = "n[0-9]"\n', "groups.bad: unknown node"),
        ('[groups]\nbad = "n[9-0]"\n', "groups.bad: n\\[9-0\\]: range 9-0 goes down"),
        ("[groups]\nbad = 3\n", "groups.bad: must be a node set"),
        ("groups = 3\n", "groups: must be a table"),
    ],
)
def test_bad_descriptor_groups_name_the_field(tmp_path: Path, groups: str, message: str) -> None:
    top_level = groups.startswith("groups =")  # before the first [[nodes]] table
    path = descriptor_with_groups(tmp_path, "" if top_level else groups)
    if top_level:
        path.write_text(groups + path.read_text())
    with pytest.raises(DescriptorError, match=message):
        load_descriptor(path, check_files=False)
