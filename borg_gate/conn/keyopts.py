"""The options a sysadmin puts on the authorized_keys line: ``command="borg-gate …"``.

They come from the host, never from the client, so a mistake in them is a
misconfiguration: refused with the misconfigured exit code, never a usage dump.

Every connection reads them, so they are read from a table (``OPTIONS``) by ``scan``, which
takes each word as argparse takes it and refuses with argparse's words: argparse, with the re,
gettext and enum it imports, costs a connection about 6 ms of CPU (bench/overhead).
``build_parser`` stays for people: ``borg-gate --help``, and authorize's options; a key line
asking for help is handed to it. tests/test_keyopts_hypothesis.py holds the two to each other.
"""

from __future__ import annotations

from borg_gate.base import patterns
from borg_gate.base.errors import Kind, misconfigured, shown
from borg_gate.base.values import frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import ClassVar, Final, NoReturn


CLIENT_PATTERN: Final = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # patterns.client_name, as the refusal names it
SIZE_FACTORS: Final = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
MIN_QUOTA: Final = 10 * 10**6  # borg refuses quotas under 10M


@frozen
class Permission:
    """What a key may do to its repositories: one of the four values below, compared with ``is``."""

    value: str

    ALL: ClassVar[Permission]
    NO_DELETE: ClassVar[Permission]  # borg 1.x: --append-only; borg 2.0b18+: --permissions=no-delete
    WRITE_ONLY: ClassVar[Permission]
    READ_ONLY: ClassVar[Permission]


Permission.ALL = Permission("all")
Permission.NO_DELETE = Permission("no-delete")
Permission.WRITE_ONLY = Permission("write-only")
Permission.READ_ONLY = Permission("read-only")
PERMISSIONS: Final = (Permission.ALL, Permission.NO_DELETE, Permission.WRITE_ONLY, Permission.READ_ONLY)  # most first


def permission(value: str) -> Permission:
    """The Permission named ``value`` (ValueError for none)."""
    for p in PERMISSIONS:
        if p.value == value:
            return p
    raise ValueError(f"not a permission: {value!r}")


@frozen
class KeyOptions:
    client: str | None = None
    config: str | None = None
    restrict_to_paths: tuple[str, ...] = ()
    restrict_to_repositories: tuple[str, ...] = ()
    permission: Permission = Permission.ALL
    storage_quota: int | None = None  # bytes
    borg: str | None = None
    max_sessions: int | None = None
    wait: float | None = None
    supervise: bool = False
    priority: bool = False
    max_sessions_per_repo: int | None = None


def parse_size(text: str) -> int:
    """borg's size syntax (1234, 500M, 1.5T; decimal units) in bytes."""
    parts = patterns.size(text)
    if parts is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = parts
    return int(float(number) * SIZE_FACTORS[unit])


# --------------------------------------------------------------------------- the key line's words


class Words:
    """What the key line gave each option before any check: argparse's Namespace for build_parser."""

    def __init__(self) -> None:
        self.client: str | None = None
        self.config: str | None = None
        self.restrict_to_path: list[str] = []
        self.restrict_to_repository: list[str] = []
        self.append_only = False
        self.permissions: str | None = None
        self.storage_quota: str | None = None
        self.borg: str | None = None
        self.max_sessions: int | None = None
        self.wait: float | None = None
        self.supervise = False
        self.priority = False
        self.max_sessions_per_repo: int | None = None


class _Refused(Exception):
    """A word its option cannot take, in argparse's words."""


def _choice(value: str) -> str:
    if any(p.value == value for p in PERMISSIONS):
        return value
    choices = ", ".join(repr(p.value) for p in PERMISSIONS)
    raise _Refused(f"invalid choice: {value!r} (choose from {choices})")


def _number(convert: Callable[[str], object]) -> Callable[[str], object]:
    def checked(value: str) -> object:
        try:
            return convert(value)  # int() and float() themselves: " 3", "1_000", "nan" as argparse takes them
        except ValueError:
            raise _Refused(f"invalid {convert.__name__} value: {value!r}") from None

    return checked


FLAG: Final = 0  # takes no value: sets True
ONE: Final = 1  # takes a value: the last one counts
EACH: Final = 2  # takes a value each time it is given: all count, in order

