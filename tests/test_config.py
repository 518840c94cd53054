"""The config file: every SCHEMA key, and every mistake named by file, key and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_gate.base import config, patterns
from borg_gate.base.config import SCHEMA, BinarySpec, Config, config_path, load_config, parse_config
from borg_gate.base.errors import Kind, Refusal

SOURCE = "/etc/borg-gate/test.toml"


def bad(text: str, source: str = SOURCE) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse_config(text, source)
    assert info.value.kind is Kind.MISCONFIGURED
    assert info.value.reason.startswith(f"config {source}")
    assert "\n" not in info.value.reason
    return info.value


def test_empty_file_means_defaults() -> None:
    assert parse_config("", SOURCE) == Config(source=SOURCE)


def test_built_in_defaults() -> None:
    cfg = Config()
    assert cfg.umask == 0o077
    assert cfg.state_dir == "/run/borg-gate"
    assert cfg.repos_root == "/srv/borg/{client}"
    assert cfg.binaries["borg"] == BinarySpec("borg", "/usr/bin/borg")
    assert cfg.binaries["borg2"] == BinarySpec("borg2", "/usr/bin/borg2")
    assert cfg.borg_default == "borg"
    assert (cfg.max_sessions, cfg.max_sessions_per_client, cfg.wait) == (8, 2, 600.0)


# section, key, a good TOML value, the Config attribute, its parsed value, a wrong-typed TOML value
GOOD = [
    ("gate", "state_dir", '"/var/lib/bg"', "state_dir", "/var/lib/bg", "5"),
    ("gate", "log_file", '"/var/log/bg.jsonl"', "log_file", "/var/log/bg.jsonl", "true"),
    ("gate", "log_file", '""', "log_file", "", "[]"),
    ("gate", "syslog", "true", "syslog", True, '"yes"'),
    ("gate", "umask", '"027"', "umask", 0o027, "[1]"),
    ("gate", "umask", '"0007"', "umask", 0o007, '"8"'),
    ("gate", "mode", '"supervise"', "mode", "supervise", '"fork"'),
    ("gate", "mode", '"exec"', "mode", "exec", "1"),
    ("limits", "max_sessions", "20", "max_sessions", 20, '"20"'),
    ("limits", "max_sessions_per_client", "1", "max_sessions_per_client", 1, "1.5"),
    ("limits", "wait", "0", "wait", 0.0, '"10"'),
    ("limits", "wait", "2.5", "wait", 2.5, "true"),
    ("limits", "reserved_sessions", "2", "reserved_sessions", 2, '"2"'),
    ("limits", "max_sessions_per_repo", "3", "max_sessions_per_repo", 3, "0"),
    ("repos", "root", '"/backup/{client}"', "repos_root", "/backup/{client}", "{ a = 1 }"),
    ("repos", "root", '""', "repos_root", "", "0"),
    ("borg", "default", '"borg2"', "borg_default", "borg2", "2"),
]


def test_the_table_covers_every_schema_key() -> None:
    covered = {(section, key) for section, key, *_ in GOOD}
    assert covered == {(section, key) for section, keys in SCHEMA.items() for key in keys}


@pytest.mark.parametrize(("section", "key", "value", "attr", "parsed", "wrong"), GOOD)
def test_each_key(section: str, key: str, value: str, attr: str, parsed: Any, wrong: str) -> None:
    cfg = parse_config(f"[{section}]\n{key} = {value}\n", SOURCE)
    assert getattr(cfg, attr) == parsed


@pytest.mark.parametrize(("section", "key", "value", "attr", "parsed", "wrong"), GOOD)
def test_each_key_wrong_type_names_file_key_and_line(
    section: str, key: str, value: str, attr: str, parsed: Any, wrong: str
) -> None:
    refusal = bad(f"# comment\n\n[{section}]\n{key} = {wrong}\n")
    assert refusal.reason.startswith(f"config {SOURCE}:4: {section}.{key}: ")
    assert refusal.fields["config"] == SOURCE


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ("[gate]\nstate_dir = 'relative'\n", 2, "gate.state_dir"),
        ("[gate]\nlog_file = '/ok'\nstate_dir = \"/a\\nb\"\n", 3, "gate.state_dir"),
        ("[limits]\nmax_sessions = 0\n", 2, "limits.max_sessions"),
        ("[limits]\nmax_sessions = 10001\n", 2, "limits.max_sessions"),
        ("[limits]\nmax_sessions_per_client = -1\n", 2, "limits.max_sessions_per_client"),
        ("[limits]\nwait = -1\n", 2, "limits.wait"),
        ("[limits]\nwait = 604801\n", 2, "limits.wait"),
        ("[limits]\nwait = nan\n", 2, "limits.wait"),
        ("[limits]\nwait = inf\n", 2, "limits.wait"),
        ("[limits]\nmax_sessions = true\n", 2, "limits.max_sessions"),
        ("[gate]\numask = '0o77'\n", 2, "gate.umask"),
        ("[gate]\numask = '778'\n", 2, "gate.umask"),
        ("[repos]\nroot = 'srv/{client}'\n", 2, "repos.root"),
        ("[borg]\ndefault = '../borg'\n", 2, "borg.default"),
    ],
)
def test_bad_values(text: str, where: int, key: str) -> None:
    assert bad(text).reason.startswith(f"config {SOURCE}:{where}: {key}: ")


def test_unknown_key_names_known_ones() -> None:
    reason = bad("[limits]\nmax_sessions = 3\nmax_session = 4\n").reason
    assert reason.startswith(f"config {SOURCE}:3: limits.max_session: unknown key")
    assert "max_sessions_per_client" in reason


def test_unknown_section_names_its_line() -> None:
    reason = bad("[gate]\n[logging]\nlevel = 'debug'\n").reason
    assert reason.startswith(f"config {SOURCE}:2: logging: unknown section")


def test_unknown_subtable_names_its_line() -> None:
    reason = bad("[borg]\ndefault = 'borg'\n\n[borg.extras]\nx = 1\n").reason
    assert reason.startswith(f"config {SOURCE}:4: borg.extras: unknown key")


def test_section_that_is_not_a_table() -> None:
    assert "gate: must be a table" in bad("gate = 5\n").reason


def test_syntax_error_names_the_file_and_line() -> None:
    reason = bad("[gate]\nstate_dir = /run/x\n").reason
    assert reason.startswith(f"config {SOURCE}: ")
    assert "line 2" in reason


def test_binaries_as_paths_and_tables() -> None:
    cfg = parse_config(
        """
