"""Node sets as ClusterShell and pdsh users write them: ``node[0-63]``, lists, @groups.

Nothing here binds or connects. ``expand`` turns a node set into names, ``fold`` turns
names back into the shortest node set, for output such as ``node[0-61,63]: exit 0``:

    node[0-3]            node0 node1 node2 node3
    node[00-02]          node00 node01 node02   (zero-padding kept)
    node[1,3,5-6]        node1 node3 node5 node6
    rack[1-2]-gpu[0-1]   rack1-gpu0 rack1-gpu1 rack2-gpu0 rack2-gpu1
    a,b,node[7-8]        a b node7 node8
    @leaf-a              the nodes of a group (the caller resolves group names)

Every mistake is a ``NodeSetError`` that quotes the part at fault (``node[5-2]: range 5-2
goes down``); a set may expand to at most MAX_NODES names, so a typo such as
``node[0-99999999]`` is refused instead of filling memory.

Try it:
    python 03-cluster-runner-simulation/nodeset.py 'node[0-3,7],gpu[00-01]'
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Final

MAX_NODES: Final = 100_000
_NUMBER: Final = re.compile(r"^(.*?)(\d+)(\D*)$")  # the last run of digits in a name
_NAME_CHARS: Final = re.compile(r"^[A-Za-z0-9._@:-]+$")

GroupResolver = Callable[[str], Sequence[str]]


class NodeSetError(ValueError):
    """A node set that cannot be read, or one that names too many nodes."""


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets; brackets must balance."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise NodeSetError(f"{text}: brackets inside brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeSetError(f"{text}: ']' without '['")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise NodeSetError(f"{text}: '[' without ']'")
    parts.append(text[start:])
    return parts


def _range_values(item: str, ranges: str) -> list[str]:
    """``0-3,7`` (zero-padding kept) as the strings it stands for."""
    if not ranges:
        raise NodeSetError(f"{item}: empty brackets")
    values: list[str] = []
    for part in ranges.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or not part.isascii():
            raise NodeSetError(f"{item}: {part!r} is not a number or a range N-M")
        if not dash:
            values.append(low)
            continue
        first, last = int(low), int(high)
        if last < first:
            raise NodeSetError(f"{item}: range {part} goes down")
        if last - first >= MAX_NODES:
            raise NodeSetError(f"{item}: range {part} names more than {MAX_NODES} nodes")
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        values.extend(str(n).zfill(width) for n in range(first, last + 1))
    return values


def _expand_item(item: str) -> list[str]:
    names = [""]
    rest = item
    while rest:
        opening = rest.find("[")
        if opening < 0:
            names = [name + rest for name in names]
            break
        closing = rest.index("]", opening)
        head, ranges, rest = rest[:opening], rest[opening + 1 : closing], rest[closing + 1 :]
        values = _range_values(item, ranges)
        if len(names) * len(values) > MAX_NODES:
            raise NodeSetError(f"{item}: names more than {MAX_NODES} nodes")
        names = [name + head + value for name in names for value in values]
    for name in names:
        if not _NAME_CHARS.match(name):
            raise NodeSetError(f"{item}: {name!r} is not a node name")
    return names


def expand(text: str, groups: GroupResolver | None = None) -> list[str]:
    """The names in node set ``text``, in order, each once."""
    text = text.strip()
    if not text:
        raise NodeSetError("an empty node set")
    names: dict[str, None] = {}  # ordered, no repeats
    for item in _split_top_level(text):
        item = item.strip()
        if not item:
            raise NodeSetError(f"{text}: an empty item between commas")
        if item.startswith("@"):
            if groups is None:
                raise NodeSetError(f"{item}: groups need a descriptor")
            found = groups(item[1:])
        else:
            found = _expand_item(item)
        names.update(dict.fromkeys(found))
        if len(names) > MAX_NODES:
            raise NodeSetError(f"{text}: names more than {MAX_NODES} nodes")
    return list(names)


def fold(names: Iterable[str]) -> str:
    """The shortest node set of ``names``: ``node[0-3,7],login``; sorted, numbers numerically."""
    split: list[tuple[str, str, str]] = []
    plain: list[str] = []
    for name in dict.fromkeys(names):
        match = _NUMBER.match(name)
        if match is None:
            plain.append(name)
        else:
            split.append((match.group(1), match.group(2), match.group(3)))
    # Zero-padded numbers set a width (gpu01: 2); gpu10 has that width too, gpu7 does not.
    padded = {(h, t, len(d)) for h, d, t in split if d.startswith("0") and len(d) > 1}
    series: dict[tuple[str, str, int], list[int]] = {}
    for head, digits, tail in split:
        width = len(digits) if (head, tail, len(digits)) in padded else 0
        series.setdefault((head, tail, width), []).append(int(digits))
    parts = sorted(plain)
    for (head, tail, width), numbers in sorted(series.items()):
        numbers.sort()
        if len(numbers) == 1:
            parts.append(f"{head}{str(numbers[0]).zfill(width)}{tail}")
            continue
        spans, start, previous = [], numbers[0], numbers[0]
        for number in [*numbers[1:], None]:
            if number is not None and number == previous + 1:
                previous = number
                continue
            low, high = str(start).zfill(width), str(previous).zfill(width)
            spans.append(low if start == previous else f"{low}-{high}")
            if number is not None:
                start = previous = number
        parts.append(f"{head}[{','.join(spans)}]{tail}")
    return ",".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: nodeset.py NODESET   (prints its names, then the set folded again)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        names = expand(args[0])
    except NodeSetError as exc:
        print(f"nodeset: error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(names))
    print(fold(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
