"""Session slots: host-wide and per-client budgets held as kernel file locks, with a fair queue.

Slots
    A budget of N sessions is N files in the state dir (``slot.host.0`` … and
    ``slot.client.<name>.0`` …). A slot is held by an exclusive ``flock`` on its file, taken
    on a descriptor the gate opened itself (O_NOFOLLOW) and made inheritable at exec, so
    borg serve holds it from then on: whenever that process ends (exit, crash, kill -9),
    the kernel drops the lock. Nothing is ever cleaned up and no pid is ever trusted.
    ``fcntl.flock`` is called directly: filelock's ``lock_descriptor`` is this same flock,
    and importing filelock costs ~40 ms on a path whose whole budget is ~30 ms.

    A connection takes its client's slot first, then a host-wide one, so a client at its
    own limit queues behind its own sessions without holding a host slot that other
    clients could use. Each held slot file carries the JSON ``status`` shows (pid, client,
    conn, started, binary, restrictions, user, state), written on the locked descriptor
    after the lock is held: no other process writes a slot file while it is held.

    Slot N of a budget of L is used only while N < L. Lowering a limit leaves sessions in
    the higher slots running (``status`` still lists them) without counting them against
    the new limit until they end; keys of one client should agree on ``--max-sessions``
    (a key allowed 1 waits for slot 0 even when its client's slot 2 is free).

Queue (one per budget)
    When a budget is full, connections wait in arrival order. Each waiter holds an exclusive
    flock on its own ticket file; tickets are chained: under a short lock on ``queue.<budget>``
    a newcomer reads the tail, writes its own ticket name as the new tail and records the old
    tail as its predecessor. A waiter blocks on its predecessor's ticket lock; only the head
    (no live predecessor) tries the slots, so grants follow arrival order and nobody can
    overtake. Dead waiters need no cleanup: a waiter killed (-9) or gone loses its lock, its
    successor wakes, reads whom the dead one was waiting for (each ticket file starts with
    that name, updated before each move) and waits for that one instead. A head that got its
    slot blanks its link and unlinks its ticket, so a missing or blank predecessor means
    "everyone before me is done". The successor unlinks a dead waiter's ticket once it has
    its link; in the sticky state dir it cannot when the dead one was another unix user
    (EPERM), and the file stays behind, unlocked, named by nobody: its only successor has
    read it and already links past it, so nothing ever reads it again (it goes with /run at
    the next boot). Connections with ``wait = 0`` never queue: they take a free
    slot or are refused at once (and may take a slot the head was about to get).

Waiting costs no CPU
    Every wait is a blocking flock in a helper thread, woken by the kernel the instant the
    lock is free (no poll interval, no missed wake-up); the main thread sleeps in poll() on a
    pipe from those threads and on fd 1, which reports POLLERR/POLLHUP as soon as sshd
    closes the session's pipes: an abandoned waiter leaves at once and never takes a slot.
    Only heads block on slots, one thread per slot up to MAX_THREADS; a budget bigger than
    that has its remaining slots re-tried (LOCK_NB) every RECHECK seconds by its head.

``Holder``, ``BudgetUsage`` and ``snapshot`` (for ``status``/``metrics``) live in slotstatus,
which reads /proc/locks and never takes a lock; they are reachable here by name but loaded
only when asked for, as a connection that does not wait never needs them.

Several unix users can share one host budget through a setgid group dir: see statedir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from borg_gate import statedir
from borg_gate.errors import Kind, Refusal, busy, misconfigured
from borg_gate.policy import Budget

if TYPE_CHECKING:
    import threading

    from borg_gate.slotstatus import BudgetUsage as BudgetUsage
    from borg_gate.slotstatus import Holder as Holder
    from borg_gate.slotstatus import snapshot as snapshot


def __getattr__(name: str) -> Any:
    """``Holder``, ``BudgetUsage`` and ``snapshot`` live in slotstatus, loaded only by those who ask."""
    if name in ("BudgetUsage", "Holder", "snapshot"):
        from borg_gate import slotstatus

        return getattr(slotstatus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LINK_WIDTH: Final = 128  # a ticket file starts with its predecessor's name, padded: one pwrite rewrites it
QUEUE_WIDTH: Final = 160  # "<seq> <tail ticket name>", padded
ANNOUNCE_AFTER: Final = 0.2  # behind a live ticket, say "waiting" only if it does not move on by then
MAX_THREADS: Final = 128  # slots beyond this many are re-tried every RECHECK seconds instead
RECHECK: Final = 1.0
GONE: Final = select.POLLERR | select.POLLHUP

HEX: Final = frozenset("0123456789abcdef")

Say = Callable[[str], None]
Emit = Callable[..., None]


# Values on the connection path are plain classes with __slots__: each @dataclass costs ~0.8 ms
# of import time, and a connection's whole budget is ~30 ms.


class Session:
    """What a held slot file tells ``status`` about the connection that holds it."""

    __slots__ = ("binary", "client", "conn", "restrictions", "user")

    def __init__(
        self, client: str, conn: str, binary: str, restrictions: tuple[str, ...] = (), user: str | None = None
    ) -> None:
        self.client = client
        self.conn = conn
        self.binary = binary
        self.restrictions = restrictions
        self.user = user


class Held:
    """Slots taken for one connection; their descriptors are inherited by borg serve."""

    __slots__ = ("fds", "queues", "slots", "waited")

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.waited = 0.0
        self.slots: list[str] = []
        self.queues: dict[str, dict[str, float]] = {}  # budget -> ticket number, joined and granted (unix time)


class Level:
    """One budget: the host's or a client's."""

    __slots__ = ("kind", "limit", "name")

    def __init__(self, kind: str, name: str, limit: int) -> None:
        self.kind = kind
        self.name = name
        self.limit = limit

    @property
    def key(self) -> str:
        return "host" if self.kind == "host" else f"client.{self.name}"

    def slot(self, index: int) -> str:
        return f"slot.{self.key}.{index}"

    def usage(self, in_use: int | None, *, named: bool = True) -> str:
        """``3/8`` or ``alice 2/2``; ``?`` when /proc/locks could not be read."""
        count = f"{'?' if in_use is None else in_use}/{self.limit}"
        return f"{self.name} {count}" if named and self.kind == "client" else count


# --- descriptors ------------------------------------------------------------------------------


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open(dir_fd: int, name: str, **kwargs: bool) -> int:
    try:
        return statedir.open_file(dir_fd, name, **kwargs)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        raise misconfigured(f"state dir file {name}: {exc.strerror}") from None


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _client_gone(watch_fd: int) -> bool:
    if watch_fd < 0:
        return False
    p = select.poll()
    p.register(watch_fd, 0)  # POLLERR/POLLHUP are always reported; asking for POLLOUT would wake at once
    return any(ev & GONE for _, ev in p.poll(0))


class _Expired(Exception):
    """The deadline passed while waiting."""


class _Blocker:
    """Waits, without spinning, until this process holds an exclusive flock on one of ``fds``.

    One thread per descriptor sits in a blocking flock(LOCK_EX), woken by the kernel when
    the holder's last descriptor closes. The descriptors belong to the blocker from then
    on: ``wait`` hands the winner's back; a thread that gets its lock after that closes its
    descriptor (so the unwanted lock is released at once), and one that never does dies
    with the process, its descriptor closed by exec (O_CLOEXEC) or exit.
    """

    def __init__(self, fds: Sequence[int], watch_fd: int) -> None:
        import threading  # only waiters pay for it

        self.fds = list(fds)
        self.watch_fd = watch_fd
        self.mu: threading.Lock = threading.Lock()
        self.won: list[int] = []
        self.done = False
        self.r, self.w = os.pipe()
        self.polled = list(range(MAX_THREADS, len(self.fds)))  # past the thread cap: NB re-tries
        self.poll = select.poll()
        self.poll.register(self.r, select.POLLIN)
        if watch_fd >= 0:
            self.poll.register(watch_fd, 0)
        threading.stack_size(256 * 1024)
        for i in range(min(len(self.fds), MAX_THREADS)):
            threading.Thread(target=self._block, args=(i,), daemon=True).start()

    def _block(self, i: int) -> None:
        fd = self.fds[i]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            got = True
        except OSError:
            got = False
        with self.mu:
            if got and not self.done:
                self.won.append(i)
                os.write(self.w, b"!")
                return
        os.close(fd)

    def wait(self, until: float) -> int | None:
        """The index of the descriptor now locked, or None at ``until``; raises if the client left."""
        while True:
            left = until - time.monotonic()
            if self.polled:
                left = min(left, RECHECK)
            for fd, ev in self.poll.poll(max(0, int(left * 1000) + 1)):
                if fd == self.watch_fd and ev & GONE:
                    self.cancel()
                    raise Refusal(Kind.CLIENT_GONE, "the client went away while queued for a session slot")
                if fd == self.watch_fd and ev & select.POLLNVAL:
                    self.poll.unregister(fd)  # no fd 1 to watch: nobody to notice leaving
            with self.mu:
                if self.won:
                    return self._finish(self.won[0])
            for i in self.polled:
                if _try_lock(self.fds[i]):
                    with self.mu:
                        return self._finish(i)
            if time.monotonic() >= until:
                return None

    def _finish(self, winner: int) -> int:
        """Under ``mu``: keep ``winner``, release every other lock this blocker got."""
        self.done = True
        _close([self.fds[i] for i in self.won + self.polled if i != winner])
        _close([self.r, self.w])
        return winner

    def cancel(self) -> None:
        with self.mu:
            if not self.done:
                self._finish(-1)


# --- tickets ----------------------------------------------------------------------------------


class Ticket:
    """Our place in a queue: a locked file whose first bytes name whom we wait for."""

    __slots__ = ("fd", "joined", "level", "name", "pred", "seq")

    def __init__(self, level: Level, fd: int, name: str, pred: str, seq: int) -> None:
        self.level = level
        self.fd = fd
        self.name = name
        self.pred = pred
        self.seq = seq
        self.joined = time.time()

    def set_link(self, name: str) -> None:
        os.pwrite(self.fd, name.ljust(LINK_WIDTH).encode(), 0)

    def leave(self, granted: bool, dir_fd: int) -> None:
        """Granted: the link is blank already; unlink so a newcomer naming us knows we are done.

        Otherwise keep the file: the successor reads from it whom to wait for next.
        """
        if granted:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=dir_fd)
        _close([self.fd])


def _is_ticket(name: str, level: Level) -> bool:
    """``ticket.<budget>.<12-digit seq>.<8 hex>`` of this budget (no regex: its compile costs ~1 ms)."""
    prefix = f"ticket.{level.key}."
    rest = name[len(prefix) :]
    return (
        name.startswith(prefix)
        and len(rest) == 21
        and rest[:12].isdigit()
        and rest[12] == "."
        and HEX.issuperset(rest[13:])
    )


def _read_link(fd: int, level: Level) -> str:
    name = os.pread(fd, LINK_WIDTH, 0).decode("ascii", "replace").strip()
    return name if _is_ticket(name, level) else ""


def _join(dir_fd: int, level: Level, info: dict[str, Any]) -> Ticket:
    """Become the tail of ``level``'s queue."""
    qfd = _open(dir_fd, f"queue.{level.key}")
    try:
        fcntl.flock(qfd, fcntl.LOCK_EX)  # held for a handful of syscalls
        seq_text, _, tail = os.pread(qfd, QUEUE_WIDTH, 0).decode("ascii", "replace").strip().partition(" ")
        seq = int(seq_text) + 1 if seq_text.isdigit() else 1
        while True:
            name = f"ticket.{level.key}.{seq % 10**12:012d}.{os.urandom(4).hex()}"
            try:
                fd = _open(dir_fd, name, exclusive=True)
                break
            except FileExistsError:
                continue
        if not _try_lock(fd):  # nobody knows the name yet
            raise misconfigured(f"state dir file {name}: locked by someone else")
        ticket = Ticket(level, fd, name, tail if _is_ticket(tail, level) else "", seq)
        body = json.dumps({**info, "queue": level.key, "since": time.time()}, separators=(",", ":"))
        os.pwrite(fd, (ticket.pred.ljust(LINK_WIDTH) + "\n" + body + "\n").encode(), 0)
        os.pwrite(qfd, f"{seq} {name}".ljust(QUEUE_WIDTH).encode(), 0)
        return ticket
    finally:
        os.close(qfd)  # releases the queue lock


