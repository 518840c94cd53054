"""``borg-gate authorize``: the authorized_keys line for one client's key, printed or installed.

The line is ``command="borg-gate --client NAME …",restrict TYPE BASE64 COMMENT``, quoted so
that sshd's option parser and the shell sshd runs it with give back exactly the intended
argv: every line is parsed back with borg_gate.admin.authkeys and vetted with ``check``'s own
key-line checks before it is printed or written. ``--install FILE`` adds the line, or
replaces the line holding the same key, under a lock, through a temp file and a rename,
keeping the file's mode and owner and the previous version as FILE.bak.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from typing import Final

import filelock

from borg_gate.admin import authkeys, check, safeopen
from borg_gate.base import config, statedir
from borg_gate.base.errors import Refusal, shown
from borg_gate.conn import keyhelp, keyopts

MAX_INPUT: Final = 64 << 10
FROM_RE: Final = re.compile(r"[A-Za-z0-9.:*?!,/%_-]{1,1024}")


class Refused(Exception):
    """authorize will not print or write this line; the message says why."""


# --------------------------------------------------------------------------- the key


def read_public_key(text: str) -> authkeys.PublicKey:
    """One public key line as ssh-keygen writes it; no options, no second line, nothing hidden."""
    if "\0" in text:
        raise Refused("the input holds a NUL byte")
    body = text.removesuffix("\n").removesuffix("\r")
    if "\n" in body or "\r" in body:
        raise Refused("the input has more than one line: give one public key")
    parsed = authkeys.parse_line(body, 1)
    if parsed is None:
        raise Refused("the input is empty or a comment, not a public key")
    if isinstance(parsed, authkeys.BadLine):
        raise Refused(f"not a public key: {parsed.reason}")
    if parsed.options.items or parsed.options_text:
        raise Refused(f"the input carries its own options ({shown(parsed.options_text, 60)}): give a bare public key")
    key = parsed.key
    if key.key_type.cert:
        raise Refused(f"{key.type} is a certificate: give the plain public key")
    comment = key.comment.rstrip(" \t")
    if any(not ch.isprintable() for ch in comment.replace("\t", " ")):
        raise Refused("the key's comment holds control characters")
    return authkeys.PublicKey(key.type, key.blob, comment)


def load_input(source: str) -> str:
    if source == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read(MAX_INPUT + 1)
        except OSError as exc:
            raise Refused(f"{source}: {exc.strerror}") from None
    if len(data) > MAX_INPUT:
        raise Refused(f"the input is over {MAX_INPUT} bytes: not one public key")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the input is not UTF-8") from None


# --------------------------------------------------------------------------- the line


def key_argv(ns: argparse.Namespace) -> list[str]:
    """The gate's key options, in the table's order (keyopts.OPTIONS), from what was given to authorize."""
    out: list[str] = []
    for option in keyopts.OPTIONS:
        value = getattr(ns, option.dest)
        flag = max(option.names, key=len)
        if option.kind == keyopts.FLAG:
            out += [flag] if value else []
            continue
        for item in value if option.kind == keyopts.EACH else [] if value is None else [value]:
            out += [flag, _number(item) if isinstance(item, float) else str(item)]
    return out


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def build_line(gate: str, argv: Sequence[str], key: authkeys.PublicKey, source: str | None) -> str:
    """The line, proven to parse back to the same key and argv the way sshd and the shell will."""
    extra = [authkeys.Option("from", source)] if source else []
    try:
        line = authkeys.format_line([gate, *argv], key, extra)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    back = authkeys.parse_line(line, 1)
    if not isinstance(back, authkeys.KeyLine) or not back.key.same_key(key) or back.options.command is None:
        raise Refused(f"internal error: the line does not parse back: {shown(line, 200)}")
    if authkeys.split_command(back.options.command) != [gate, *argv] or any(back.options.allowed().values()):
        raise Refused(f"internal error: the line does not parse back: {shown(line, 200)}")
    return line


def vet(line: str, config_path: str | None, user: check.User | None, label: str) -> list[check.Finding]:
    """check's findings for the line alone, as if it were line 1 of the target file."""
    report = check.CheckReport()
    default_path, required = config.config_path(config_path, os.environ)
    site = check.Site(report, default_path, required)
    check.FileCheck(site, report, label, user, []).run((line + "\n").encode())
    return [f for f in report.findings if f.severity != check.INFO]


# --------------------------------------------------------------------------- install


def merge(old: bytes, line: str, key: authkeys.PublicKey) -> tuple[bytes, str]:
    """old with line in place of the first line holding key (later ones dropped), else appended."""
    out: list[bytes] = []
    replaced: int | None = None
    dropped: list[int] = []
    chunks = old.split(b"\n")
    trailing = chunks and chunks[-1] == b""
    if trailing:
        chunks.pop()
    for number, raw in enumerate(chunks, start=1):
        text = raw.decode("utf-8", "surrogateescape")
        parsed = authkeys.parse_line(text, number)
        if isinstance(parsed, authkeys.KeyLine) and parsed.key.same_key(key):
            if replaced is None:
                replaced = number
                out.append(line.encode() + (b"\r" if raw.endswith(b"\r") else b""))
            else:
                dropped.append(number)
            continue
        out.append(raw)
    if replaced is None:
        out.append(line.encode())
        what = "added"
    else:
        what = f"replaced line {replaced}"
    if dropped:
        what += f", removed later line(s) {', '.join(map(str, dropped))} with the same key (sshd never used them)"
    return b"".join(chunk + b"\n" for chunk in out), what


