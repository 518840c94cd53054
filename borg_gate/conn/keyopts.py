"""The options a sysadmin puts on the authorized_keys line: ``command="borg-gate …"``.

They come from the host, never from the client, so a mistake in them is a
misconfiguration: refused with the misconfigured exit code, never a usage dump.

Each option is declared once, in ``OPTIONS``: its names, how often it is given, what its value
is, its help and what borg serve gets from it. Every connection reads the key line with
``scan``, which walks that table and takes each word as argparse takes it, refusing with
argparse's words: argparse, with the re, gettext and enum it imports, costs a connection about
6 ms of CPU (bench/overhead). keyhelp makes argparse from the same table for people (``borg-gate
--help``, a key line asking for help) and authorize; check and tests/test_keyopts_docs.py
(authorized_keys.example, README.md) read it too. tests/test_keyopts_hypothesis.py holds scan to argparse.
"""

from __future__ import annotations

from borg_gate.base import patterns
from borg_gate.base.errors import misconfigured, shown
from borg_gate.base.values import frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
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


# --------------------------------------------------------------------------- the table

FLAG: Final = 0  # takes no value: sets True
ONE: Final = 1  # takes a value: the last one counts
EACH: Final = 2  # takes a value each time it is given: all count, in order


@frozen
class KeyOption:
    """One option of the key line. OPTIONS declares each once; everything else about them is read from it."""

    names: tuple[str, ...]  # as the key line spells it; authorize writes the longest
    kind: int  # FLAG, ONE or EACH
    help: str  # its line in --help
    metavar: str | None = None  # its value in --help and authorized_keys.example; None for a flag or a choice
    convert: Callable[[str], object] = str  # int, float or str: argparse's type=, refused in argparse's words
    choices: tuple[str, ...] = ()  # the only values it takes
    # What borg serve gets from it, one of two ways or neither (the gate's own option):
    serve: str | None = None  # data: borg serve's own option it is passed on as, the same for every borg
    # logic: the function of borg_gate.conn.policy that translates it per borg, or refuses (all of
    # them applied by policy.key_serve_options); README.md's table "Key permissions per borg version"
    translated_by: str | None = None

    @property
    def dest(self) -> str:
        """Its attribute in Words (argparse's dest: the first name without dashes)."""
        return self.names[0].lstrip("-").replace("-", "_")

    def unset(self) -> object:
        """What Words holds for it while the key line does not give it."""
        return [] if self.kind == EACH else None if self.kind == ONE else False


# In --help's order. A new option is added here, to Words and to parse_key_options (which says what
# it means); tests/test_keyopts_docs.py then asks for it in authorized_keys.example and README.md.
OPTIONS: Final = (
    KeyOption(("--client",), ONE, "identity for budgets, logs and {client} (default: unix user)", "NAME"),
    KeyOption(("--config",), ONE, "config file (default: $BORG_GATE_CONFIG, else /etc/borg-gate/config.toml)", "PATH"),
    KeyOption(
        ("--restrict-to-path",),
        EACH,
        "confine to repositories under PATH (repeatable; {client} expands)",
        "PATH",
        serve="--restrict-to-path",
    ),
    KeyOption(
        ("--restrict-to-repository",),
        EACH,
        "confine to exactly the repository at PATH (repeatable; {client} expands)",
        "PATH",
        serve="--restrict-to-repository",
    ),
    KeyOption(
        ("--append-only",),
        FLAG,
        "no deletions: borg 1.x --append-only, borg 2 --permissions=no-delete",
        translated_by="permission_options",
    ),
    KeyOption(
        ("--permissions",),
        ONE,
        "repository permissions",
        choices=tuple(p.value for p in PERMISSIONS),
        translated_by="permission_options",
    ),
    KeyOption(
        ("--storage-quota",),
        ONE,
        "repository quota, e.g. 500G (borg 1.x, 2.0b1-b9)",
        "SIZE",
        translated_by="quota_options",
    ),
    KeyOption(("--borg",), ONE, "binary from [borg.binaries] serving a client that asks for plain borg", "NAME"),
    KeyOption(("--max-sessions",), ONE, "this client's concurrent sessions", "N", int),
    KeyOption(("--wait",), ONE, "how long this key's connections may queue", "SECONDS", float),
    KeyOption(("--supervise",), FLAG, "run borg serve as a child and log session.ended"),
    KeyOption(("--priority",), FLAG, "may take reserved host slots; waits ahead of normal keys (restores)"),
    KeyOption(("--max-sessions-per-repo",), ONE, "concurrent sessions per repository the gate knows", "N", int),
)
BY_NAME: Final = {name: option for option in OPTIONS for name in option.names}
HELP: Final = ("-h", "--help")


