"""What ``status`` and ``metrics`` see of the session budget, read-only.

Which slot and ticket bytes of the lock file are locked comes from /proc/locks rather than
from probing: a probe that briefly got a free slot would make a concurrent connection with
``wait = 0`` see it busy and be refused. Who holds a slot comes from the holder's record
file (slots: ``rec.<budget>.<index>.<uid>``), believed only when it is that uid's own
single-linked regular file and its pid is alive and runs as that uid; as root, a slot with
no such record is traced to its process through /proc/<pid>/fdinfo, so a lock taken by
anything but a gate is named too. Nothing here creates, locks or writes a file. Loaded
only by admin commands and by a connection that has to wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from borg_gate.base import statedir
from borg_gate.conn import budgetfile

RECORD_RE: Final = re.compile(
    r"rec\.(host|repo\.[0-9a-f]{16}|client\.([A-Za-z0-9][A-Za-z0-9._-]{0,63}))\.([0-9]{1,5})\.([0-9]{1,10})"
)
MAX_SLOTS: Final = 10000  # the config's largest limit: slots beyond it are nobody's


@dataclass(frozen=True)
class Holder:
    slot: str  # "slot.host.0", "slot.client.alice.1"
    pid: int | None
    client: str | None
    conn: str | None
    started: float | None
    binary: str | None
    restrictions: tuple[str, ...]
    user: str | None
    state: str | None = None  # "serving", or "queued" for a slot held while waiting for the next budget's
    waited: float | None = None
    budget: str | None = None  # the budget's name: for a repository, its path


@dataclass(frozen=True)
class BudgetUsage:
    kind: str  # "host", "client" or "repo"
    name: str  # "host", the client name, the repository path, or "?<region>" for a region no record names
    limit: int
    holders: tuple[Holder, ...]
    waiters: int
    priority_waiters: int = 0  # host: waiting in the priority lane (counted in waiters too)
    reserved: int = 0  # host: slots only priority keys may take (the top ones)

    @property
    def reserved_in_use(self) -> int:
        first = self.limit - self.reserved
        return sum(1 for h in self.holders if self.reserved and int(h.slot.rpartition(".")[2]) >= first)


# --- lock table (read-only view of who holds what) -------------------------------------------


DevIno = tuple[int, int, int]
Range = tuple[int, int, bool]  # first byte, last byte (inclusive), exclusive (write) lock


def lock_table() -> dict[DevIno, list[Range]]:
    """(major, minor, inode) -> every granted byte-range lock on that file, from /proc/locks."""
    with open("/proc/locks", "rb") as fh:
        data = fh.read()
    table: dict[DevIno, list[Range]] = {}
    for line in data.splitlines():
        # "1: OFDLCK ADVISORY  WRITE -1 fe:00:2146354 33554432 33554432"; waiting requests read "1: -> OFDLCK …"
        parts = line.split()
        if len(parts) < 8 or parts[1] not in (b"OFDLCK", b"POSIX"):
            continue
        with contextlib.suppress(ValueError):
            major, minor, ino = parts[5].split(b":")
            last = (1 << 63) - 1 if parts[7] == b"EOF" else int(parts[7])
            key = (int(major, 16), int(minor, 16), int(ino))
            table.setdefault(key, []).append((int(parts[6]), last, parts[3] == b"WRITE"))
    return table


def devino(st: os.stat_result) -> DevIno:
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def _spans(ranges: Iterable[Range], start: int, length: int, exclusive_only: bool) -> list[tuple[int, int]]:
    """The merged spans (first, last) of [start, start + length) that some lock covers."""
    end = start + length - 1
    spans: list[tuple[int, int]] = []
    wanted = [(a, b) for a, b, w in ranges if a <= end and b >= start and (w or not exclusive_only)]
    for a, b in sorted((max(a, start), min(b, end)) for a, b in wanted):
        if spans and a <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], b))
        else:
            spans.append((a, b))
    return spans


def count(ranges: Iterable[Range], start: int, length: int, *, exclusive_only: bool = False) -> int:
    """How many bytes of [start, start + length) some lock covers (a member may lock huge ranges)."""
    return sum(b - a + 1 for a, b in _spans(ranges, start, length, exclusive_only))


def covered(ranges: Iterable[Range], start: int, length: int) -> list[int]:
    """The offsets of [start, start + length) that some lock covers; only for short ranges (slots)."""
    return [offset for a, b in _spans(ranges, start, length, False) for offset in range(a, b + 1)]


def in_use(ranges: Sequence[Range], key: str, limit: int) -> int:
    return count(ranges, budgetfile.slot_offset(key, 0), limit)


def position(ranges: Sequence[Range], key: str, seq: int) -> int:
    """1 + the live tickets ahead of ticket number ``seq`` in queue ``key``."""
    return 1 + sum(count(ranges, a, n, exclusive_only=True) for a, n in budgetfile.ahead(key, seq))


def waiters(ranges: Sequence[Range], key: str) -> int:
    start = budgetfile.region(key) + budgetfile.TICKETS
    return count(ranges, start, budgetfile.TICKET_SPACE, exclusive_only=True)


# --- records -----------------------------------------------------------------------------------


def _read_record(dir_fd: int, name: str, uid: int) -> dict[str, Any]:
    """A holder's record, if it is ``uid``'s own single-linked regular file; {} otherwise."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_nlink == 1):
            return {}
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


