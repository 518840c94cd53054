"""The authorized_keys line's options: parsed strictly, every mistake a misconfiguration refusal."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_gate.base import patterns
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import keyopts, policy
from borg_gate.conn.keyopts import PERMISSIONS, KeyOptions, Permission, parse_key_options, parse_size


def misconfigured(argv: list[str]) -> str:
    with pytest.raises(Refusal) as info:
        parse_key_options(argv)
    assert info.value.kind is Kind.MISCONFIGURED
    assert info.value.reason.startswith("key line: ")
    return info.value.reason


def test_defaults() -> None:
    assert parse_key_options([]) == KeyOptions()


def test_words_are_the_tables_options() -> None:
    """Words declares its attributes for mypy alone: the table's, in its order, each unset as it says."""
    assert list(keyopts.Words.__annotations__) == [o.dest for o in keyopts.OPTIONS]
    assert vars(keyopts.Words()) == {o.dest: o.unset() for o in keyopts.OPTIONS}
    assert len(keyopts.BY_NAME) == sum(len(o.names) for o in keyopts.OPTIONS)  # no name twice


def test_the_table_says_truly_what_borg_serve_gets() -> None:
    for option in keyopts.OPTIONS:
        assert not (option.serve and option.translated_by), option  # data or logic, not both
        if option.translated_by is not None:
            assert callable(getattr(policy, option.translated_by)), option
    # The data: a key's confinement reaches borg serve as the same options, whichever borg serves it.
    passed = {word.partition("=")[0] for word in policy.Confinement(("/a",), ("/b",)).options()}
    assert passed == {o.serve for o in keyopts.OPTIONS if o.serve}


def test_policy_applies_every_translation_the_table_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """key_serve_options is where the connection and check translate a key: it must call each one."""
    named = {o.translated_by for o in keyopts.OPTIONS if o.translated_by}
    called: list[str] = []

    def recorder(name: str) -> Callable[..., list[str]]:
        def record(*_: object) -> list[str]:
            called.append(name)
            return []

        return record

    for name in named:
        monkeypatch.setattr(policy, name, recorder(name))
    policy.key_serve_options(KeyOptions(), None, False)  # type: ignore[arg-type]  # the recorders take any borg
    assert sorted(called) == sorted(named)


def test_every_option() -> None:
    key = parse_key_options(
        [
            "--client",
            "host-1.example",
            "--config",
            "/etc/borg-gate/other.toml",
            "--restrict-to-path",
            "/srv/borg/{client}",
            "--restrict-to-path=/srv/extra",
            "--restrict-to-repository",
            "/srv/one",
            "--permissions",
            "no-delete",
            "--storage-quota",
            "500G",
            "--borg",
            "borg2",
            "--max-sessions",
            "3",
            "--wait",
            "2.5",
            "--supervise",
        ]
    )
    assert key == KeyOptions(
        client="host-1.example",
        config="/etc/borg-gate/other.toml",
        restrict_to_paths=("/srv/borg/{client}", "/srv/extra"),
        restrict_to_repositories=("/srv/one",),
        permission=Permission.NO_DELETE,
        storage_quota=500 * 10**9,
        borg="borg2",
        max_sessions=3,
        wait=2.5,
        supervise=True,
    )


@pytest.mark.parametrize("mode", [p.value for p in PERMISSIONS])
def test_permissions(mode: str) -> None:
    assert parse_key_options(["--permissions", mode]).permission is keyopts.permission(mode)


def test_permissions_are_the_four_named_values() -> None:
    assert PERMISSIONS == (Permission.ALL, Permission.NO_DELETE, Permission.WRITE_ONLY, Permission.READ_ONLY)
    assert [p.value for p in PERMISSIONS] == ["all", "no-delete", "write-only", "read-only"]
    assert keyopts.permission("read-only") is Permission.READ_ONLY
    with pytest.raises(ValueError, match="not a permission"):
        keyopts.permission("everything")


def test_append_only_means_no_delete() -> None:
    assert parse_key_options(["--append-only"]).permission is Permission.NO_DELETE
    assert parse_key_options(["--append-only", "--permissions", "no-delete"]).permission is Permission.NO_DELETE
    assert parse_key_options(["--append-only", "--permissions", "all"]).permission is Permission.NO_DELETE


@pytest.mark.parametrize("mode", ["read-only", "write-only"])
def test_append_only_contradicting_permissions(mode: str) -> None:
    assert "contradicts" in misconfigured(["--append-only", "--permissions", mode])


