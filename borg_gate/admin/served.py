"""Which unix user serves which client: read from the authorized_keys files sshd reads for them.

root's monitoring believes a member's counters about a client only when that member serves
the client (borg_gate.admin.counterfiles). The gate's own source of that fact is the key line, so
this reads key lines too: every gate key in the user's authorized_keys files (sshd's
``AuthorizedKeysFile``, as ``sshd -T`` reports it, %h, %u, %U and %% expanded; relative
patterns are below the user's home), and in the files root names with ``--authorized-keys``.
A client is the key's ``--client``, else the user's name, exactly as the gate computes it.

These files lie in users' directories: each is opened by borg_gate.admin.safeopen (a symlink owned
by a non-root user is never followed), must be a regular file owned by root or by the user
it is read for, and at most MAX_BYTES of it are read. A user none of whose files can be read
that way is not in the map: her counters are then published under her own name, never merged.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from borg_gate import cli
from borg_gate.admin import authkeys, safeopen
from borg_gate.base.errors import Refusal
from borg_gate.conn import keyopts, policy

MAX_BYTES: Final = 4 << 20  # sshd reads lines of at most 8 KiB; a few thousand keys fit
DEFAULT_PATTERNS: Final = (".ssh/authorized_keys", ".ssh/authorized_keys2")  # sshd's default


def read_keys(path: str, owners: Iterable[int] | None = None) -> tuple[bytes, os.stat_result]:
    """An authorized_keys file, reached without following a non-root symlink; raises OSError.

    ``owners``: the uids the file may belong to (None: any, for a file root named itself).
    """
    fd, _ = safeopen.open_path(path, directory=False)
    try:
        st = os.fstat(fd)
        if owners is not None and st.st_uid not in owners:
            raise PermissionError(1, f"owned by uid {st.st_uid}, not by root or the user", path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a regular file", path)
        return os.read(fd, MAX_BYTES), st
    finally:
        os.close(fd)


def gate_keys(data: bytes) -> Iterator[tuple[int, keyopts.KeyOptions | Refusal]]:
    """(line number, the key's options or why they are refused) for every gate key line (admin commands left out)."""
    for line in authkeys.parse_file(data):
        if isinstance(line, authkeys.BadLine) or line.options.command is None:
            continue
        try:
            words = authkeys.split_command(line.options.command)
        except authkeys.ShellError:
            continue
        if not words or os.path.basename(words[0]) != "borg-gate" or (len(words) > 1 and words[1] in cli.ADMIN):
            continue
        try:
            yield line.number, keyopts.parse_key_options(words[1:])
        except Refusal as exc:
            yield line.number, exc


def clients_of(data: bytes, user: str) -> set[str]:
    """The clients the gate keys in one file serve, for the unix user sshd reads it for."""
    out = set()
    for _, key in gate_keys(data):
        if isinstance(key, Refusal):
            continue
        try:
            out.add(policy.client_name(key, user))
        except Refusal:
            continue
    return out


def expand(pattern: str, pw: pwd.struct_passwd) -> str:
    """An AuthorizedKeysFile pattern for one user: %h, %u, %U, %%; relative means below the home."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%" and i + 1 < len(pattern):
            token = pattern[i + 1]
            out.append({"h": pw.pw_dir, "u": pw.pw_name, "U": str(pw.pw_uid), "%": "%"}.get(token, "%" + token))
            i += 2
        else:
            out.append(ch)
            i += 1
    path = "".join(out)
    return path if path.startswith("/") else os.path.join(pw.pw_dir, path)


@functools.lru_cache(maxsize=1)  # one `sshd -T` (~50 ms) per process: check and status may ask several times
def sshd_patterns() -> tuple[str, ...]:
    """AuthorizedKeysFile as sshd itself reports it (root only), else sshd's default."""
    from borg_gate.admin import check  # admin side: its sshd reader

    settings = check.read_sshd(None)
    if isinstance(settings, str):
        return DEFAULT_PATTERNS
    value = settings.get("authorizedkeysfile").split()
    return tuple(p for p in value if p.lower() != "none") or DEFAULT_PATTERNS


def discover(
    uids: Iterable[int], files: Sequence[str] = (), patterns: Sequence[str] | None = None
) -> dict[int, frozenset[str] | None]:
    """uid -> the clients it serves, for every user whose keys could be read (root: every client, None)."""
    served: dict[int, set[str]] = {}
    for path in files:  # named by root: any owner; the user is the one sshd reads it for
        from borg_gate.admin import check

        try:
            data, st = read_keys(path)
        except OSError:
            continue
        owner = check.keys_owner(path, st)
        if owner is not None:
            served.setdefault(owner.uid, set()).update(clients_of(data, owner.name))
    wanted = sorted({u for u in uids if u != 0})
    if wanted:
        patterns = sshd_patterns() if patterns is None else tuple(patterns)
    for uid in wanted:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            continue
        for pattern in patterns or ():
            try:
                data, _ = read_keys(expand(pattern, pw), (0, uid))
            except OSError:
                continue
            served.setdefault(uid, set()).update(clients_of(data, pw.pw_name))
    out: dict[int, frozenset[str] | None] = {uid: frozenset(clients) for uid, clients in served.items()}
    out[0] = None
    return out
