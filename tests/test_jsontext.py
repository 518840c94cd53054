"""jsontext writes and reads exactly what the json package does with the gate's settings."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_gate.base import jsontext

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
)


def reference(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False, **kw)


@given(values)
def test_dumps_is_json_dumps(obj: Any) -> None:
    assert jsontext.dumps(obj) == reference(obj)
    assert jsontext.dumps(obj, sort_keys=True) == reference(obj, sort_keys=True)


@given(values)
def test_loads_reads_what_json_wrote(obj: Any) -> None:
    text = json.dumps(obj)
    assert jsontext.loads(text) == json.loads(text)
    assert jsontext.loads(text.encode()) == obj


@given(st.text(alphabet='{}[]",:0123456789.eE+-tfnrulsaeNIy \t\n\r\\/ubx', max_size=40))
def test_loads_refuses_what_json_refuses(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc) if isinstance(exc, RecursionError) else ValueError):
            jsontext.loads(text)
    else:
        got = jsontext.loads(text)
        assert got == expected or (isinstance(got, float) and math.isnan(got) and math.isnan(expected))


def test_nan_is_refused_as_json_dumps_refuses_it() -> None:
    for bad in (math.nan, math.inf, [-math.inf]):
        with pytest.raises(ValueError):
            jsontext.dumps(bad)


def test_default_and_what_it_cannot_write() -> None:
    assert jsontext.dumps({"p": object}, default=lambda o: "x") == '{"p":"x"}'
    with pytest.raises(TypeError):
        jsontext.dumps({"p": object()})


def test_parse_constant_and_nesting() -> None:
    assert jsontext.loads("[NaN, 1]", parse_constant=lambda _: None) == [None, 1]
    with pytest.raises(RecursionError):
        jsontext.loads("[" * 100_000)
