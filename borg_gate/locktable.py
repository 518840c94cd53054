"""Who holds which bytes of the lock file, read from /proc/locks: counts, never a lock taken.

For the stderr line and the session.queued event of a queued connection (slots) and for
``status`` (slotstatus). Kept apart from slotstatus so that a waiting connection, which
asks this once, loads no more than it needs (session: the waiter's size).
"""

from __future__ import annotations

import os

from borg_gate import budgetfile

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    DevIno = tuple[int, int, int]
    Range = tuple[int, int, bool]  # first byte, last byte (inclusive), exclusive (write) lock


def lock_table(only: DevIno | None = None) -> dict[DevIno, list[Range]]:
    """(major, minor, inode) -> every granted byte-range lock on that file, from /proc/locks.

    ``only``: that one file's, skipping every other line unsplit (a queued connection asks
    this once, with a thousand others' locks in the table).
    """
    with open("/proc/locks", "rb") as fh:
        data = fh.read()
    table: dict[DevIno, list[Range]] = {}
    mark = b":%d " % only[2] if only is not None else b""  # ":<inode> " ends the dev:inode field
    for line in data.splitlines():
        if mark not in line:
            continue
        # "1: OFDLCK ADVISORY  WRITE -1 fe:00:2146354 33554432 33554432"; waiting requests read "1: -> OFDLCK …"
        parts = line.split()
        if len(parts) < 8 or parts[1] not in (b"OFDLCK", b"POSIX"):
            continue
        try:
            major, minor, ino = parts[5].split(b":")
            last = (1 << 63) - 1 if parts[7] == b"EOF" else int(parts[7])
            key = (int(major, 16), int(minor, 16), int(ino))
        except ValueError:
            continue
        if only is None or key == only:
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
