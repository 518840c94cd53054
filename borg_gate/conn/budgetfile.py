"""The budget file: one root-owned file whose byte ranges are every session slot and queue ticket.

Why one root-owned file, and not a file per slot
    The members of the gate's group share the state dir, and each of them may be hostile to
    the others. A slot must therefore be a lock object no member can remove or replace. A
    file per slot, created by whichever gate came first, belongs to that member: she can
    unlink it while a session holds it, the next gate creates a fresh file under the same
    name, locks it and serves over the limit. Only root-owned files in a sticky dir are out
    of every member's reach, and only root can create those; the slots of a budget depend on
    the config and the per-client budgets on client names no boot-time entry can know. So all
    of them are byte ranges of ONE file, ``locks``, that the tmpfiles entry (or the package's
    postinst) creates as root at boot::

        f /run/borg-gate/locks 0660 root borg-gate -

    A private state dir (owned by the gate's only user, writable by nobody else) is the one
    place where the gate creates the file itself: nobody else can plant anything there.

Why open-file-description (OFD) locks
    ``fcntl(F_OFD_SETLK)`` locks belong to an open file description, like flock: they survive
    exec (borg serve holds its slot from then on), are shared with a supervised child that
    inherits the descriptor, and vanish when the last descriptor closes, however the process
    ends. Unlike flock they lock byte ranges, which may lie far past the end of the file: the
    file stays empty except for the ticket counters at its start. Unlike classic POSIX locks
    they are not dropped when the process closes some other descriptor of the same file.

Layout (offsets into the lock space; nothing is ever written there)
    Each budget has a REGION of 2**25 bytes: the host budget region 1, a client's region
    ``2 + sha256(name) mod (2**37 - 1)``. Slot i of a budget is the byte ``region + i``; the
    ticket with queue number s is ``region + TICKETS + s mod TICKET_SPACE``. Two client names
    share a region with probability about n**2 / 2**38 for n clients (4e-4 for 10,000): they
    then share one per-client budget, a stricter limit, never a looser one. The first 32 KiB
    of the file's content hold 4,096 ticket counters, each guarded by a lock on its own 8
    bytes; a budget uses counter ``region number mod 4096``.

What a member can still do
    Write the counters (tickets get reordered: fairness suffers, the limit does not), and hold
    locks herself, exactly as a gate does: any lock the gate can take as her unix user, she can
    take too. That costs the others slots (a denial of service no unprivileged design can rule
    out), never more sessions than the budget. ``status`` run as root names the process of
    every lock, session or not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from borg_gate.base.errors import misconfigured

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final

NAME: Final = "locks"
REGION: Final = 1 << 25
TICKETS: Final = 1 << 24  # slots take the first 2**16 bytes of a region, tickets the upper half
TICKET_SPACE: Final = 1 << 24
WINDOW: Final = 1 << 22  # the most tickets that can be live at once: pid_max is at most 2**22
CLIENT_REGIONS: Final = (1 << 37) - 1
COUNTERS: Final = 4096
COUNTER_WIDTH: Final = 8

_FLOCK: Final = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
_OPEN: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def digest(data: bytes) -> bytes:
    from borg_gate.base.connection import _sha256  # CPython's built-in sha256, no OpenSSL load

    return _sha256(data)


def region_number(key: str) -> int:
    """1 for ``host``, else 2 + a 37-bit hash of ``client.<name>``."""
    if key == "host":
        return 1
    return 2 + int.from_bytes(digest(key.encode())[:8], "big") % CLIENT_REGIONS


def region(key: str) -> int:
    return REGION * region_number(key)


def slot_offset(key: str, index: int) -> int:
    return region(key) + index


def ticket_offset(key: str, seq: int) -> int:
    return region(key) + TICKETS + seq % TICKET_SPACE


def ahead(key: str, seq: int) -> list[tuple[int, int]]:
    """The byte ranges (start, length) of every ticket that can be live before ticket ``seq``.

    At most WINDOW tickets below ``seq``, taken modulo TICKET_SPACE: one range, or two where
    the numbers wrap.
    """
    low = max(0, seq - WINDOW)
    if low >= seq:
        return []
    base = region(key) + TICKETS
    a, b = low % TICKET_SPACE, seq % TICKET_SPACE
    if a < b:
        return [(base + a, b - a)]
    return [(base + a, TICKET_SPACE - a)] + ([(base, b)] if b else [])


def counter_offset(key: str) -> int:
    return COUNTER_WIDTH * (region_number(key) % COUNTERS)


# --- OFD locks -----------------------------------------------------------------------------------


def lock(fd: int, start: int, length: int = 1, *, shared: bool = False, wait: bool = False) -> bool:
    """Lock ``length`` bytes at ``start`` on ``fd``'s open file description; False when taken (no wait)."""
    kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def lock_in(fd: int, start: int, length: int, *, exclusive_only: bool = False) -> tuple[int, int] | None:
    """(start, length) of a lock some other descriptor holds on these bytes, or None.

    F_OFD_GETLK: it asks, takes nothing, and the answer is stale as soon as it is given:
    only where a connection waits (slots.would_wait) and what it tells (counts) use it,
    never who gets a slot. ``exclusive_only``: ask as a reader, whom only write locks stop.
    The kernel names *a* conflicting lock, not the lowest one.
    """
    kind = fcntl.F_RDLCK if exclusive_only else fcntl.F_WRLCK
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    got, _, got_start, got_length, _ = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request))
    if got == fcntl.F_UNLCK:
        return None
    return got_start, got_length if got_length > 0 else (1 << 62)  # 0: to the end of the file