[borg]
default = "borg2"
[borg.binaries]
borg = "/usr/bin/borg"
borg2 = { path = "/usr/bin/borg2", version = "2.0.0b5" }
"borg-1.4" = { path = "/opt/borg-1.4/bin/borg" }
""",
        SOURCE,
    )
    assert dict(cfg.binaries) == {
        "borg": BinarySpec("borg", "/usr/bin/borg"),
        "borg2": BinarySpec("borg2", "/usr/bin/borg2", "2.0.0b5"),
        "borg-1.4": BinarySpec("borg-1.4", "/opt/borg-1.4/bin/borg"),
    }
    assert cfg.borg_default == "borg2"


def test_binaries_inline_under_borg() -> None:
    cfg = parse_config('[borg]\nbinaries = { borg = "/opt/borg" }\n', SOURCE)
    assert dict(cfg.binaries) == {"borg": BinarySpec("borg", "/opt/borg")}
    assert bad('[borg]\nbinaries = { borg = "opt/borg" }\n').reason.startswith(
        f"config {SOURCE}:2: borg.binaries.borg: "
    )


@pytest.mark.parametrize(
    ("body", "key", "line"),
    [
        ('borg = "bin/borg"', "borg.binaries.borg", 3),
        ("borg = 5", "borg.binaries.borg", 3),
        ('borg = { path = "/usr/bin/borg", version = "new" }', "borg.binaries.borg.version", 3),
        ('borg = { path = "/usr/bin/borg", version = 2 }', "borg.binaries.borg.version", 3),
        ('borg = { path = "/usr/bin/borg", sha = "x" }', "borg.binaries.borg.sha", 3),
        ('borg = { version = "1.2.4" }', "borg.binaries.borg", 3),
        ('"../borg" = "/usr/bin/borg"', "borg.binaries.../borg", None),
    ],
)
def test_bad_binaries(body: str, key: str, line: int | None) -> None:
    reason = bad(f"[borg]\n[borg.binaries]\n{body}\n").reason
    where = f"{SOURCE}:{line}" if line else SOURCE
    assert reason.startswith(f"config {where}: {key}: "), reason


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            'borg-1.4 = "/opt/borg-1.4/bin/borg"',
            3,
            'borg.binaries.borg-1: names with a dot must be quoted: "borg-1.4" = …',
        ),
        ('borg-2.0.0b22 = { path = "/opt/b22/bin/borg" }', 3, 'quoted: "borg-2.0.0b22" = …'),
        ('[borg.binaries.borg-1.4]\npath = "/opt/borg-1.4/bin/borg"', 3, 'quoted: "borg-1.4" = …'),
        # a letter after the dot may be a misspelt key as well as a name: say both
        (
            'borg2 = { paht = "/usr/bin/borg2" }',
            3,
            'borg.binaries.borg2.paht: unknown key (known: path, version); if "borg2.paht" is a binary\'s name, '
            'quote it: "borg2.paht" = …',
        ),
        ('borg.old = "/opt/old/bin/borg"', 3, 'if "borg.old" is a binary\'s name, quote it: "borg.old" = …'),
    ],
)
def test_unquoted_binary_name_with_a_dot(body: str, line: int, message: str) -> None:
    """TOML reads an unquoted dotted key as nested tables: say so rather than "unknown key 4"."""
    reason = bad(f"[borg]\n[borg.binaries]\n{body}\n").reason
    assert reason.startswith(f"config {SOURCE}:{line}: borg.binaries."), reason
    assert reason.endswith(message), reason


def test_a_table_with_a_misspelt_key_gets_no_quoting_hint() -> None:
    reason = bad('[borg]\n[borg.binaries]\nborg = { path = "/usr/bin/borg", sha = "x" }\n').reason
    assert reason == f"config {SOURCE}:3: borg.binaries.borg.sha: unknown key (known: path, version)"


def test_empty_binaries_table() -> None:
    assert "borg.binaries: must be a table" in bad("[borg.binaries]\n").reason


def test_default_must_name_a_binary() -> None:
    reason = bad('[borg]\ndefault = "borg3"\n').reason
    assert reason.startswith(f"config {SOURCE}:2: borg.default: names no binary")
    assert "borg, borg2" in reason


def test_borg_env() -> None:
    cfg = parse_config('[borg.env]\nBORG_BASE_DIR = "/var/lib/borg"\nBORG_X_1 = ""\n', SOURCE)
    assert dict(cfg.borg_env) == {"BORG_BASE_DIR": "/var/lib/borg", "BORG_X_1": ""}


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('LD_PRELOAD = "/x.so"', "borg.env.LD_PRELOAD"),
        ('PYTHONPATH = "/x"', "borg.env.PYTHONPATH"),
        ('borg_lower = "x"', "borg.env.borg_lower"),
        ("BORG_X = 1", "borg.env.BORG_X"),
        ('BORG_X = "a\\nb"', "borg.env.BORG_X"),
    ],
)
def test_borg_env_only_borg_variables_as_strings(body: str, key: str) -> None:
    assert bad(f"[borg.env]\n{body}\n").reason.startswith(f"config {SOURCE}:2: {key}: ")


def test_borg_repo_permissions_is_the_key_lines_alone() -> None:
    """borg serve --rest takes BORG_REPO_PERMISSIONS when --permissions is absent: never from the config."""
    reason = bad('[borg.env]\nBORG_REPO_PERMISSIONS = "all"\n').reason
    assert reason.startswith(f"config {SOURCE}:2: borg.env.BORG_REPO_PERMISSIONS: would set every key's permissions")


def test_umask_as_a_bare_integer_is_refused() -> None:
    """TOML ``umask = 77`` is decimal 77 = 0o115: group-writable, world-readable files. Only strings."""
    reason = bad("[gate]\numask = 77\n").reason
    assert reason.startswith(f'config {SOURCE}:2: gate.umask: must be an octal string like "077"')
    bad("[gate]\numask = 0o077\n")  # once parsed, cannot be told from a decimal 63


def test_absurdly_nested_file_is_a_refusal_not_a_crash() -> None:
    depth = 100_000  # tomllib recurses per level: RecursionError, not TOMLDecodeError
    reason = bad("x = " + "[" * depth + "]" * depth + "\n").reason
    assert "nested too deeply" in reason


def test_refusal_fields_do_not_clobber_the_event_keys() -> None:
    """Refusal fields become fields of the connection.refused event, where ``key`` is the ssh key's fingerprint."""
    refusal = bad("[limits]\nmax_sessions = 0\n")
    assert "key" not in refusal.fields
    assert refusal.fields["config_key"] == "limits.max_sessions"


