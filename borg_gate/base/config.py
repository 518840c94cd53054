"""The host's config file (TOML): limits, binaries, repository root, state and log paths.

Parsing is pure (``parse_config(text, source)``); ``load_config`` adds the one file read.
Every key is in SCHEMA; an unknown key, a wrong type or a bad value is a Refusal that names
the file, the key and, where it can be found, the line. Only a missing *default* file means
built-in defaults: a file named by --config or BORG_GATE_CONFIG must exist.
"""

from __future__ import annotations

import os
import stat

from borg_gate.base import configcache, patterns
from borg_gate.base.errors import misconfigured, shown
from borg_gate.base.values import field, frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Final

    Checker = Callable[[str, object], object]

DEFAULT_CONFIG_PATH: Final = "/etc/borg-gate/config.toml"
DEFAULT_STATE_DIR: Final = "/run/borg-gate"
CONFIG_ENV: Final = "BORG_GATE_CONFIG"
MAX_CONFIG_BYTES: Final = 1 << 20

# What patterns.binary_name accepts, as the message for a bad binary name spells it.
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
MODES: Final = ("exec", "supervise")
# BORG_* variables that would decide what a key may do: that is the key line's job alone.
KEY_ONLY_ENV: Final = {
    "BORG_REPO_PERMISSIONS": "would set every key's permissions (borg serve --rest reads it when"
    " --permissions is absent); give a key --permissions or --append-only instead",
}


@frozen
class BinarySpec:
    """One borg a key may be served by: its name, absolute path and (optionally) stated version."""

    name: str
    path: str
    version: str | None = None


DEFAULT_BINARIES: Final = {
    "borg": BinarySpec("borg", "/usr/bin/borg"),
    "borg2": BinarySpec("borg2", "/usr/bin/borg2"),
}


@frozen
class Config:
    source: str = "<built-in defaults>"
    state_dir: str = DEFAULT_STATE_DIR
    log_file: str = "/var/log/borg-gate/gate.jsonl"  # "" disables the file sink
    syslog: bool = False
    umask: int = 0o077
    mode: str = "exec"
    max_sessions: int = 8
    max_sessions_per_client: int = 2
    wait: float = 600.0
    reserved_sessions: int = 0
    max_sessions_per_repo: int = 1
    repos_root: str = "/srv/borg/{client}"  # "" means keys must name their own confinement
    borg_default: str = "borg"
    binaries: Mapping[str, BinarySpec] = field(default_factory=lambda: dict(DEFAULT_BINARIES))
    borg_env: Mapping[str, str] = field(default_factory=dict)


