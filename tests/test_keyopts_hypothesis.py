"""The key line's table parser (keyopts.scan) reads every word as argparse (keyhelp.build_parser) does.

argparse stays the reference for how words are read: it serves ``borg-gate --help`` and
authorize's options, made from the same table (keyopts.OPTIONS), and it is what key lines were
read with before a connection stopped importing it. Same words in, same
values out, or the same refusal in the same words; the one difference is ``--opt=--``, which
argparse stores as an empty list (keyopts.scan's docstring).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import keyhelp, keyopts

VALUE_OPTIONS = [name for name, o in keyopts.BY_NAME.items() if o.kind != keyopts.FLAG]
NAMES = [*keyopts.BY_NAME, *keyopts.HELP]

# Words where argparse's reading turns: what looks like an option, a negative number, a space, "--".
VALUES = [
    *("alice", "a.b-c", "/srv", "/srv/{client}", "relative", "all", "no-delete", "read-only", "everything"),
    *("10G", "9M", "1.5T", "3", " 3", "+3", "1_000", "٣", "0", "1.5", "2e3", "nan", "inf", "-inf", "604801"),
    *("-1", "-0", "-.5", "-1.5", "-1.", "-1\n", "-1\n\n", "-٣", "-1e3", "-a b", "--x y", "--client=a b", "-x"),
    *("-", "--", "---", "", "=", "-=", "--=", "-h", "-hh", "-hx", "-h=", "-h=h", "--help=", "--cli", "--restrict"),
]
words = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(VALUES),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(NAMES), st.sampled_from(VALUES)),
    st.text(alphabet="-h=1. \nac", max_size=6),
    st.text(max_size=8),
)
# Mostly options with values they may take, so that many lines are read and their values compared.
given_option = st.one_of(
    st.builds(lambda o: [o], st.sampled_from([o for o in keyopts.BY_NAME if o not in VALUE_OPTIONS])),
    st.builds(
        lambda o, v, joined: [f"{o}={v}"] if joined else [o, v],
        st.sampled_from(VALUE_OPTIONS),
        st.sampled_from(VALUES),
        st.booleans(),
    ),
)
key_lines = st.one_of(
    st.lists(words, max_size=8),
    st.lists(given_option, max_size=5).map(lambda groups: [w for g in groups for w in g]),
)


def test_argparse_takes_each_option_as_the_table_says() -> None:
    kinds = {"_StoreAction": keyopts.ONE, "_AppendAction": keyopts.EACH, "_StoreTrueAction": keyopts.FLAG}
    parser = {
        option: (action.dest, kinds[type(action).__name__])
        for action in keyhelp.build_parser()._actions
        for option in action.option_strings
        if action.dest != "help"
    }
    assert parser == {name: (o.dest, o.kind) for name, o in keyopts.BY_NAME.items()}
    assert [a.option_strings for a in keyhelp.build_parser()._actions if a.dest == "help"] == [list(keyopts.HELP)]


def outcome(read: Callable[[list[str]], keyopts.Words], argv: list[str]) -> tuple[str, object]:
    try:
        got = read(list(argv))
    except Refusal as refusal:
        assert refusal.kind is Kind.MISCONFIGURED
        return "refused", refusal.reason
    except SystemExit as exc:  # --help: printed, and exits 0
        return "exit", exc.code
    # repr: nan equals nothing, and -0.0 equals 0.0
    return "read", {k: repr(v) if isinstance(v, float) else v for k, v in vars(got).items()}


# The table keeps Python 3.11's argparse rule for negative numbers (Debian 12's); 3.12+ also
# takes "-1." and "-1_0" for one. Where the running argparse's rule differs, it is no reference;
# test_negative_numbers_are_argparses pins the table to 3.11's rule on every Python.
RULE_311 = re.compile(r"^-\d+$|^-\d*\.\d+$")


def same_number_rule(word: str) -> bool:
    matcher = keyhelp.build_parser()._negative_number_matcher
    return bool(matcher.match(word)) == bool(RULE_311.match(word))


def quotes_aside(result: tuple[str, object]) -> tuple[str, object]:
    """3.12+ lists choices without quotes: (choose from all, no-delete, …); the table says 3.11's words."""
    if result[0] != "refused" or not isinstance(result[1], str):
        return result
    return result[0], re.sub(
        r"\(choose from (.*)\)", lambda m: "(choose from " + m[1].replace("'", "") + ")", result[1]
    )


def argparse_reads(argv: list[str]) -> keyopts.Words:
    return keyhelp.build_parser().parse_args(argv, keyopts.Words())


@settings(max_examples=3000, deadline=None)
@given(key_lines)
def test_table_reads_key_lines_as_argparse_does(argv: list[str]) -> None:
    assume(all(same_number_rule(word) for word in argv))
    table = quotes_aside(outcome(keyopts.scan, argv))
    reference = quotes_aside(outcome(argparse_reads, argv))
    event(reference[0] if table == reference else "argparse's --opt=--")
    if table != reference:
        # argparse's one quirk: `--opt=--` is an empty list to it, a missing value to the table.
        assert table[0] == "refused", (table, reference)
        assert any(
            table[1] == f"key line: argument {o}: expected one argument" and f"{o}=--" in argv for o in VALUE_OPTIONS
        ), (table, reference)


@settings(max_examples=1500, deadline=None)
@given(key_lines)
def test_every_key_line_is_read_or_refused(argv: list[str]) -> None:
    """Never a crash (an internal error on every connection): argparse's `--wait=--` was one."""
    with contextlib.suppress(Refusal, SystemExit):
        keyopts.parse_key_options(argv)


@settings(max_examples=1000)
@given(st.one_of(st.sampled_from(VALUES), st.text(alphabet="-h=1٣. \nac", max_size=8), st.text(max_size=8)))
def test_words_are_told_apart_as_argparse_tells_them(word: str) -> None:
    assume(same_number_rule(word))
    parser = keyhelp.build_parser()
    found = parser._parse_optional(word)
    if isinstance(found, list):  # 3.12+: every match, as (action, option string, sep, explicit arg)
        found = (found[0][0], found[0][1], found[0][3]) if len(found) == 1 else (None, word, None)
    expected = None if found is None else (found[1] if found[0] is not None else "", found[2])
    assert keyopts._option(word) == expected


@settings(max_examples=1000)
@given(st.text(alphabet="-.0123456789٣\n x", max_size=8).map(lambda t: "-" + t))
def test_negative_numbers_are_argparses(word: str) -> None:
    assert keyopts._negative_number(word) == bool(re.match(r"^-\d+$|^-\d*\.\d+$", word))