# --------------------------------------------------------------------------- the key line's words


class Words:
    """What the key line gave each option before any check: one attribute per OPTIONS entry, its dest.

    Declared here for mypy only (parse_key_options reads them typed); __init__ makes them from
    OPTIONS, and tests/test_keyopts.py holds the two to each other. argparse's Namespace for --help.
    """

    client: str | None
    config: str | None
    restrict_to_path: list[str]
    restrict_to_repository: list[str]
    append_only: bool
    permissions: str | None
    storage_quota: str | None
    borg: str | None
    max_sessions: int | None
    wait: float | None
    supervise: bool
    priority: bool
    max_sessions_per_repo: int | None

    def __init__(self) -> None:
        for option in OPTIONS:
            setattr(self, option.dest, option.unset())


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
    if word in BY_NAME or word in HELP:
        return word, None
    if len(word) == 1:
        return None
    name, eq, value = word.partition("=")
    if eq and (name in BY_NAME or name in HELP):
        return name, value
    if word.startswith("-h"):
        return "-h", word[2:]
    if _negative_number(word) or " " in word:
        return None
    return "", None


def _refuse(message: str) -> NoReturn:
    raise misconfigured(f"key line: {shown(message, 160)}")


def _value(option: KeyOption, word: str) -> object:
    """The word as the option's value, or refused as argparse refuses it (its _get_value, _check_value)."""
    try:
        value = option.convert(word)  # int() and float() themselves: " 3", "1_000", "nan" as argparse takes them
    except ValueError:
        _refuse(f"argument {'/'.join(option.names)}: invalid {option.convert.__name__} value: {word!r}")
    if option.choices and value not in option.choices:
        choices = ", ".join(repr(c) for c in option.choices)  # Python 3.11's argparse's words (Debian 12)
        _refuse(f"argument {'/'.join(option.names)}: invalid choice: {value!r} (choose from {choices})")
    return value


def scan(argv: list[str]) -> Words:
    """The key line's words by option, refused where argparse (keyhelp.build_parser) refuses, and as it says.

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
        found = _option(word)
        if found is None or not found[0]:
            extras.append(word)
            continue
        name, value = found
        if name in HELP:
            from borg_gate.conn import keyhelp  # argparse: only for a person asking

            return keyhelp.build_parser().parse_args(argv, Words())  # prints help and exits
        option = BY_NAME[name]
        if option.kind == FLAG:
            if value is not None:
                _refuse(f"argument {'/'.join(option.names)}: ignored explicit argument {value!r}")
            setattr(words, option.dest, True)
            continue
        if value is None and i < len(argv) and argv[i] != "--" and _option(argv[i]) is None:
            value = argv[i]
            i += 1
        if value is None or value == "--":
            _refuse(f"argument {'/'.join(option.names)}: expected one argument")
        if option.kind == EACH:
            getattr(words, option.dest).append(_value(option, value))
        else:
            setattr(words, option.dest, _value(option, value))
    if extras:
        _refuse("unrecognized arguments: " + " ".join(extras))
    return words


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