# --------------------------------------------------------------------------- which file


def test_config_path_precedence() -> None:
    assert config_path("/etc/x.toml", {"BORG_GATE_CONFIG": "/etc/y.toml"}) == ("/etc/x.toml", True)
    assert config_path(None, {"BORG_GATE_CONFIG": "/etc/y.toml"}) == ("/etc/y.toml", True)
    assert config_path(None, {}) == (config.DEFAULT_CONFIG_PATH, False)
    assert config_path(None, {"BORG_GATE_CONFIG": ""}) == (config.DEFAULT_CONFIG_PATH, False)


def test_empty_explicit_config_is_not_the_default() -> None:
    """``--config=`` on a key line is a typo to refuse, not a silent fallback to the default file."""
    path, required = config_path("", {})
    assert required
    with pytest.raises(Refusal) as info:
        load_config(path, required)
    assert info.value.kind is Kind.MISCONFIGURED


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.toml"), required=False) == Config()


def test_missing_explicit_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(Refusal) as info:
        load_config(path, required=True)
    assert info.value.kind is Kind.MISCONFIGURED
    assert info.value.reason == f"config {path}: file not found"


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Refusal) as info:
        load_config(str(tmp_path), required=False)  # a directory: exists, cannot be read as a file
    assert info.value.reason == f"config {tmp_path}: not a regular file"


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[repos]\nroot = "/srv/\xe9"\n')
    with pytest.raises(Refusal) as info:
        load_config(str(path), required=True)
    assert info.value.reason == f"config {path}: not UTF-8"