# --- one connection's way to its slots --------------------------------------------------------


def _seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


class _Acquirer:
    def __init__(
        self, dir_fd: int, levels: tuple[Level, Level], wait: float, watch_fd: int, say: Say, emit: Emit
    ) -> None:
        self.dir_fd = dir_fd
        self.client, self.host = levels
        self.wait = wait
        self.start = time.monotonic()
        self.deadline = self.start + wait
        self.watch_fd = watch_fd
        self.say = say
        self.emit = emit
        self.said = False
        self.queued: set[str] = set()  # budgets this connection waited for
        self.tickets: dict[str, dict[str, float]] = {}

    def counts(self, *levels: Level, ticket: Ticket | None = None) -> tuple[list[int | None], int | None]:
        """Slots in use per level and our place in line, from /proc/locks (None where unreadable)."""
        from borg_gate import slotstatus

        try:
            table = slotstatus.lock_table()
        except OSError:
            return [None] * len(levels), None
        used: list[int | None] = [slotstatus.in_use(self.dir_fd, level, table) for level in levels]
        return used, slotstatus.position(self.dir_fd, ticket.level.key, ticket.seq, table) if ticket else None

    def announce(self, level: Level, ticket: Ticket, *, full: bool = False) -> None:
        """Once per budget: the event; once per connection: the stderr line.

        ``full``: a head that just found every slot taken says so, rather than a count read
        a moment later, when one may have freed already.
        """
        if level.kind in self.queued:
            return
        self.queued.add(level.kind)
        in_use: int | None
        position: int | None
        if full:
            in_use, position = level.limit, 1
        else:
            (in_use,), position = self.counts(level, ticket=ticket)
        self.emit(
            "session.queued",
            budget=level.kind,
            in_use=in_use,
            limit=level.limit,
            position=position,
            ticket=ticket.seq,
            joined=round(ticket.joined, 6),
            wait=self.wait,
        )
        if not self.said:
            self.said = True
            self.say(f"waiting for a session slot ({level.usage(in_use)} in use)…")

    def busy(self, level: Level) -> Refusal:
        waited = time.monotonic() - self.start
        other = self.client if level is self.host else self.host
        (mine, theirs), _ = self.counts(level, other)
        if level is self.host:
            text = f"{self.host.usage(mine)} sessions in use, {self.client.usage(theirs)}"
        else:
            text = f"{level.name} has {level.usage(mine, named=False)} sessions in use (server {other.usage(theirs)})"
        return busy(
            f"server busy: {text}; waited {_seconds(waited)} s",
            budget=level.kind,
            in_use=mine,
            limit=level.limit,
            waited=round(waited, 3),
        )

    def block(self, fds: Sequence[int], level: Level, ticket: Ticket, grace: bool) -> int:
        """Wait for one of ``fds`` (which the blocker then owns); the index of the one now locked."""
        blocker = _Blocker(fds, self.watch_fd)
        try:
            got = blocker.wait(min(self.deadline, time.monotonic() + ANNOUNCE_AFTER)) if grace else None
            if got is None:
                self.announce(level, ticket)
                got = blocker.wait(self.deadline)
        except BaseException:
            blocker.cancel()
            raise
        if got is None:
            blocker.cancel()
            raise _Expired
        return got

    def take(self, level: Level) -> tuple[int, int]:
        """A slot of ``level`` (descriptor, index): at once when ``wait`` is 0, else in turn."""
        if self.wait <= 0:
            got, fds = self.scan(level)
            _close(fds)
            if got is None:
                raise self.busy(level)
            return got
        ticket = _join(self.dir_fd, level, {"pid": os.getpid()})
        self.tickets[level.kind] = {"ticket": ticket.seq, "joined": round(ticket.joined, 6)}
        granted = False
        try:
            self.reach_head(ticket, level)
            got = self.head(level, ticket)
            granted = True
            self.tickets[level.kind]["granted"] = round(time.time(), 6)
            return got
        except _Expired:
            raise self.busy(level) from None
        finally:
            ticket.leave(granted, self.dir_fd)

    def reach_head(self, ticket: Ticket, level: Level) -> None:
        target = ticket.pred
        while target:
            try:
                fd = _open(self.dir_fd, target, create=False)
            except FileNotFoundError:
                break  # it got its slot and left: everyone before it is done too
            if not _try_lock(fd):
                self.block([fd], level, ticket, grace=True)
            try:
                after = _read_link(fd, level)
                ticket.set_link(after)  # before the old target's file goes: a successor must find our way
                with contextlib.suppress(OSError):  # EPERM: another user's, in the sticky dir; left, read by nobody
                    os.unlink(target, dir_fd=self.dir_fd)
            finally:
                os.close(fd)
            target = after
        ticket.set_link("")

    def scan(self, level: Level) -> tuple[tuple[int, int] | None, list[int]]:
        """The first free slot (descriptor, index), locked; else None and every slot's descriptor."""
        fds: list[int] = []
        try:
            for i in range(level.limit):
                fds.append(_open(self.dir_fd, level.slot(i)))
                if _try_lock(fds[-1]):
                    _close(fds[:-1])
                    return (fds[-1], i), []
        except BaseException:
            _close(fds)
            raise
        return None, fds

    def head(self, level: Level, ticket: Ticket) -> tuple[int, int]:
        got, fds = self.scan(level)
        if got is not None:
            return got
        self.announce(level, ticket, full=True)
        index = self.block(fds, level, ticket, grace=False)
        return fds[index], index


