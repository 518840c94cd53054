"""JSON text for the connection path: the standard library's own C encoder and scanner, without its Python half.

``import json`` costs a connection about 6 ms of CPU (bench/overhead), two thirds of a bare
interpreter's start, not for the work but because json.decoder and json.encoder compile
regular expressions at import (``re``, with the enum and functools it brings). The work is
done by ``_json``, the C module every CPython ships and the json package itself uses
whenever it can: ``dumps`` and ``loads`` here call it the way json's ``JSONEncoder`` and
``JSONDecoder`` do, with the same settings the gate used (compact, ASCII only, no NaN), so
every line and file is what ``json.dumps`` wrote before (tests/test_jsontext.py checks
both ways). On an interpreter without ``_json`` the json package does it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    import _json
except ImportError:  # not CPython: the json package, at its usual cost
    _json = None  # type: ignore[assignment]

WHITESPACE = " \t\n\r"  # JSON's own (RFC 8259); str.strip() would take more


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, sort_keys: bool = False) -> str:
    """``json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False, ...)``.

    Raises ValueError for NaN or infinity and TypeError for what ``default`` does not turn
    into JSON, as json.dumps does.
    """
    if _json is None:
        import json

        return json.dumps(
            obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=default, sort_keys=sort_keys
        )

    def refuse(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    # The arguments of json.encoder's c_make_encoder call: markers (the circular check),
    # default, the string encoder, indent, separators, sort_keys, skipkeys, allow_nan.
    encode = _json.make_encoder(
        {}, default or refuse, _json.encode_basestring_ascii, None, ":", ",", sort_keys, False, False
    )
    return "".join(encode(obj, 0))


class _Context:
    """What json.scanner's C scanner reads off a JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str]

    def __init__(self, parse_constant: Callable[[str], Any]) -> None:
        self.parse_constant = parse_constant
        self.memo = {}


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def loads(data: str | bytes, *, parse_constant: Callable[[str], Any] = _constant) -> Any:
    """``json.loads(data)`` (UTF-8 when bytes); ValueError for anything that is not one JSON value.

    Deep nesting raises RecursionError, as json.loads does.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data  # UnicodeDecodeError is a ValueError
    if _json is None:
        import json

        return json.loads(text, parse_constant=parse_constant)
    body = text.strip(WHITESPACE)
    try:
        value, end = _json.make_scanner(_Context(parse_constant))(body, 0)  # type: ignore[arg-type]  # typeshed: any object with these attributes
    except StopIteration:
        raise ValueError("Expecting value") from None
    if end != len(body):
        raise ValueError(f"Extra data at {end}")
    return value