@pytest.mark.parametrize(
    ("text", "size"),
    [("10M", 10**7), ("500G", 5 * 10**11), ("1.5T", 15 * 10**11), ("2P", 2 * 10**15), ("10000000", 10**7)],
)
def test_storage_quota(text: str, size: int) -> None:
    assert parse_key_options(["--storage-quota", text]).storage_quota == size


@pytest.mark.parametrize("text", ["9M", "9999999", "0", "1K"])
def test_storage_quota_below_borgs_minimum(text: str) -> None:
    assert "at least 10M" in misconfigured(["--storage-quota", text])


@pytest.mark.parametrize("text", ["lots", "10 G", "10g", "10MB", "-10G", "1e9", "", ".5G", "10Gi"])
def test_storage_quota_not_a_size(text: str) -> None:
    assert "not a size" in misconfigured([f"--storage-quota={text}"])


@pytest.mark.parametrize("name", ["alice", "a", "Host-1.example_2", "0", "x" * 64])
def test_valid_client_names(name: str) -> None:
    assert parse_key_options(["--client", name]).client == name


# {client} expands into restriction paths: a name that could climb out or split a path is refused here.
HOSTILE_CLIENTS = ["..", "../root", "a/b", "/", ".", ".hidden", "-x", "", "x" * 65, "a b", "a\nb", "{client}", "é", "*"]


@pytest.mark.parametrize("name", HOSTILE_CLIENTS)
def test_hostile_client_names_are_refused(name: str) -> None:
    assert "--client" in misconfigured(["--client", name])


@settings(max_examples=500)
@given(st.text(max_size=70))
def test_client_name_accepted_exactly_when_it_matches(name: str) -> None:
    try:
        key = parse_key_options([f"--client={name}"])
    except Refusal as refusal:
        assert refusal.kind is Kind.MISCONFIGURED
        assert not re.fullmatch(keyopts.CLIENT_PATTERN, name)  # the expression the refusal names
    else:
        assert key.client == name and re.fullmatch(keyopts.CLIENT_PATTERN, name)
        assert "/" not in name and not name.startswith(".")


@pytest.mark.parametrize("option", ["--restrict-to-path", "--restrict-to-repository"])
@pytest.mark.parametrize("path", ["relative/path", "~/repos", "", "./x", "{client}"])
def test_restrictions_must_be_absolute(option: str, path: str) -> None:
    assert "absolute path" in misconfigured([f"{option}={path}"])


@pytest.mark.parametrize("option", ["--restrict-to-path", "--restrict-to-repository"])
def test_restrictions_without_control_characters(option: str) -> None:
    assert "control character" in misconfigured([f"{option}=/srv/a\nb"])


@pytest.mark.parametrize("name", ["../borg", "/usr/bin/borg", "", "borg 2", "-borg"])
def test_borg_must_be_a_name(name: str) -> None:
    misconfigured([f"--borg={name}"])


@pytest.mark.parametrize("value", ["0", "-1", "10001", "x", "1.5"])
def test_max_sessions_range(value: str) -> None:
    misconfigured([f"--max-sessions={value}"])


@pytest.mark.parametrize("value", ["-1", "604801", "nan", "inf", "-inf", "x"])
def test_wait_range(value: str) -> None:
    misconfigured([f"--wait={value}"])


def test_wait_bounds_are_inclusive() -> None:
    assert parse_key_options(["--wait=0"]).wait == 0
    assert parse_key_options(["--wait=604800"]).wait == 604800


@pytest.mark.parametrize(
    "argv",
    [
        ["--frobnicate"],
        ["--cli", "alice"],  # no abbreviations: a typo must not silently mean another option
        ["--restrict", "/srv"],
        ["serve"],
        ["--client"],
        ["--permissions", "everything"],
    ],
)
def test_unknown_or_incomplete_options(argv: list[str]) -> None:
    misconfigured(argv)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--frobnicate", "x", "--", "--client"], "key line: unrecognized arguments: --frobnicate x -- --client"),
        (["--client"], "key line: argument --client: expected one argument"),
        (["--client", "--config=/x"], "key line: argument --client: expected one argument"),
        (["--client", "--"], "key line: argument --client: expected one argument"),
        (["--cli", "--client"], "key line: argument --client: expected one argument"),  # before the extras
        (["--append-only=yes"], "key line: argument --append-only: ignored explicit argument 'yes'"),
        (["--max-sessions", "x"], "key line: argument --max-sessions: invalid int value: 'x'"),
        (["--wait=soon"], "key line: argument --wait: invalid float value: 'soon'"),
        (
            ["--permissions", "everything"],
            "key line: argument --permissions: invalid choice: 'everything'"
            " (choose from 'all', 'no-delete', 'write-only', 'read-only')",
        ),
    ],
)
def test_refusals_say_what_argparse_said(argv: list[str], reason: str) -> None:
    assert misconfigured(argv) == reason