def locked_bytes(fd: int, start: int, length: int, *, exclusive_only: bool = False) -> int:
    """How many bytes of [start, start + length) some lock covers (several locks on one byte count once).

    Each F_OFD_GETLK names one lock; its bytes are counted and the parts of the range on
    either side of it asked about in turn: about two calls per lock found, plus one, however
    wide the range (a queue's whole window of 2**22 tickets). What /proc/locks would say,
    without the kernel printing every lock on the host for it.
    """
    total = 0
    todo = [(start, start + length)]
    while todo:
        a, b = todo.pop()
        found = lock_in(fd, a, b - a, exclusive_only=exclusive_only)
        if found is None:
            continue
        lo, hi = max(a, found[0]), min(b, found[0] + found[1])
        total += hi - lo
        todo += [r for r in ((a, lo), (hi, b)) if r[0] < r[1]]
    return total


def highest_locked(fd: int, start: int, length: int) -> int | None:
    """The highest byte of [start, start + length) that some other descriptor write-locks, or None.

    F_OFD_GETLK names *a* conflicting lock (in practice the oldest), so the answer is
    narrowed by halves: one call, and one more per halving (at most 23 for a queue's window).
    """
    end = start + length
    found = lock_in(fd, start, length, exclusive_only=True)
    if found is None:
        return None
    low = min(end, found[0] + found[1]) - 1  # a locked byte; is any above it?
    high = end  # nothing locked at or above it
    while high - low > 1:
        mid = (low + high) // 2
        above = lock_in(fd, mid, high - mid, exclusive_only=True)
        if above is None:
            high = mid
        else:
            low = min(high, above[0] + above[1]) - 1
    return low


def unlock(fd: int, start: int, length: int = 1) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, start, length, 0))


def bump(fd: int, key: str) -> int:
    """The next queue number of ``key``; the caller holds the lock on its counter's 8 bytes."""
    at = counter_offset(key)
    seq = int.from_bytes(os.pread(fd, COUNTER_WIDTH, at).ljust(COUNTER_WIDTH, b"\0"), "little") + 1
    seq %= 1 << 62  # a member may have written anything there
    os.pwrite(fd, seq.to_bytes(COUNTER_WIDTH, "little"), at)
    return seq


# --- the file itself ----------------------------------------------------------------------------


def _private(dir_st: os.stat_result) -> bool:
    """A dir only its owner (this user) can write: nobody else can have planted anything in it."""
    return dir_st.st_uid == os.geteuid() and not dir_st.st_mode & 0o022


def unsafe(st: os.stat_result, dir_st: os.stat_result) -> str | None:
    """Why the lock file must not be counted on, or None: the rule the gate and ``check`` share.

    Its link count is not checked: a member can add a name for root's file (she can write
    it), which changes nothing about its locks; refusing it would let her deny service.
    """
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != 0 and not (st.st_uid == os.geteuid() and _private(dir_st)):
        return f"owned by uid {st.st_uid}, not by root (a member could remove it and double the budget)"
    if st.st_mode & stat.S_IWOTH:
        return "world-writable"
    return None


def howto(path: str, dir_st: os.stat_result) -> str:
    from borg_gate.base.statedir import group_name

    return f"create it as root: install -m 0660 -o root -g {group_name(dir_st.st_gid)} /dev/null {path}/{NAME}"


def open_locks(dir_fd: int, path: str) -> int:
    """The checked lock file of the state dir open as ``dir_fd`` (created only where that is safe)."""
    dir_st = os.fstat(dir_fd)
    may_create = os.geteuid() == 0 or _private(dir_st)
    try:
        fd = os.open(NAME, _OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        if not may_create:
            raise misconfigured(f"state dir {path}: no lock file {NAME}; {howto(path, dir_st)}") from None
        try:
            fd = os.open(NAME, _OPEN | os.O_CREAT, 0o600 if _private(dir_st) else 0o660, dir_fd=dir_fd)
        except OSError as exc:
            raise misconfigured(f"state dir {path}: cannot create {NAME}: {exc.strerror}") from None
    except OSError as exc:
        why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise misconfigured(f"state dir {path}: lock file {NAME}: {why}") from None
    problem = unsafe(os.fstat(fd), dir_st)
    if problem is not None:
        os.close(fd)
        raise misconfigured(f"state dir {path}: lock file {NAME}: {problem}; {howto(path, dir_st)}")
    return fd


def reopen(fd: int) -> int:
    """A new open file description of the checked file ``fd``: its own locks, the same inode, no race."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
