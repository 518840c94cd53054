"""The parsed config, cached per user in the state dir, so a connection does not load tomllib.

tomllib and what it imports (typing, datetime, string) cost about 7.5 ms of CPU, most of a
bare interpreter's start, on every connection (bench/overhead). What it returns for the same
bytes never changes, so each user keeps it: ``config-<uid>-<hash of the path>.cache`` in the
state dir, a marshal of (format, path, the file's exact bytes, tomllib's result). It is
used only when the bytes match the file read just now, byte for byte: no mtime, size or
inode can go stale or be faked. Everything after tomllib (every check of every key, the
binaries, the limits) still runs on each connection, on the cached dict as on a fresh one.

The state dir is named in the config itself, so where to look comes from a plain scan of
the text for ``state_dir`` under ``[gate]``. The scan only picks the place: a cache found
there is believed only if it is this user's own file (statedir.read_own: owner, mode, one
link) in a checked dir and its config names that same dir. Anything else is a miss, and
a miss only costs the parse. Only this uid (or root) can write the file; marshal is never
fed another user's bytes.
"""

from __future__ import annotations

import marshal
import os
import sys

from borg_gate.base import statedir

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Any, Final

FORMAT: Final = ("borg-gate config cache 1", sys.version_info[:2])  # marshal's format is per Python
MAX_BYTES: Final = 1 << 20


def file_name(path: str) -> str:
    from borg_gate.base.connection import _sha256  # CPython's built-in sha256, no OpenSSL load

    return f"config-{os.geteuid()}-{_sha256(path.encode('utf-8', 'surrogateescape')).hex()[:16]}.cache"


def state_dir_hint(text: str, default: str) -> str:
    """Where the config says its state dir is, by a plain line scan; only used to look for the cache."""
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[] \t")
        elif section == "gate" and line.startswith("state_dir"):
            key, sep, rest = line.partition("=")
            rest = rest.strip()
            end = rest.find(rest[:1], 1)  # the closing quote; a comment may follow it
            if sep and key.strip() == "state_dir" and rest[:1] in ("'", '"') and end > 0:
                return rest[1:end]
    return default


def _open(state_dir: str) -> int | None:
    try:
        return statedir.open_dir(state_dir, create=False)
    except Exception:  # missing or unsafe: no cache; the connection's own open_dir says why, later
        return None


def lookup(path: str, raw: bytes, state_dir: str) -> dict[str, Any] | None:
    """tomllib's result for ``raw`` as cached by this user in ``state_dir``, or None."""
    dir_fd = _open(state_dir)
    if dir_fd is None:
        return None
    try:
        cached = statedir.read_own(dir_fd, file_name(path), MAX_BYTES)
    finally:
        os.close(dir_fd)
    if cached is None:
        return None
    try:
        fmt, cached_path, cached_raw, data = marshal.loads(cached)  # noqa: S302  # this uid's own file (read_own)
    except (ValueError, EOFError, TypeError):
        return None
    if fmt != FORMAT or cached_path != path or cached_raw != raw or not isinstance(data, dict):
        return None
    gate = data.get("gate")
    if (gate.get("state_dir") if isinstance(gate, dict) else None) not in (state_dir, None):
        return None  # the scan was fooled: this is not the dir the config names
    return data


def store(path: str, raw: bytes, data: dict[str, Any], state_dir: str) -> None:
    """Keep tomllib's result for next time; best effort, silent (a failure only costs a parse)."""
    try:
        blob = marshal.dumps((FORMAT, path, raw, data))
    except ValueError:  # a TOML date or time: marshal cannot hold it; such a config is parsed each time
        return
    dir_fd = _open(state_dir)
    if dir_fd is None:
        return
    try:
        statedir.write_own(dir_fd, file_name(path), blob, mode=0o600)  # it holds the config's text
    finally:
        os.close(dir_fd)
