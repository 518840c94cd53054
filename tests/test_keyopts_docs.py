"""authorized_keys.example and README.md document the key line's options as keyopts.OPTIONS declares them.

Generated from the table, not from a list here: an option added to the table fails these tests
until both documents name it, and an option they name that the table lacks fails them too.
What counts as each document's key-option documentation is said at each test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from borg_gate.admin import authkeys, authorize
from borg_gate.conn import keyopts

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "authorized_keys.example").read_text()
README = (ROOT / "README.md").read_text()
TABLE = keyopts.BY_NAME  # every name of every option
OPTION_WORD = re.compile(r"(?<![\w-])--[a-z][a-z-]*[a-z](?![\w-])")


def example_block() -> dict[str, tuple[str | None, str]]:
    """The example's list of options: ``#   --name VALUE   what it does``, up to the first blank line.

    Option to (its value's name, its text with the continuation lines); each option once.
    """
    start = EXAMPLE.index("# Options the gate reads from the key line")
    block = EXAMPLE[start : EXAMPLE.index("\n\n", start)].splitlines()[1:]
    listed: dict[str, tuple[str | None, str]] = {}
    last = ""
    for line in block:
        entry = re.fullmatch(r"#   (--[a-z-]+)( [A-Z]+)? +(.*)", line)
        if entry is None:
            assert re.fullmatch(r"# {20,}\S.*", line), f"neither an option nor its continuation: {line!r}"
            metavar, text = listed[last]
            listed[last] = (metavar, f"{text} {line.lstrip('# ')}")
            continue
        last = entry[1]
        assert last not in listed, f"{last} listed twice"
        listed[last] = (entry[2] and entry[2].strip(), entry[3])
    return listed


def test_the_example_lists_exactly_the_tables_options() -> None:
    assert sorted(example_block()) == sorted(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_the_example_gives_each_option_its_value(name: str) -> None:
    option = TABLE[name]
    metavar, text = example_block()[name]
    if option.kind == keyopts.FLAG:
        assert metavar is None
    elif option.choices:  # --help shows the choices themselves; the example names them all
        assert metavar is not None and " | ".join(option.choices) in text
    else:
        assert metavar == option.metavar


def gate_lines(data: str) -> list[list[str]]:
    """The words after borg-gate of every key line in data that forces it."""
    lines = []
    for parsed in authkeys.parse_file(data.encode()):
        if isinstance(parsed, authkeys.KeyLine) and parsed.options.command is not None:
            words = authkeys.split_command(parsed.options.command)
            if words[0].endswith("borg-gate"):
                lines.append(words[1:])
    return lines


def test_the_examples_key_lines_are_read_by_the_table() -> None:
    lines = gate_lines(EXAMPLE)
    assert lines
    for argv in lines:
        keyopts.parse_key_options(argv)  # refuses an option the table lacks


def test_the_example_names_no_option_the_table_lacks() -> None:
    """Every --word of the file is the table's (or --help): it names borg's own options only where the gate's match."""
    assert set(OPTION_WORD.findall(EXAMPLE)) <= {*TABLE, *keyopts.HELP}


def test_readme_names_every_option() -> None:
    assert {name for name in TABLE if not re.search(rf"(?<![\w-]){name}(?![\w-])", README)} == set()


def test_readmes_key_lines_use_only_the_tables_options() -> None:
    """Every ``command="borg-gate …"`` of README.md: the words it gives the gate are options of the table."""
    commands = re.findall(r'command="(\S*borg-gate(?: [^"]*)?)"', README)
    assert commands
    for command in commands:
        words = command.split()[1:]
        assert {w for w in words if w.startswith("-")} <= set(TABLE), command


def test_readmes_authorize_examples_are_authorizes() -> None:
    """Every ``borg-gate authorize …`` in README.md's code blocks is read by authorize's parser."""
    examples = re.findall(r"^borg-gate authorize (.*)$", README, re.M)
    assert examples
    for example in examples:
        ns = authorize.build_parser().parse_args(shlex.split(example))
        keyopts.parse_key_options(authorize.key_argv(ns))


def readme_section(title: str) -> str:
    start = README.index(f"\n### {title}\n")
    ends = [i for i in (README.find("\n## ", start + 1), README.find("\n### ", start + 1)) if i > 0]
    return README[start : min(ends, default=len(README))]


def test_readmes_table_per_borg_version_has_exactly_the_translated_options() -> None:
    """ "Key permissions per borg version": a row for each option a policy function translates per borg.

    An option borg serve gets the same on every borg (the table's serve) or never needs no row.
    """
    rows = [row for row in readme_section("Key permissions per borg version").splitlines() if row.startswith("| `")]
    said = {word for row in rows for word in OPTION_WORD.findall(row.split("|")[1])}
    assert said == {name for name, option in TABLE.items() if option.translated_by}