def _info(session: Session, level: Level, state: str, waited: float) -> bytes:
    record = {
        "pid": os.getpid(),
        "client": session.client,
        "conn": session.conn,
        "started": time.time(),
        "binary": session.binary,
        "restrictions": list(session.restrictions),
        "user": session.user,
        "state": state,
        "limit": level.limit,
        "waited": round(waited, 3),
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _describe(fd: int, data: bytes) -> None:
    """Only the holder writes its slot file, and only while holding it: no torn record for a later holder."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def _room_for(fds: int) -> Any:
    """A waiting head keeps one descriptor per slot open: raise the soft RLIMIT_NOFILE for big budgets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = fds + 64
    raised = soft != resource.RLIM_INFINITY and want > soft
    if raised:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    try:
        yield
    finally:
        if raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def acquire(
    state_dir: str,
    client: str,
    budget: Budget,
    session: Session,
    *,
    say: Say,
    emit: Emit,
    watch_fd: int = 1,
) -> Held:
    """A client slot, then a host slot, waiting in turn up to ``budget.wait`` seconds.

    Refuses with Kind.BUSY at the deadline, Kind.CLIENT_GONE when ``watch_fd`` (the
    client's stdout pipe) reports the client gone while queued. ``say`` gets the one
    "waiting" line for the client, ``emit`` the ``session.queued`` events.
    """
    levels = (Level("client", client, budget.max_sessions_per_client), Level("host", "host", budget.max_sessions))
    umask = os.umask(statedir.SHARED_UMASK)
    dir_fd = statedir.open_dir(state_dir)
    held = Held()
    try:
        acq = _Acquirer(dir_fd, levels, budget.wait, watch_fd, say, emit)
        with _room_for(max(budget.max_sessions, budget.max_sessions_per_client)):
            for level in levels:
                if held.fds:  # status shows a client slot held while its connection waits for a host slot
                    _describe(held.fds[0], _info(session, levels[0], "queued", time.monotonic() - acq.start))
                fd, index = acq.take(level)
                held.fds.append(fd)
                held.slots.append(level.slot(index))
        held.waited = time.monotonic() - acq.start
        held.queues = acq.tickets
        if acq.queued and _client_gone(watch_fd):
            raise Refusal(Kind.CLIENT_GONE, "the client went away while queued for a session slot")
        for fd, level in zip(held.fds, levels, strict=True):
            _describe(fd, _info(session, level, "serving", held.waited))
        return held
    except BaseException:
        _close(held.fds)
        raise
    finally:
        os.close(dir_fd)
        os.umask(umask)