# option -> (Words attribute, FLAG/ONE/EACH, what makes the word its value: never called for a FLAG),
# build_parser's options exactly.
OPTIONS: Final[dict[str, tuple[str, int, Callable[[str], object]]]] = {
    "--client": ("client", ONE, str),
    "--config": ("config", ONE, str),
    "--restrict-to-path": ("restrict_to_path", EACH, str),
    "--restrict-to-repository": ("restrict_to_repository", EACH, str),
    "--append-only": ("append_only", FLAG, str),
    "--permissions": ("permissions", ONE, _choice),
    "--storage-quota": ("storage_quota", ONE, str),
    "--borg": ("borg", ONE, str),
    "--max-sessions": ("max_sessions", ONE, _number(int)),
    "--wait": ("wait", ONE, _number(float)),
    "--supervise": ("supervise", FLAG, str),
    "--priority": ("priority", FLAG, str),
    "--max-sessions-per-repo": ("max_sessions_per_repo", ONE, _number(int)),
}
HELP: Final = ("-h", "--help")


def _negative_number(word: str) -> bool:
    """argparse's ``^-\\d+$|^-\\d*\\.\\d+$``: ``$`` also before a last newline, ``\\d`` any decimal digit."""
    body = word[1:-1] if word.endswith("\n") else word[1:]
    whole, dot, fraction = body.partition(".")
    if not dot:
        return body.isdecimal()
    return fraction.isdecimal() and (not whole or whole.isdecimal())


def _option(word: str) -> tuple[str, str | None] | None:
    """How argparse reads a word (its _parse_optional, for these options and no abbreviations).

    None: a value (argparse's positional). Else the option it names, "" for none of ours, and the
    value given after ``=``. ``-hVALUE``, a short option's attached value, names -h.
    """
    if not word.startswith("-"):
        return None
    if word in OPTIONS or word in HELP:
        return word, None
    if len(word) == 1:
        return None
    name, eq, value = word.partition("=")
    if eq and (name in OPTIONS or name in HELP):
        return name, value
    if word.startswith("-h"):
        return "-h", word[2:]
    if _negative_number(word) or " " in word:
        return None
    return "", None


def _refuse(message: str) -> NoReturn:
    raise misconfigured(f"key line: {shown(message, 160)}")


def scan(argv: list[str]) -> Words:
    """The key line's words by option, refused where argparse (build_parser) refuses, and as it says.

    Except ``--opt=--``: argparse drops the ``--`` and stores an empty list, which later checks
    took for a value (or crashed on); here it is a missing value, as ``--opt --`` is.
    """
    words = Words()
    extras: list[str] = []  # refused at the end, all together, after any other mistake
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":  # the rest are values, and no option takes them
            extras += argv[i - 1 :]
            break
        option = _option(word)
        if option is None or not option[0]:
            extras.append(word)
            continue
        name, value = option
        if name in HELP:
            return build_parser().parse_args(argv, Words())  # a person: argparse prints help and exits
        attr, kind, convert = OPTIONS[name]
        if kind == FLAG:
            if value is not None:
                _refuse(f"argument {name}: ignored explicit argument {value!r}")
            setattr(words, attr, True)
            continue
        if value is None and i < len(argv) and argv[i] != "--" and _option(argv[i]) is None:
            value = argv[i]
            i += 1
        if value is None or value == "--":
            _refuse(f"argument {name}: expected one argument")
        try:
            converted = convert(value)
        except _Refused as exc:
            _refuse(f"argument {name}: {exc}")
        if kind == EACH:
            getattr(words, attr).append(converted)
        else:
            setattr(words, attr, converted)
    if extras:
        _refuse("unrecognized arguments: " + " ".join(extras))
    return words


# --------------------------------------------------------------------------- for people: --help


