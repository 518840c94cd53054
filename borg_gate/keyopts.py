"""The options a sysadmin puts on the authorized_keys line: ``command="borg-gate …"``.

They come from the host, never from the client, so a mistake in them is a
misconfiguration: refused with the misconfigured exit code, never a usage dump.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import sys

from borg_gate.errors import Kind, misconfigured, shown
from borg_gate.values import frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final, NoReturn

CLIENT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SIZE_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)")
SIZE_FACTORS: Final = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
MIN_QUOTA: Final = 10 * 10**6  # borg refuses quotas under 10M


class Permission(enum.Enum):
    """What a key may do to its repositories, from most to least."""

    ALL = "all"
    NO_DELETE = "no-delete"  # borg 1.x: --append-only; borg 2.0b18+: --permissions=no-delete
    WRITE_ONLY = "write-only"
    READ_ONLY = "read-only"


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
    m = SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * SIZE_FACTORS[m.group(2)])


class _Formatter(argparse.HelpFormatter):
    # argparse's default asks shutil for the terminal width: importing shutil (bz2, lzma, …)
    # costs every connection ~2-3 ms for help text it never prints. os alone can ask.
    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(2).columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=width)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise misconfigured(f"key line: {shown(message, 160)}")

    def print_help(self, file: object = None) -> None:
        # stdout is borg's protocol channel: help goes there only for a person at a terminal.
        super().print_help(sys.stdout if sys.stdout.isatty() else sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="borg-gate",
        formatter_class=_Formatter,
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
    p.add_argument("--permissions", choices=[m.value for m in Permission], help="repository permissions")
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
    ns = build_parser().parse_args(argv)
    if ns.client is not None and not CLIENT_RE.fullmatch(ns.client):
        raise misconfigured(f"key line: --client {shown(ns.client, 70)!r} must match {CLIENT_RE.pattern}")
    permission = Permission(ns.permissions) if ns.permissions else Permission.ALL
    if ns.append_only:
        if permission not in (Permission.ALL, Permission.NO_DELETE):
            raise misconfigured(f"key line: --append-only contradicts --permissions {permission.value}")
        permission = Permission.NO_DELETE
    quota = None
    if ns.storage_quota is not None:
        try:
            quota = parse_size(ns.storage_quota)
        except ValueError:
            raise misconfigured(f"key line: --storage-quota {shown(ns.storage_quota, 30)!r} is not a size") from None
        if quota < MIN_QUOTA:
            raise misconfigured("key line: --storage-quota must be at least 10M")
    if ns.borg is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", ns.borg):
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
        permission=permission,
        storage_quota=quota,
        borg=ns.borg,
        max_sessions=ns.max_sessions,
        wait=ns.wait,
        supervise=ns.supervise,
        priority=ns.priority,
        max_sessions_per_repo=ns.max_sessions_per_repo,
    )