def test_oversized_file_is_refused_not_truncated(tmp_path: Path) -> None:
    """A file cut at the read limit could parse, minus its last settings: refuse instead."""
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (1 << 17) + '[repos]\nroot = ""\n')
    with pytest.raises(Refusal) as info:
        load_config(str(path), required=True)
    assert info.value.reason.startswith(f"config {path}: larger than")


def test_loaded_file_is_parsed_and_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nmax_sessions = 3\nbogus = 1\n")
    with pytest.raises(Refusal) as info:
        load_config(str(path), required=True)
    assert info.value.reason.startswith(f"config {path}:3: limits.bogus: unknown key")
    path.write_text("[limits]\nmax_sessions = 3\n")
    assert load_config(str(path), required=True).max_sessions == 3


def test_config_that_is_a_fifo_does_not_hang_the_connection(tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes; the client has no timeout, so it would wait forever."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    probe = f"from borg_gate.base.config import load_config\nload_config({str(fifo)!r}, True)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == f"borg_gate.base.errors.Refusal: config {fifo}: not a regular file"


# --------------------------------------------------------------------------- properties

toml_values = st.one_of(
    st.integers(-5, 20000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(['"/srv/x"', '"077"', '"exec"', '"borg"', '"/usr/bin/borg"', "[]", "{}", '{ path = "/x" }']),
)


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value[:1] in '"[{':
        return value
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


sections = st.sampled_from([*SCHEMA, "borg.binaries", "borg.env", "other"])
KEY_NAMES = [*(k for ks in SCHEMA.values() for k in ks), "borg", "BORG_X", "path"]
keys = st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=8))
structured_configs = st.lists(st.tuples(sections, st.lists(st.tuples(keys, toml_values), max_size=4)), max_size=4).map(
    lambda secs: "".join(
        f"[{s}]\n" + "".join(f'"{k.replace(chr(92), "").replace(chr(34), "")}" = {toml_literal(v)}\n' for k, v in kvs)
        for s, kvs in secs
    )
)


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=200), structured_configs))
def test_no_config_text_crashes_the_parser(text: str) -> None:
    try:
        cfg = parse_config(text, SOURCE)
    except Refusal as refusal:
        assert refusal.kind is Kind.MISCONFIGURED
        assert refusal.reason.startswith(f"config {SOURCE}")
        return
    assert cfg.borg_default in cfg.binaries
    assert 0 <= cfg.umask <= 0o777
    assert cfg.state_dir.startswith("/")
    for spec in cfg.binaries.values():
        assert spec.path.startswith("/") and patterns.binary_name(spec.name)
    assert all(k.startswith("BORG_") for k in cfg.borg_env)