def install(path: str, line: str, key: authkeys.PublicKey) -> str:
    """Add or replace key's line in path atomically; a message saying what happened."""
    directory = os.path.dirname(os.path.abspath(path))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The file itself is renamed over, so the lock is on its directory (filelock's flock).
        filelock.lock_descriptor(dfd)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file (a symlink?): give the real file")
        old = b""
        if st is not None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                old = fh.read()
        new, what = merge(old, line, key)
        if new == old:
            return f"{path}: already present (line unchanged)"
        _write(path, dfd, new, st)
        return f"{path}: {what}" + ("" if st is None else f"; previous version in {path}.bak")
    finally:
        os.close(dfd)  # also releases the lock


def new_file_owner(path: str, parent: os.stat_result) -> tuple[int, int, int]:
    """(mode, uid, gid) for a new authorized_keys file: sshd reads it with its user's rights.

    In a user's own directory (~/.ssh) it is the user's, 0600. In a root-owned directory
    (AuthorizedKeysFile /etc/ssh/authorized_keys/%u) it is root's and readable, 0644, so the
    user can read but not change it; root's own keys stay 0600.
    """
    if parent.st_uid != 0:
        return 0o600, parent.st_uid, parent.st_gid
    user = check.keys_owner(path, parent)
    return (0o600 if user is not None and user.uid == 0 else 0o644), 0, parent.st_gid


def _write(path: str, dfd: int, data: bytes, st: os.stat_result | None) -> None:
    """Replace authorized_keys (statedir.replace_file, durable), keeping mode and owner, after its backup."""
    if st is not None:
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    else:
        mode, uid, gid = new_file_owner(path, os.fstat(dfd))
    owner: tuple[int, int] | None = (uid, gid)
    if os.geteuid() != 0:  # only root may give a file away; anyone else writes their own
        if st is not None and uid != os.geteuid():
            raise Refused(f"cannot keep {path} owned by {safeopen.owner_name(uid)}: run as root")
        owner = None
    if st is not None:
        _backup(path, st)
    statedir.replace_file(dfd, os.path.basename(path), data, mode, owner=owner, durable=True)


def _backup(path: str, st: os.stat_result) -> None:
    """path.bak becomes the current version: a hard link keeps its mode and owner exactly."""
    bak = f"{path}.bak"
    tmp = os.path.join(os.path.dirname(path), statedir.temp_name(os.path.basename(bak)))  # ~/.ssh is the user's
    try:
        os.link(path, tmp, follow_symlinks=False)
    except OSError:
        shutil.copy2(path, tmp, follow_symlinks=False)
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
    os.replace(tmp, bak)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="borg-gate authorize",
        description="Print the authorized_keys line that forces borg-gate for one client's public key, "
        "or install it with --install. Key options are the gate's (see borg-gate --help).",
    )
    keyhelp.add_options(p)  # every key option, from keyopts' table: what the line will say
    p.add_argument("--install", metavar="FILE", help="add or replace the line in this authorized_keys file")
    p.add_argument(
        "--gate", metavar="PATH", default="borg-gate", help="the gate's command (default: borg-gate, found in PATH)"
    )
    p.add_argument("--from", dest="source", metavar="PATTERNS", help='add from="PATTERNS" (source addresses)')
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the line, only install it")
    p.add_argument("pubkey", nargs="?", default="-", metavar="PUBKEY_FILE", help="public key file, or - for stdin")
    return p


def authorize(ns: argparse.Namespace) -> tuple[str, authkeys.PublicKey, list[check.Finding]]:
    argv = key_argv(ns)
    try:
        keyopts.parse_key_options(argv)
    except Refusal as exc:
        raise Refused(exc.reason) from None
    if ns.source is not None and not FROM_RE.fullmatch(ns.source):
        raise Refused(f"--from {shown(ns.source, 60)!r}: give address patterns like 192.0.2.7,2001:db8::/32")
    key = read_public_key(load_input(ns.pubkey))
    line = build_line(ns.gate, argv, key, ns.source)
    user = None
    if ns.install:
        with contextlib.suppress(OSError):
            user = check.keys_owner(ns.install, os.stat(ns.install))
    findings = vet(line, ns.config, user, ns.install or "<line>")
    errors = [f for f in findings if f.severity == check.ERROR]
    if errors:
        raise Refused("; ".join(f.message for f in errors))
    return line, key, findings


def main(argv: list[str]) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.client is None:
        parser.error("--client NAME is required: it names the client in budgets, logs and {client}")
    try:
        line, key, findings = authorize(ns)
        for finding in findings:
            print(f"borg-gate: {finding.severity}: {finding.message} [{finding.code}]", file=sys.stderr)
        if not ns.quiet:
            print(line)
            sys.stdout.flush()
        if ns.install:
            print(f"borg-gate: {install(ns.install, line, key)}", file=sys.stderr)
    except Refused as exc:
        print(f"borg-gate: authorize: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"borg-gate: authorize: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