def _uid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])  # effective uid
    except (OSError, ValueError, IndexError):
        return None
    return None


def _believed(record: dict[str, Any], uid: int) -> bool:
    pid = record.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and _uid_of(pid) == uid


def _traced(ino: DevIno) -> dict[int, int]:
    """Locked offset -> pid, for every lock on ``ino`` whose process we may inspect (all, as root)."""
    owners: dict[int, int] = {}
    want = f"{ino[0]:02x}:{ino[1]:02x}:{ino[2]}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fdinfo in os.scandir(f"/proc/{entry.name}/fdinfo"):
                with contextlib.suppress(OSError), open(fdinfo.path, "rb") as fh:
                    for line in fh:
                        parts = line.split()
                        if parts[:1] == [b"lock:"] and len(parts) >= 9 and parts[6] == want:
                            with contextlib.suppress(ValueError):
                                first, last = int(parts[7]), min(int(parts[8]), int(parts[7]) + MAX_SLOTS)
                                for offset in range(first, last + 1):
                                    owners.setdefault(offset, int(entry.name))
    return owners


def _holder(slot: str, pid: int | None, record: dict[str, Any]) -> Holder:
    rest = record.get("restrictions")

    def text(key: str) -> str | None:
        value = record.get(key)
        return value if isinstance(value, str) else None

    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return Holder(
        slot=slot,
        pid=pid,
        client=text("client"),
        conn=text("conn"),
        started=number("started"),
        binary=text("binary"),
        restrictions=tuple(r for r in rest if isinstance(r, str)) if isinstance(rest, list) else (),
        user=text("user"),
        state=text("state"),
        waited=number("waited"),
        budget=text("budget"),
    )


# --- snapshot -----------------------------------------------------------------------------------


def snapshot(state_dir: str, host_limit: int, client_limit: int, reserved: int = 0) -> list[BudgetUsage]:
    """Who holds which slot and how many wait, per budget: the host first, then each busy client.

    Read-only: takes no lock, creates nothing, so it can never make a connection wait or
    be refused. A client's limit is the one its newest holder was admitted under (a key's
    --max-sessions), else ``client_limit``. Raises OSError when /proc/locks is unreadable,
    a misconfigured Refusal when the state dir is unsafe.
    """
    empty = [BudgetUsage("host", "host", host_limit, (), 0, 0, reserved)]
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except FileNotFoundError:
        return empty
    try:
        try:
            st = os.stat(budgetfile.NAME, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return empty
        ino = devino(st)
        ranges = lock_table().get(ino, []) if stat.S_ISREG(st.st_mode) else []
        records: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for name in os.listdir(dir_fd):
            m = RECORD_RE.fullmatch(name)
            if m:
                records.setdefault((m[1], int(m[3])), []).append((int(m[4]), name))
        keys = {"host", "prio.host"} | {key for key, _ in records}
        regions = {budgetfile.region_number(key): key for key in keys}
        for a, b, _ in ranges:  # a locked region no record names: a client whose gate wrote none, or no gate
            first = max(1, a // budgetfile.REGION)  # region 0 holds the ticket counters
            for number in range(first, min(b // budgetfile.REGION, first + 64) + 1):
                regions.setdefault(number, f"client.?{number}")
        traced: dict[int, int] | None = None
        usages: dict[str, BudgetUsage] = {}
        for number, key in regions.items():
            if key == "prio.host":
                continue  # the host's priority lane: its waiters are the host's
            base = budgetfile.REGION * number
            holders: list[Holder] = []
            newest: tuple[float, int] | None = None
            for offset in covered(ranges, base, MAX_SLOTS):
                index = offset - base
                slot = f"slot.{key}.{index}"
                best: tuple[float, dict[str, Any]] | None = None
                for uid, name in records.get((key, index), []):
                    record = _read_record(dir_fd, name, uid)
                    started = record.get("started")
                    when = float(started) if isinstance(started, int | float) else 0.0
                    if _believed(record, uid) and (best is None or when > best[0]):
                        best = (when, record)
                if best is not None:
                    holders.append(_holder(slot, best[1]["pid"], best[1]))
                    limit = best[1].get("limit")
                    if isinstance(limit, int) and not isinstance(limit, bool):
                        newest = max(newest or (0.0, 0), (best[0], limit))
                    continue
                if traced is None:
                    traced = _traced(ino) if os.geteuid() == 0 else {}
                holders.append(_holder(slot, traced.get(offset), {}))
            queued = waiters(ranges, key)
            if key != "host" and not holders and not queued:
                continue
            kind = key.partition(".")[0]
            limit = host_limit if key == "host" else (newest[1] if newest else client_limit)
            if kind == "host":
                prio = waiters(ranges, "prio.host")
                usages[key] = BudgetUsage(kind, "host", limit, tuple(holders), queued + prio, prio, reserved)
                continue
            named = [h.budget for h in holders if h.budget]
            name = named[0] if kind == "repo" and named else key.partition(".")[2]
            usages[key] = BudgetUsage(kind, name, limit, tuple(holders), queued)
    finally:
        os.close(dir_fd)
    host = usages.pop("host", empty[0])
    return [host] + [usages[k] for k in sorted(usages, key=lambda k: (k.startswith("repo."), k))]