@pytest.mark.parametrize("argv", [["-hx"], ["--help=x"]])
def test_a_help_word_with_a_value_is_refused_or_is_help(argv: list[str]) -> None:
    """Help words go to argparse: 3.11's refuses `-hx` (Debian 12), 3.12+'s prints the help (Debian 13)."""
    try:
        parse_key_options(argv)
    except Refusal as refusal:
        assert refusal.reason == "key line: argument -h/--help: ignored explicit argument 'x'"
    except SystemExit as exc:
        assert sys.version_info >= (3, 12) and exc.code == 0
    else:
        raise AssertionError("a help word was read as a key line")


@pytest.mark.parametrize("option", ["--client", "--config", "--restrict-to-path", "--permissions", "--wait", "--borg"])
def test_a_value_of_double_dash_is_missing(option: str) -> None:
    """argparse stored ``--opt=--`` as an empty list: --permissions=-- meant all, the others crashed the gate."""
    assert misconfigured([f"{option}=--"]) == f"key line: argument {option}: expected one argument"


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--config", "-1"], KeyOptions(config="-1")),  # a negative number is a value, as to argparse
        (["--config", "-a b"], KeyOptions(config="-a b")),  # so is a word with a space
        (["--config", "-"], KeyOptions(config="-")),
        (["--config=--client"], KeyOptions(config="--client")),
        (["--wait", "-0"], KeyOptions(wait=-0.0)),
        (["--max-sessions", " 3 "], KeyOptions(max_sessions=3)),  # int()'s own syntax, as argparse's type=int
        (
            ["--client", "a", "--client", "b", "--restrict-to-path=/1", "--restrict-to-path", "/2"],
            KeyOptions(client="b", restrict_to_paths=("/1", "/2")),
        ),
    ],
)
def test_values_argparse_took(argv: list[str], key: KeyOptions) -> None:
    assert parse_key_options(argv) == key


key_words = st.one_of(
    st.sampled_from(
        [
            *keyopts.BY_NAME,  # every option of the table
            "alice",
            "/srv",
            "no-delete",
            "read-only",
            "10G",
            "1",
            "nan",
            "-",
            "--",
            "=",
            "{client}",
        ]
    ),
    st.text(max_size=10),
)


@settings(max_examples=800)
@given(st.lists(key_words, max_size=8))
def test_no_key_line_crashes_the_parser(argv: list[str]) -> None:
    argv = [a for a in argv if a not in ("-h", "--help") and not a.startswith("--h")]
    try:
        key = parse_key_options(argv)
    except Refusal as refusal:
        assert refusal.kind is Kind.MISCONFIGURED
        assert "\n" not in refusal.reason
        return
    for path in (*key.restrict_to_paths, *key.restrict_to_repositories):
        assert path.startswith("/") and path.isprintable()
    assert key.client is None or patterns.client_name(key.client)
    assert key.wait is None or (0 <= key.wait <= 604800 and not math.isnan(key.wait))
    assert key.storage_quota is None or key.storage_quota >= keyopts.MIN_QUOTA


@settings(max_examples=300)
@given(
    st.integers(0, 10**6), st.sampled_from(["", ".5", ".25", ".125"]), st.sampled_from(["", "K", "M", "G", "T", "P"])
)
def test_parse_size_computes_what_borg_computes(number: int, fraction: str, unit: str) -> None:
    """borg's parse_file_size (1.2.4 helpers/parseformat.py): int(float(number) * 1000**k), decimal units."""
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}[unit]
    assert parse_size(f"{number}{fraction}{unit}") == int(float(f"{number}{fraction}") * factor)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_shown_and_exits_zero(flag: str) -> None:
    """A person running ``borg-gate --help`` gets the usage and rc 0, not an internal-error refusal."""
    out = subprocess.run(
        [sys.executable, "-m", "borg_gate", flag], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # not a terminal: stdout may be borg's protocol channel
    assert out.stderr.startswith("usage: borg-gate")
    assert "borg-gate:" not in out.stderr
    assert all(name in out.stderr for option in keyopts.OPTIONS for name in option.names)
