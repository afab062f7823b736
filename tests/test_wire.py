"""The shared message layer (cluster_patterns.wire): whatever the bytes, only WireError escapes."""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Union

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec import Meta

from cluster_patterns.wire import (
    MAX_SAFE_INTEGER,
    Count,
    Id,
    JsonCodec,
    Number,
    Record,
    WireError,
    describe,
)


class SampleError(WireError):
    pass


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(Record):
    item_id: Id
    size: Count = 0


class Base(msgspec.Struct, tag_field="type", kw_only=True):
    v: Literal[1] = 1


class Paint(Base, tag="PAINT"):
    colour: Colour
    items: Annotated[list[Item], Meta(max_length=4)]
    weight: Number = 0.0


class Ping(Base, tag="PING"):
    pass


CODEC: JsonCodec[Union[Paint, Ping]] = JsonCodec(Union[Paint, Ping], SampleError, 4096)


def test_round_trip_keeps_enums_and_version() -> None:
    message = Paint(colour=Colour.BLUE, items=[Item("a", 3)], weight=2.5)
    frame = CODEC.encode(message)
    assert b'"v":1' in frame and b'"type":"PAINT"' in frame and b'"colour":"blue"' in frame
    assert CODEC.decode(frame) == message


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b'{"type":"PAINT","colour":"green","items":[]}', "$.colour"),
        (
            b'{"type":"PAINT","colour":"red","items":[{"item_id":"a","size":' + b"9" * 400 + b"}]}",
            "$.items[0].size",
        ),
        (b'{"type":"PAINT","colour":"red","items":[],"weight":1e999}', "$.weight"),
        (b'{"type":"PAINT","colour":"red","items":[],"weight":true}', "$.weight"),
        (b'{"type":"PAINT","colour":"red","items":[],"weight":NaN}', "not a JSON document"),
        (b'{"type":"PING","v":2}', "unsupported protocol version"),
        (b'{"type":"NOPE"}', "$.type"),
        (b'{"type":"PAINT","colour":"red","items":[{"item_id":"\\ud800"}]}', "not a JSON"),
        (b'{"type":"PAINT","colour":"red","items":[{"item_id":"\xed\xa0\x80"}]}', "not a JSON"),
        (b'{"type":"PING","junk":' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
        (b'{"type":"PING","junk":"\xbc\xff"}', "not UTF-8 at byte 23"),  # a skipped field
        (b'{"type":"PING","\xed\xa0\x80":1}', "not UTF-8 at byte 16"),
        (b"\xff\xfe", "not a JSON document"),
        (b"[1]", "Expected `object`"),
        (b"x" * 5000, "exceeds 4096"),
        (b'{"type":"PAINT","colour":"red","items":[{},{},{},{},{}]}', "$.items"),
    ],
)
def test_bad_frames_name_what_is_wrong(frame: bytes, says: str) -> None:
    with pytest.raises(SampleError, match=says.replace("$", r"\$").replace("[", r"\[")):
        CODEC.decode(frame)


def test_integers_stop_at_the_json_safe_limit() -> None:
    ok = b'{"type":"PAINT","colour":"red","items":[{"item_id":"a","size":%d}]}'
    assert CODEC.decode(ok % MAX_SAFE_INTEGER)
    with pytest.raises(SampleError, match="size"):
        CODEC.decode(ok % (MAX_SAFE_INTEGER + 1))


def test_encode_refuses_an_oversized_frame() -> None:
    with pytest.raises(SampleError, match="over the 4096 limit"):
        CODEC.encode(Paint(colour=Colour.RED, items=[Item("x" * 128)] * 40))


def test_describe_is_short() -> None:
    assert describe(b"a" * 500).endswith("...")


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_the_protocol_error(frame: bytes) -> None:
    try:
        CODEC.decode(frame)
    except SampleError:
        pass


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from(["type", "v", "colour", "items", "weight"]), _JSON))
def test_random_objects_raise_only_the_protocol_error(body: dict[str, object]) -> None:
    try:
        frame = msgspec.json.encode(body)
    except (OverflowError, TypeError, ValueError):
        return
    try:
        CODEC.decode(frame)
    except SampleError:
        pass
