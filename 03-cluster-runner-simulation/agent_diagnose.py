"""Why an agent header could not be parsed at all: the slow path of agent_protocol's codec.

Nothing here binds or connects, and nothing here runs for a valid message: msgspec parses
those. Only when msgspec refuses the bytes outright (not JSON, not UTF-8, NaN, a lone
surrogate, a 5,000-digit integer, deep nesting) does the codec ask ``diagnose`` for a reason
that names the field, by parsing the header a second time with the standard library, which
reads what strict JSON refuses and so can say where it is. The standard library's json is
imported only then, so the command-line clients (zrun, zcp, zrsh) start without it.

Try it:
    python -c "from cluster_runner_simulation.agent_diagnose import diagnose; \\
print(diagnose(b'{\\"id\\": \\"a\\", \\"timeout\\": NaN}', 128))"
"""

from __future__ import annotations

from typing import Any, Final

NESTING_CHECKED: Final = 100  # deeper than this, msgspec said "nested too deeply" already


class _OutOfRange:
    """What the lenient parser makes of an integer too long for any field (not converted:
    that would cost time quadratic in its length)."""


def _parse_int(text: str) -> int | _OutOfRange:
    return int(text) if len(text) <= 20 else _OutOfRange()


def _lenient_decoder() -> Any:
    import json  # only on this error path

    return json.JSONDecoder(parse_int=_parse_int, parse_constant=float)


def diagnose(header: bytes, max_id_chars: int) -> tuple[str, str]:
    """(reason, request id or "") for a header msgspec could not parse."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        return "header is not valid UTF-8", ""
    try:
        parsed = _lenient_decoder().decode(text)
    except RecursionError:
        return "header is nested too deeply", ""
    except ValueError:
        return "header is not JSON", ""
    if not isinstance(parsed, dict):
        return "header is not a JSON object", ""
    raw_id = parsed.get("id")
    request_id = ""
    if isinstance(raw_id, str) and len(raw_id) <= max_id_chars and not flaw(raw_id):
        request_id = raw_id
    for key, value in parsed.items():
        if found := flaw(key) or flaw(value):
            name = ascii(key)[1:-1] if flaw(key) else key
            return f"field {name!r}: {found}", request_id
    return "header is not standard JSON", request_id


def flaw(value: object, depth: int = 0) -> str | None:
    """What strict JSON refuses in ``value``, all the way down, or None."""
    if isinstance(value, str):
        if not value.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return "not valid Unicode (lone surrogate)"
        return None
    if isinstance(value, float):
        return None if value - value == 0.0 else "not a finite number"  # NaN, infinities
    if isinstance(value, _OutOfRange):
        return "integer out of range"
    if depth > NESTING_CHECKED:
        return None  # msgspec would have said "nested too deeply"; not this field's fault
    if isinstance(value, dict):
        items: list[object] = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((found for item in items if (found := flaw(item, depth + 1))), None)


def shown_type(header: bytes) -> str:
    """The header's ``type``, quoted and cut short, for an error message; "?" if unreadable."""
    try:
        return ascii(_lenient_decoder().decode(header.decode("utf-8")).get("type", ""))[:42]
    except (ValueError, RecursionError, AttributeError):
        return "?"