class _Bad(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _abs_path(key: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _Bad(key, f"must be a string, not {type(value).__name__}")
    if value == "" and empty_ok:
        return value
    if not value.startswith("/") or any(not ch.isprintable() for ch in value):
        raise _Bad(key, f"must be an absolute path, not {shown(value, 80)!r}")
    return value


def _int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(key, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise _Bad(key, f"must be between {low} and {high}, not {value}")
    return value


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(key, f"must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value <= 7 * 86400:
        raise _Bad(key, f"must be between 0 and 604800 seconds, not {value}")
    return float(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(key, f"must be true or false, not {type(value).__name__}")
    return value


def _umask(key: str, value: object) -> int:
    # Strings only: TOML reads `umask = 77` as decimal 77 (0o115, group-writable files) and
    # `0o077` as 63, indistinguishable once parsed; a string is always read as octal.
    if isinstance(value, str) and patterns.umask(value):
        return int(value, 8)
    raise _Bad(key, f'must be an octal string like "077", not {shown(str(value), 20)!r}')


def _mode(key: str, value: object) -> str:
    if value not in MODES:
        raise _Bad(key, f"must be one of {', '.join(MODES)}, not {shown(str(value), 20)!r}")
    return str(value)


def _name(key: str, value: object) -> str:
    if not isinstance(value, str) or not patterns.binary_name(value):
        raise _Bad(key, f"must be a binary name like borg or borg2, not {shown(str(value), 40)!r}")
    return value


def _split_name(name: str, value: object) -> str | None:
    """The binary name TOML split at its dots, when that is what the value looks like.

    Unquoted, ``borg-1.4 = "/opt/…"`` is a table ``borg-1`` holding ``4 = "/opt/…"``: follow
    single-key tables that are no binary spec down to a path or a spec and rejoin the name.
    """
    parts = [name]
    while isinstance(value, dict) and len(value) == 1 and not {"path", "version"} & set(value):
        ((part, value),) = value.items()
        parts.append(part)
    spec_like = isinstance(value, str) or (isinstance(value, dict) and "path" in value)
    return ".".join(parts) if len(parts) > 1 and spec_like else None


def _binary(key: str, name: str, value: object) -> BinarySpec:
    if not patterns.binary_name(name):
        raise _Bad(key, f"binary name {shown(name, 40)!r} must match {NAME_PATTERN}")
    if isinstance(value, str):
        return BinarySpec(name, _abs_path(key, value))
    if isinstance(value, dict):
        unknown = set(value) - {"path", "version"}
        dotted = shown(_split_name(name, value) or "", 60) if unknown else ""
        if dotted[len(name) + 1 : len(name) + 2].isdigit():  # borg-1.4: a version, surely not a key typo
            raise _Bad(key, f'names with a dot must be quoted: "{dotted}" = …')
        if unknown:
            hint = f'; if "{dotted}" is a binary\'s name, quote it: "{dotted}" = …' if dotted else ""
            raise _Bad(f"{key}.{sorted(unknown)[0]}", f"unknown key (known: path, version){hint}")
        if "path" not in value:
            raise _Bad(key, "needs path")
        version = value.get("version")
        if version is not None and (not isinstance(version, str) or patterns.version(version) is None):
            raise _Bad(f"{key}.version", f"must look like 1.2.4 or 2.0.0b22, not {shown(str(version), 30)!r}")
        return BinarySpec(name, _abs_path(f"{key}.path", value["path"]), version)
    raise _Bad(key, 'must be a path or a table { path = "...", version = "..." }')


# section -> key -> (Config field, checker). The one place the file's grammar lives.
SCHEMA: Final[dict[str, dict[str, tuple[str, Checker]]]] = {
    "gate": {
        "state_dir": ("state_dir", _abs_path),
        "log_file": ("log_file", lambda k, v: _abs_path(k, v, empty_ok=True)),
        "syslog": ("syslog", _bool),
        "umask": ("umask", _umask),
        "mode": ("mode", _mode),
    },
    "limits": {
        "max_sessions": ("max_sessions", lambda k, v: _int(k, v, 1, 10000)),
        "max_sessions_per_client": ("max_sessions_per_client", lambda k, v: _int(k, v, 1, 10000)),
        "wait": ("wait", _seconds),
        "reserved_sessions": ("reserved_sessions", lambda k, v: _int(k, v, 0, 10000)),
        "max_sessions_per_repo": ("max_sessions_per_repo", lambda k, v: _int(k, v, 1, 10000)),
    },
    "repos": {
        "root": ("repos_root", lambda k, v: _abs_path(k, v, empty_ok=True)),
    },
    "borg": {
        "default": ("borg_default", _name),
    },
}


def _find_line(text: str, key: str) -> int | None:
    """Best effort: the line where dotted ``key`` is set (tomllib does not keep positions)."""
    import re  # only a bad config comes here: a good one must not pay for re on every connection

    *sections, last = key.split(".")
    want = ".".join(sections)
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.fullmatch(r"\[\s*([A-Za-z0-9_.\s\"-]+?)\s*\]", line)
        if header:
            current = re.sub(r"[\s\"]", "", header.group(1))
            if current == key or current.startswith(key + "."):  # a whole (sub)table, e.g. an unknown [section]
                return number
            continue
        if current == want and re.match(rf'"?{re.escape(last)}"?\s*[=.]', line):  # [.]: a dotted key
            return number
        if (
            current
            and want.startswith(current + ".")
            and re.match(rf"{re.escape(want[len(current) + 1 :])}\s*[=.]", line)
        ):
            return number  # inline table, e.g. binaries = { ... } under [borg]
    return None


def _toml(text: str, source: str) -> dict[str, Any]:
    import tomllib  # only a config this user has not cached yet pays for it (configcache)

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise misconfigured(f"config {source}: {exc}", config=source) from None
    except RecursionError:  # tomllib recurses per nesting level
        raise misconfigured(f"config {source}: nested too deeply", config=source) from None


def parse_config(text: str, source: str, data: dict[str, Any] | None = None) -> Config:
    """The config in ``text``; ``data``, when given, is what tomllib returned for it before."""
    if data is None:
        data = _toml(text, source)
    try:
        return _build(data, source)
    except _Bad as bad:
        line = _find_line(text, bad.key)
        where = f"{source}:{line}" if line else source
        raise misconfigured(f"config {where}: {bad.key}: {bad.message}", config=source, config_key=bad.key) from None


def _build(data: Mapping[str, Any], source: str) -> Config:
    values: dict[str, Any] = {"source": source}
    for section, body in data.items():
        if section not in SCHEMA:
            raise _Bad(section, f"unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise _Bad(section, "must be a table")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if section == "borg" and key == "binaries":
                values["binaries"] = _binaries(dotted, value)
            elif section == "borg" and key == "env":
                values["borg_env"] = _borg_env(dotted, value)
            elif key in SCHEMA[section]:
                attr, check = SCHEMA[section][key]
                values[attr] = check(dotted, value)
            else:
                known = [*SCHEMA[section], *(["binaries", "env"] if section == "borg" else [])]
                raise _Bad(dotted, f"unknown key (known in [{section}]: {', '.join(known)})")
    config = Config(**values)
    if config.borg_default not in config.binaries:
        raise _Bad("borg.default", f"names no binary in [borg.binaries] ({', '.join(config.binaries)})")
    return config


def _binaries(key: str, value: object) -> dict[str, BinarySpec]:
    if not isinstance(value, dict) or not value:
        raise _Bad(key, "must be a table of name = path")
    return {name: _binary(f"{key}.{name}", name, spec) for name, spec in value.items()}


def _borg_env(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Bad(key, "must be a table of BORG_NAME = value")
    env: dict[str, str] = {}
    for name, val in value.items():
        if not patterns.borg_env_name(name):
            raise _Bad(f"{key}.{name}", "only BORG_* variables may be set")
        if name in KEY_ONLY_ENV:
            raise _Bad(f"{key}.{name}", KEY_ONLY_ENV[name])
        if not isinstance(val, str) or any(not ch.isprintable() for ch in val):
            raise _Bad(f"{key}.{name}", "must be a string without control characters")
        env[name] = val
    return env


def config_path(explicit: str | None, environ: Mapping[str, str]) -> tuple[str, bool]:
    """Which file to read, and whether it must exist (only the built-in default may be absent)."""
    if explicit is not None:  # even "": a --config= typo must not fall back to the default file
        return explicit, True
    from_env = environ.get(CONFIG_ENV)
    if from_env:
        return from_env, True
    return DEFAULT_CONFIG_PATH, False


def untrusted(st: os.stat_result) -> str | None:
    """Why a file that decides what every connection runs (the config, a borg binary) is not trusted, or None.

    Whoever can write it chooses the binary and the confinement of every backup user: only root
    or the gate's own user may own it, and neither the group nor others may write it.
    """
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not by root or this user"
    writers = [who for who, bit in (("the group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit]
    if writers:
        return f"writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def load_config(path: str, required: bool) -> Config:
    try:
        # O_NONBLOCK: a FIFO (or device) at the path must not block the connection before fstat says no.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        if required:
            raise misconfigured(f"config {path}: file not found", config=path) from None
        return Config()
    except OSError as exc:
        raise misconfigured(f"config {path}: cannot read: {exc.strerror}", config=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise misconfigured(f"config {path}: not a regular file", config=path)
        problem = untrusted(st)
        if problem is not None:
            raise misconfigured(f"config {path}: {problem}", config=path)
        raw = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise misconfigured(f"config {path}: cannot read: {exc.strerror}", config=path) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:  # cut short, it could parse without its last settings
        raise misconfigured(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes", config=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise misconfigured(f"config {path}: not UTF-8", config=path) from None
    hint = configcache.state_dir_hint(text, DEFAULT_STATE_DIR)
    data = configcache.lookup(path, raw, hint)
    if data is not None:
        return parse_config(text, path, data)
    data = _toml(text, path)
    config = parse_config(text, path, data)  # only a valid config is worth keeping
    configcache.store(path, raw, data, config.state_dir)
    return config