def build_parser() -> argparse.ArgumentParser:
    """The key options for people (``borg-gate --help``, authorize), agreeing with OPTIONS."""
    import argparse
    import os
    import sys

    class Formatter(argparse.HelpFormatter):
        # argparse's default asks shutil for the terminal width: importing shutil (bz2, lzma, …)
        # costs ~2-3 ms for help text a key line's error never prints. os alone can ask.
        def __init__(self, prog: str) -> None:
            try:
                width = os.get_terminal_size(2).columns - 2
            except OSError:
                width = 78
            super().__init__(prog, width=width)

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            _refuse(message)

        def print_help(self, file: object = None) -> None:
            # stdout is borg's protocol channel: help goes there only for a person at a terminal.
            super().print_help(sys.stdout if sys.stdout.isatty() else sys.stderr)

    p = Parser(
        prog="borg-gate",
        formatter_class=Formatter,
        description=(
            "Forced command for borg repositories: vets SSH_ORIGINAL_COMMAND, confines the key, "
            "takes a session slot and execs borg serve. Put it in authorized_keys as "
            'command="borg-gate --client NAME …",restrict ssh-ed25519 AAAA…. '
            "Admin commands: borg-gate status | metrics | repos | check | authorize (see borg-gate CMD --help)."
        ),
        epilog=(
            "A refused connection gets one line on stderr and one of these exit codes: "
            + ", ".join(f"{kind.value} {kind.label}" for kind in Kind)
            + "; after exec the exit code is borg serve's."
        ),
        allow_abbrev=False,
    )
    p.add_argument("--client", metavar="NAME", help="identity for budgets, logs and {client} (default: unix user)")
    p.add_argument(
        "--config", metavar="PATH", help="config file (default: $BORG_GATE_CONFIG, else /etc/borg-gate/config.toml)"
    )
    p.add_argument(
        "--restrict-to-path",
        metavar="PATH",
        action="append",
        default=[],
        help="confine to repositories under PATH (repeatable; {client} expands)",
    )
    p.add_argument(
        "--restrict-to-repository",
        metavar="PATH",
        action="append",
        default=[],
        help="confine to exactly the repository at PATH (repeatable; {client} expands)",
    )
    p.add_argument(
        "--append-only",
        action="store_true",
        help="no deletions: borg 1.x --append-only, borg 2 --permissions=no-delete",
    )
    p.add_argument("--permissions", choices=[m.value for m in PERMISSIONS], help="repository permissions")
    p.add_argument("--storage-quota", metavar="SIZE", help="repository quota, e.g. 500G (borg 1.x, 2.0b1-b9)")
    p.add_argument(
        "--borg", metavar="NAME", help="binary from [borg.binaries] serving a client that asks for plain borg"
    )
    p.add_argument("--max-sessions", metavar="N", type=int, help="this client's concurrent sessions")
    p.add_argument("--wait", metavar="SECONDS", type=float, help="how long this key's connections may queue")
    p.add_argument("--supervise", action="store_true", help="run borg serve as a child and log session.ended")
    p.add_argument(
        "--priority", action="store_true", help="may take reserved host slots; waits ahead of normal keys (restores)"
    )
    p.add_argument(
        "--max-sessions-per-repo", metavar="N", type=int, help="concurrent sessions per repository the gate knows"
    )
    return p


def _path(option: str, value: str) -> str:
    if not value.startswith("/"):
        raise misconfigured(f"key line: {option} needs an absolute path, not {shown(value, 80)!r}")
    if any(not ch.isprintable() for ch in value):
        raise misconfigured(f"key line: {option} has a control character")
    return value


def parse_key_options(argv: list[str]) -> KeyOptions:
    ns = scan(argv)
    if ns.client is not None and not patterns.client_name(ns.client):
        raise misconfigured(f"key line: --client {shown(ns.client, 70)!r} must match {CLIENT_PATTERN}")
    given = permission(ns.permissions) if ns.permissions else Permission.ALL
    if ns.append_only:
        if given not in (Permission.ALL, Permission.NO_DELETE):
            raise misconfigured(f"key line: --append-only contradicts --permissions {given.value}")
        given = Permission.NO_DELETE
    quota = None
    if ns.storage_quota is not None:
        try:
            quota = parse_size(ns.storage_quota)
        except ValueError:
            raise misconfigured(f"key line: --storage-quota {shown(ns.storage_quota, 30)!r} is not a size") from None
        if quota < MIN_QUOTA:
            raise misconfigured("key line: --storage-quota must be at least 10M")
    if ns.borg is not None and not patterns.binary_name(ns.borg):
        raise misconfigured(f"key line: --borg {shown(ns.borg, 40)!r} is not a binary name")
    if ns.max_sessions is not None and not 1 <= ns.max_sessions <= 10000:
        raise misconfigured("key line: --max-sessions must be between 1 and 10000")
    if ns.wait is not None and not 0 <= ns.wait <= 7 * 86400:
        raise misconfigured("key line: --wait must be between 0 and 604800 seconds")
    if ns.max_sessions_per_repo is not None and not 1 <= ns.max_sessions_per_repo <= 10000:
        raise misconfigured("key line: --max-sessions-per-repo must be between 1 and 10000")
    return KeyOptions(
        client=ns.client,
        config=ns.config,
        restrict_to_paths=tuple(_path("--restrict-to-path", p) for p in ns.restrict_to_path),
        restrict_to_repositories=tuple(_path("--restrict-to-repository", p) for p in ns.restrict_to_repository),
        permission=given,
        storage_quota=quota,
        borg=ns.borg,
        max_sessions=ns.max_sessions,
        wait=ns.wait,
        supervise=ns.supervise,
        priority=ns.priority,
        max_sessions_per_repo=ns.max_sessions_per_repo,
    )
