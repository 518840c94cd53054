"""Each check in patterns equals the regular expression it replaced (hypothesis, against re.fullmatch)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from borg_gate.base import patterns

# The characters that matter to these forms, and a few that must never pass for them.
ALPHABET = patterns.ALNUM + "._+-=:/ \n\t\x00\xe9\xdf\u0663\u0660\u2460\u212a" + "BORG_DEV"
texts = st.text(alphabet=ALPHABET, max_size=70) | st.from_regex(
    r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}((a|b|rc)[0-9]{1,2})?(\.dev[0-9])?", fullmatch=True
)

CHECKS = {
    "client_name": (patterns.client_name, r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
    "binary_name": (patterns.binary_name, r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"),
    "debug_topic": (patterns.debug_topic, r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"),
    "umask": (patterns.umask, r"0?[0-7]{3}"),
    "borg_env_name": (patterns.borg_env_name, r"BORG_[A-Z0-9_]{1,64}"),
    "env_assignment": (patterns.env_assignment, r"[A-Za-z_][A-Za-z0-9_]*=.*"),
    "storage_quota": (patterns.storage_quota, r"[0-9]{1,20}(\.[0-9]{1,6})?[KMGTP]?"),
    "size": (lambda t: patterns.size(t) is not None, r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)"),
    "version": (
        lambda t: patterns.version(t) is not None,
        r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?",
    ),
}


@pytest.mark.parametrize("name", CHECKS)
@given(text=texts)
@example(text="")
@example(text="a" * 64)
@example(text="a" * 65)
@example(text="0777")
@example(text="1.2.4rc1.dev3")
@example(text="BORG_")
def test_check_equals_its_expression(name: str, text: str) -> None:
    check, expression = CHECKS[name]
    assert check(text) == bool(re.fullmatch(expression, text, re.DOTALL)), (name, text)


@given(st.from_regex(r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?", fullmatch=True))
def test_version_groups_are_the_expressions(text: str) -> None:
    m = re.fullmatch(r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?", text)
    assert m is not None
    groups = tuple(int(g) if g is not None and g.isdigit() else g for g in m.groups())
    assert patterns.version(text) == groups


@given(st.from_regex(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)", fullmatch=True))
def test_size_groups_are_the_expressions(text: str) -> None:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)", text)
    assert m is not None and patterns.size(text) == m.groups()
