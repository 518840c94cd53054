"""What ``status`` and ``metrics`` see of the session budget, read-only.

Which slot and ticket files are locked, and by which pid, comes from /proc/locks rather
than from probing with flock: a probe that briefly got a free slot would make a concurrent
connection with ``wait = 0`` see it busy and be refused. Nothing here creates, locks or
writes a file. Loaded only by admin commands and by a connection that has to wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from borg_gate import statedir

if TYPE_CHECKING:
    from borg_gate.slots import Level

TICKET_RE: Final = re.compile(r"ticket\.(host|client\.([A-Za-z0-9][A-Za-z0-9._-]{0,63}))\.([0-9]{12})\.[0-9a-f]{8}")
SLOT_RE: Final = re.compile(r"slot\.(host|client\.([A-Za-z0-9][A-Za-z0-9._-]{0,63}))\.([0-9]{1,5})")


@dataclass(frozen=True)
class Holder:
    slot_path: str
    pid: int | None
    client: str | None
    conn: str | None
    started: float | None
    binary: str | None
    restrictions: tuple[str, ...]
    user: str | None
    state: str | None = None  # "serving", or "queued" for a client slot held while waiting for a host slot
    waited: float | None = None


@dataclass(frozen=True)
class BudgetUsage:
    kind: str  # "host" or "client"
    name: str  # "host" or the client name
    limit: int
    holders: tuple[Holder, ...]
    waiters: int


# --- lock table (read-only view of who holds what) -------------------------------------------


DevIno = tuple[int, int, int]


def lock_table() -> dict[DevIno, int]:
    """(major, minor, inode) -> pid of every granted flock on this host, from /proc/locks."""
    with open("/proc/locks", "rb") as fh:
        data = fh.read()
    table: dict[DevIno, int] = {}
    for line in data.splitlines():
        # "3: FLOCK  ADVISORY  WRITE 12903 fe:00:2149467 0 EOF"; blocked requests read "3: -> FLOCK …"
        parts = line.split()
        if len(parts) < 6 or parts[1] != b"FLOCK":
            continue
        with contextlib.suppress(ValueError):
            major, minor, ino = parts[5].split(b":")
            table[(int(major, 16), int(minor, 16), int(ino))] = int(parts[4])
    return table


def devino(st: os.stat_result) -> DevIno:
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def locked(dir_fd: int, name: str, table: dict[DevIno, int]) -> int | None:
    """The pid holding ``name``'s flock, or None when it is free or gone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return table.get(devino(st)) if stat.S_ISREG(st.st_mode) else None


def in_use(dir_fd: int, level: Level, table: dict[DevIno, int]) -> int:
    return sum(locked(dir_fd, level.slot(i), table) is not None for i in range(level.limit))


def position(dir_fd: int, key: str, seq: int, table: dict[DevIno, int]) -> int:
    """1 + the live tickets ahead of ticket number ``seq`` in queue ``key``."""
    ahead = 0
    for name in os.listdir(dir_fd):
        m = TICKET_RE.fullmatch(name)
        if m and m[1] == key and int(m[3]) < seq and locked(dir_fd, name, table):
            ahead += 1
    return ahead + 1


# --- snapshot -----------------------------------------------------------------------------------


def _read_info(dir_fd: int, name: str) -> dict[str, Any]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return {}
    try:
        data = os.read(fd, 65536)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        record = json.loads(data)
    except ValueError:
        return {}  # being written right now, or never was
    return record if isinstance(record, dict) else {}


def _holder(path: str, pid: int, record: dict[str, Any]) -> Holder:
    if record.get("pid") != pid and pid > 0:
        record = {}  # left by an earlier holder: the new one has not written yet
    rest = record.get("restrictions")

    def text(key: str) -> str | None:
        value = record.get(key)
        return value if isinstance(value, str) else None

    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return Holder(
        slot_path=path,
        pid=pid if pid > 0 else (record["pid"] if isinstance(record.get("pid"), int) else None),
        client=text("client"),
        conn=text("conn"),
        started=number("started"),
        binary=text("binary"),
        restrictions=tuple(r for r in rest if isinstance(r, str)) if isinstance(rest, list) else (),
        user=text("user"),
        state=text("state"),
        waited=number("waited"),
    )


def snapshot(state_dir: str, host_limit: int, client_limit: int) -> list[BudgetUsage]:
    """Who holds which slot and how many wait, per budget: the host first, then each busy client.

    Read-only: takes no lock, creates nothing, so it can never make a connection wait or
    be refused. A client's limit is the one its newest holder was admitted under (a key's
    --max-sessions), else ``client_limit``. Raises OSError when /proc/locks is unreadable,
    a misconfigured Refusal when the state dir is unsafe.
    """
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except FileNotFoundError:
        return [BudgetUsage("host", "host", host_limit, (), 0)]
    try:
        table = lock_table()
        holders: dict[str, list[Holder]] = {"host": []}
        waiters: dict[str, int] = {"host": 0}
        limits: dict[str, tuple[float, int]] = {}
        for name in sorted(os.listdir(dir_fd), key=_natural):
            slot, ticket = SLOT_RE.fullmatch(name), TICKET_RE.fullmatch(name)
            match = slot or ticket
            if not match:
                continue
            pid = locked(dir_fd, name, table)
            if pid is None:
                continue
            key = match[1]
            holders.setdefault(key, [])
            waiters.setdefault(key, 0)
            if ticket:
                waiters[key] += 1
                continue
            record = _read_info(dir_fd, name)
            holder = _holder(os.path.join(state_dir, name), pid, record)
            holders[key].append(holder)
            if holder.started is not None and isinstance(record.get("limit"), int):
                limits[key] = max(limits.get(key, (0.0, 0)), (holder.started, record["limit"]))
    finally:
        os.close(dir_fd)
    usages = [BudgetUsage("host", "host", host_limit, tuple(holders["host"]), waiters["host"])]
    for key in sorted(k for k in holders if k != "host"):
        name = key.removeprefix("client.")
        limit = limits[key][1] if key in limits else client_limit
        usages.append(BudgetUsage("client", name, limit, tuple(holders[key]), waiters[key]))
    return usages


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition(".")
    return (head, int(tail)) if tail.isdigit() else (name, -1)
