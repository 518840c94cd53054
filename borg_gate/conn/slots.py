"""Session slots: host-wide and per-client budgets held as kernel locks, with a fair queue.

Slots
    A budget of N sessions is N bytes of the state dir's root-owned lock file (budgetfile: why
    one root-owned file, and its layout). A slot is held by an exclusive open-file-description
    lock on its byte, taken on a descriptor of its own that is made inheritable at exec, so
    borg serve holds it from then on: whenever that process ends (exit, crash, kill -9), the
    kernel drops the lock. Nothing is ever cleaned up and no pid is ever trusted. Slots keep
    their names (``slot.host.0``, ``slot.client.<name>.0``) for events and ``status``.

    A connection takes its client's slot first, then a host-wide one, so a client at its
    own limit queues behind its own sessions without holding a host slot that other
    clients could use. A held slot is described for ``status`` in a record file of the
    holder's own (``rec.<budget>.<index>.<uid>``), written after the lock is held; records
    are for display only, a missing or planted one never changes who gets a slot.

    Slot N of a budget of L is used only while N < L. Lowering a limit leaves sessions in
    the higher slots running (``status`` still lists them) without counting them against
    the new limit until they end; keys of one client should agree on ``--max-sessions``
    (a key allowed 1 waits for slot 0 even when its client's slot 2 is free).

Queue (one per budget)
    When a budget may be full, connections wait in arrival order. A newcomer draws the next
    number from its budget's counter in the lock file and holds an exclusive lock on that
    number's ticket byte. It then waits for a shared lock over the bytes of every lower
    number that can be live: the kernel grants it only once none of them is locked, i.e. when
    everyone who came earlier got a slot or left. Only then does it try the slots, so grants
    follow arrival order and nobody can overtake. A waiter killed (-9) or gone loses its lock
    with its process; there are no ticket files, and nothing is left behind. Connections
    with ``wait = 0`` never queue: they take a free slot or are refused at once (and may take
    a slot the head was about to get).

Waiting costs no CPU
    Every wait is a blocking lock request in a helper thread, woken by the kernel the instant
    the bytes are free (no poll interval, no missed wake-up); the main thread sleeps in poll()
    on a pipe from those threads and on fd 1, which reports POLLERR/POLLHUP as soon as sshd
    closes the session's pipes: an abandoned waiter leaves at once and never takes a slot.
    Only heads block on slots, one thread per slot up to MAX_THREADS; a budget bigger than
    that has its remaining slots re-tried (non-blocking) every RECHECK seconds by its head.

What ``status`` and ``metrics`` read of the slots (``Holder``, ``BudgetUsage``, ``snapshot``)
is root's code, in borg_gate.admin.slotstatus: a connection never loads it.

Several unix users share one host budget through the group of a shared state dir: see statedir.
"""

from __future__ import annotations

import os
import select
import time

from borg_gate.base import jsontext, statedir
from borg_gate.base.errors import Kind, Refusal, busy, misconfigured
from borg_gate.base.values import frozen
from borg_gate.conn import budgetfile, holds

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final

    Say = Callable[[str], None]
    Emit = Callable[..., None]


ANNOUNCE_AFTER: Final = 0.2  # behind a live ticket, say "waiting" only if it does not move on by then
MAX_THREADS: Final = 128  # slots beyond this many are re-tried every RECHECK seconds instead
RECHECK: Final = 1.0
MAX_DRAWS: Final = 64  # queue numbers tried when their ticket bytes are taken (only ever by a non-gate)
GONE: Final = select.POLLERR | select.POLLHUP
RECORD_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
RECORD_MODE: Final = 0o640  # readable by status (root, the group), writable by its owner alone


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
    """One budget: a repository's, a client's or the host's, as this connection may use it.

    ``usable`` are the slot indices this connection may take: a normal connection stays
    below the host's ``reserved`` slots, a priority one may take any, from the top down so
    that it leaves normal slots to normal connections. ``queue`` is the ticket queue it
    waits in: priority connections have one of their own, served first.
    """

    __slots__ = ("key", "kind", "limit", "name", "priority", "queue", "usable")

    def __init__(
        self, kind: str, name: str, limit: int, *, key: str = "", reserved: int = 0, priority: bool = False
    ) -> None:
        self.kind = kind
        self.name = name
        self.limit = limit
        self.key = key or ("host" if kind == "host" else f"{kind}.{name}")
        self.priority = priority
        self.usable = range(limit - 1, -1, -1) if priority else range(max(0, limit - reserved))
        self.queue = f"prio.{self.key}" if priority else self.key

    def slot(self, index: int) -> str:
        return f"slot.{self.key}.{index}"

    def record(self, index: int) -> str:
        return f"rec.{self.key}.{index}.{os.geteuid()}"

    def usage(self, in_use: int | None, *, named: bool = True) -> str:
        """``3/8`` or ``alice 2/2``; ``?`` when /proc/locks could not be read."""
        count = f"{'?' if in_use is None else in_use}/{self.limit}"
        return f"{self.name} {count}" if named and self.kind != "host" else count


def repo_key(path: str) -> str:
    """A repository's budget key, from its real path: two spellings of one repository share a queue."""
    return "repo." + budgetfile.digest(path.encode())[:8].hex()


@frozen
class Budget:
    """The session limits and queueing deadline that apply to this connection (policy decides them)."""

    max_sessions: int
    max_sessions_per_client: int
    wait: float
    reserved_sessions: int = 0  # host slots only priority keys may take
    priority: bool = False
    max_sessions_per_repo: int = 1  # when the gate knows the repository before exec


# --- descriptors ------------------------------------------------------------------------------


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _client_gone(watch_fd: int) -> bool:
    if watch_fd < 0:
        return False
    p = select.poll()
    p.register(watch_fd, 0)  # POLLERR/POLLHUP are always reported; asking for POLLOUT would wake at once
    return any(ev & GONE for _, ev in p.poll(0))


class _Expired(Exception):
    """The deadline passed while waiting."""


# A lock request: (descriptor, start, length, shared). Each has a descriptor (an open file
# description) of its own, so that granting one never merges with or releases another.
Request = tuple[int, int, int, bool]


class _Blocker:
    """Waits, without spinning, until this process holds the lock of one of ``requests``.

    One thread per request sits in a blocking F_OFD_SETLKW, woken by the kernel when the
    bytes are free. The descriptors belong to the blocker from then on: ``wait`` hands the
    winner's back; a thread that gets its lock after that closes its descriptor (so the
    unwanted lock is released at once), and one that never does dies with the process, its
    descriptor closed by exec (O_CLOEXEC) or exit.
    """

    def __init__(self, requests: Sequence[Request], watch_fd: int) -> None:
        import _thread  # threading's own base: waiters need a lock and threads, not its ~0.8 MiB

        self.requests = list(requests)
        self.watch_fd = watch_fd
        self.mu = _thread.allocate_lock()
        self.won: list[int] = []
        self.done = False
        self.r, self.w = os.pipe()
        self.polled = list(range(MAX_THREADS, len(self.requests)))  # past the thread cap: NB re-tries
        self.poll = select.poll()
        self.poll.register(self.r, select.POLLIN)
        if watch_fd >= 0:
            self.poll.register(watch_fd, 0)
        _thread.stack_size(256 * 1024)
        for i in range(min(len(self.requests), MAX_THREADS)):
            _thread.start_new_thread(self._block, (i,))  # never joined: exec or exit ends them

    def _try(self, i: int, *, wait: bool) -> bool:
        fd, start, length, shared = self.requests[i]
        try:
            return budgetfile.lock(fd, start, length, shared=shared, wait=wait)
        except OSError:
            return False

    def _block(self, i: int) -> None:
        got = self._try(i, wait=True)
        with self.mu:
            if got and not self.done:
                self.won.append(i)
                os.write(self.w, b"!")
                return
        os.close(self.requests[i][0])

    def wait(self, until: float) -> int | None:
        """The index of the request now granted, or None at ``until``; raises if the client left."""
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
                if self._try(i, wait=False):
                    with self.mu:
                        return self._finish(i)
            if time.monotonic() >= until:
                return None

    def _finish(self, winner: int) -> int:
        """Under ``mu``: keep ``winner``, release every other lock this blocker got."""
        self.done = True
        _close([self.requests[i][0] for i in self.won + self.polled if i != winner])
        _close([self.r, self.w])
        return winner

    def cancel(self) -> None:
        with self.mu:
            if not self.done:
                self._finish(-1)


# --- one connection's way to its slots --------------------------------------------------------


class Ticket:
    """Our place in a queue: number ``seq``, whose byte ``fd`` holds locked until we leave."""

    __slots__ = ("fd", "joined", "level", "seq")

    def __init__(self, level: Level, fd: int, seq: int) -> None:
        self.level = level
        self.fd = fd
        self.seq = seq
        self.joined = time.time()


def _seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


class _Acquirer:
    def __init__(
        self, dir_fd: int, locks: int, levels: Sequence[Level], wait: float, watch_fd: int, say: Say, emit: Emit
    ) -> None:
        self.dir_fd = dir_fd
        self.locks = locks  # the checked lock file; every lock is taken on a reopened description of it
        self.levels = levels
        self.client, self.host = levels[-2], levels[-1]
        self.rest = False  # a rest:// client: a hold refuses it at once (see hold_wait)
        self.on_hold: str | None = None  # the hold this connection waited for, if any
        self.wait = wait
        self.start = time.monotonic()
        self.deadline = self.start + wait
        self.watch_fd = watch_fd
        self.say = say
        self.emit = emit
        self.said = False
        self.said_hold = False
        self.queued: set[str] = set()  # budgets this connection waited for
        self.tickets: dict[str, dict[str, float]] = {}

    def counts(self, *levels: Level, ticket: Ticket | None = None) -> tuple[list[int | None], int | None]:
        """Slots in use per level and our place in line (None where the lock file cannot be asked).

        Asked of the lock file itself (budgetfile.locked_bytes), not read from /proc/locks: with
        a thousand queued, the kernel would print some 3,000 locks (~3 ms of CPU) for each.
        """
        try:
            used: list[int | None] = [
                budgetfile.locked_bytes(self.locks, budgetfile.slot_offset(level.key, 0), level.limit)
                for level in levels
            ]
            ahead = budgetfile.ahead(ticket.level.queue, ticket.seq) if ticket else []
            place = 1 + sum(budgetfile.locked_bytes(self.locks, a, n, exclusive_only=True) for a, n in ahead)
        except OSError:
            return [None] * len(levels), None
        return used, place if ticket else None

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
        reason = self.hold_on(level)
        if reason is not None:
            self.tell_hold(reason)  # behind the head, a held queue says why, as its head does
        elif not self.said:
            self.said = True
            self.say(f"waiting for a session slot ({level.usage(in_use)} in use)…")

    def hold_on(self, level: Level) -> str | None:
        """Root's hold on ``level``: the host's, or our client's."""
        if level.kind == "repo":
            return None
        return holds.active(self.dir_fd, None if level.kind == "host" else level.name)

    def tell_hold(self, reason: str) -> None:
        if not self.said_hold:
            self.said_hold = True
            self.emit("session.held", reason=reason, wait=self.wait)
            self.say(f"on hold: {reason}; waiting…")

    def busy(self, level: Level) -> Refusal:
        waited = time.monotonic() - self.start
        other = self.client if level is self.host else self.host
        (mine, theirs), _ = self.counts(level, other)
        if self.on_hold is not None:
            text = f"on hold: {self.on_hold}"
        elif level is self.host:
            text = f"{self.host.usage(mine)} sessions in use, {self.client.usage(theirs)}"
        elif level.kind == "repo":
            text = f"repository {level.name} has {level.usage(mine, named=False)} sessions in use"
        else:
            text = f"{level.name} has {level.usage(mine, named=False)} sessions in use (server {other.usage(theirs)})"
        return busy(
            f"server busy: {text}; waited {_seconds(waited)} s",
            budget=level.kind,
            in_use=mine,
            limit=level.limit,
            waited=round(waited, 3),
        )

    def block(self, requests: Sequence[Request], on_wait: Callable[[], None], *, grace: bool) -> int:
        """Wait for one of ``requests`` (whose descriptors the blocker then owns); the index granted.

        ``on_wait`` runs once the wait is real: at once, or after ANNOUNCE_AFTER with ``grace``.
        """
        blocker = _Blocker(requests, self.watch_fd)
        try:
            got = blocker.wait(min(self.deadline, time.monotonic() + ANNOUNCE_AFTER)) if grace else None
            if got is None:
                on_wait()
                got = blocker.wait(self.deadline)
        except BaseException:
            blocker.cancel()
            raise
        if got is None:
            blocker.cancel()
            raise _Expired
        return got

    def locked(self, start: int, length: int, on_wait: Callable[[], None], *, shared: bool = False) -> int:
        """A new description of the lock file holding ``length`` bytes at ``start``, waiting as needed."""
        fd = budgetfile.reopen(self.locks)
        try:
            if budgetfile.lock(fd, start, length, shared=shared):
                return fd
        except BaseException:
            os.close(fd)
            raise
        self.block([(fd, start, length, shared)], on_wait, grace=True)
        return fd

    def join(self, level: Level) -> Ticket:
        """Our queue number in ``level``, its ticket byte locked.

        The ticket byte is locked before the counter's lock is let go: a newcomer who drew
        the next number must find ours taken, or it would see nobody ahead and overtake.
        A number whose byte is already locked (a member rewound the counter) is skipped.
        """
        fd = budgetfile.reopen(self.locks)
        try:
            guard = self.locked(budgetfile.counter_offset(level.queue), budgetfile.COUNTER_WIDTH, lambda: None)
            try:
                for _ in range(MAX_DRAWS):
                    seq = budgetfile.bump(guard, level.queue)
                    if budgetfile.lock(fd, budgetfile.ticket_offset(level.queue, seq)):
                        return Ticket(level, fd, seq)
            finally:
                os.close(guard)
            raise _Expired  # ticket bytes locked by something that is not a gate: busy, as if full
        except BaseException:
            os.close(fd)
            raise

    def take(self, level: Level) -> tuple[int, int]:
        """A slot of ``level`` (descriptor, index): at once when ``wait`` is 0, else in turn."""
        if self.wait <= 0:
            reason = holds.any_active(self.dir_fd, self.client.name)
            if reason is not None:
                self.on_hold = reason
                raise self.busy(level)
            got = self.scan(level)
            if got is None:
                raise self.busy(level)
            return got
        try:
            ticket = self.join(level)
            self.tickets[level.kind] = {"ticket": ticket.seq, "joined": round(ticket.joined, 6)}
            try:
                for start, length in reversed(budgetfile.ahead(level.queue, ticket.seq)):  # nearest first
                    self.behind(ticket.fd, start, length, lambda: self.announce(level, ticket))
                got = self.head(level, ticket)
            finally:
                os.close(ticket.fd)  # our successor's turn
        except _Expired:
            raise self.busy(level) from None
        self.tickets[level.kind]["granted"] = round(time.time(), 6)
        return got

    def behind(self, probe: int, start: int, length: int, on_wait: Callable[[], None]) -> None:
        """Wait until no ticket in these bytes is live, behind the nearest live one each time.

        One shared lock over the whole range would wait on whichever ticket the kernel finds
        first, the oldest: each departure at the head would then wake every waiter to wait
        on the next (bench/herd: 6.3 ms of lock-wait CPU per connection with 733 queued,
        growing with the queue). Behind our nearest predecessor, one departure wakes one
        waiter. Gates draw tickets in rising order, so bytes found free below us stay free.
        ``probe`` asks where the live tickets are: our ticket's descriptor does, its own
        lock being outside these bytes.
        """
        top = start + length
        while (live := budgetfile.highest_locked(probe, start, top - start)) is not None:
            os.close(self.locked(live, 1, on_wait, shared=True))
            top = live

    def scan(self, level: Level) -> tuple[int, int] | None:
        """The first free usable slot (descriptor, index), locked, or None."""
        fd = budgetfile.reopen(self.locks)
        for i in level.usable:
            if budgetfile.lock(fd, budgetfile.slot_offset(level.key, i)):
                return fd, i
        os.close(fd)
        return None

    def hold_wait(self, level: Level) -> None:
        """While root holds ``level`` (the host, or our client): wait (or refuse), re-reading the hold.

        A host hold is waited for at the head of the host queue, a client hold at the head of
        the client's: so the queue keeps arrival order, and the release lets it go on in it.
        A rest:// client opens several connections per command; holding one of them would
        leave its command hanging between two connections until the deadline, so it is
        refused at once with the reason (borgstore retries, then the command fails showing it).
        """
        reason = self.hold_on(level)
        if reason is None:
            return
        self.on_hold = reason
        if self.rest:
            raise busy(f"on hold: {reason}; rest:// commands cannot wait for the release, retry after it")
        self.tell_hold(reason)
        poll = select.poll()
        if self.watch_fd >= 0:
            poll.register(self.watch_fd, 0)
        while reason is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Expired
            for _, ev in poll.poll(int(min(left, holds.HOLD_RECHECK) * 1000) + 1):
                if ev & GONE:
                    raise Refusal(Kind.CLIENT_GONE, "the client went away while queued for a session slot")
            reason = self.hold_on(level)
        self.on_hold = None

    @staticmethod
    def priority_lane(level: Level) -> int | None:
        """Where the tickets of the priority lane a normal host head must yield to start, or None."""
        if level.kind != "host" or level.priority:
            return None
        return budgetfile.region(f"prio.{level.key}") + budgetfile.TICKETS

    def behind_priority(self, level: Level, ticket: Ticket) -> None:
        """A normal connection at the host's head: wait while priority connections queue."""
        start = self.priority_lane(level)
        if start is not None:
            on_wait = lambda: self.announce(level, ticket)  # noqa: E731
            os.close(self.locked(start, budgetfile.TICKET_SPACE, on_wait, shared=True))

    def priority_waiting(self, level: Level) -> bool:
        start = self.priority_lane(level)
        if start is None:
            return False
        fd = budgetfile.reopen(self.locks)
        try:
            return not budgetfile.lock(fd, start, budgetfile.TICKET_SPACE, shared=True)
        finally:
            os.close(fd)

    def head(self, level: Level, ticket: Ticket) -> tuple[int, int]:
        """At the head of the queue: the first slot that frees, unless a hold or a priority waiter comes first."""
        while True:
            self.hold_wait(level)
            self.behind_priority(level, ticket)
            got = self.scan(level)
            if got is None:
                self.announce(level, ticket, full=True)
                requests: list[Request] = []
                try:
                    for i in level.usable:
                        requests.append((budgetfile.reopen(self.locks), budgetfile.slot_offset(level.key, i), 1, False))
                except BaseException:
                    _close([r[0] for r in requests])
                    raise
                index = self.block(requests, lambda: None, grace=False)
                got = requests[index][0], level.usable[index]
            if not self.priority_waiting(level):
                return got
            os.close(got[0])  # a priority connection came meanwhile: the slot is its


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
        "budget": level.name,
    }
    return (jsontext.dumps(record) + "\n").encode()


def _describe(dir_fd: int, name: str, data: bytes) -> None:
    """Our record of a slot we hold, for ``status``; skipped (never refused) when the name is not ours.

    Only the slot's holder writes it, while holding the slot: no torn record for a later
    holder of the same user. A file under our name that is not our own single-linked regular
    file was planted; writing through it could clobber someone else's file.
    """
    try:
        fd = os.open(name, RECORD_FLAGS, RECORD_MODE, dir_fd=dir_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if statedir.own_file(st):
            os.pwrite(fd, data, 0)
            if st.st_size > len(data):  # cut only a longer old record: truncating costs a disk fs ~0.3 ms
                os.ftruncate(fd, len(data))
    except OSError:
        pass
    finally:
        os.close(fd)


class _RoomFor:
    """A waiting head keeps one descriptor per slot open: raise the soft RLIMIT_NOFILE for big budgets."""

    def __init__(self, fds: int) -> None:
        self.fds = fds
        self.saved: tuple[int, int] | None = None

    def __enter__(self) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.fds + 64
        if soft != resource.RLIM_INFINITY and want > soft:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard)
            )
            self.saved = (soft, hard)

    def __exit__(self, *_exc: object) -> None:
        if self.saved is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)


def _levels(client: str, budget: Budget, repo: str | None) -> list[Level]:
    levels = [
        Level("client", client, budget.max_sessions_per_client),
        Level("host", "host", budget.max_sessions, reserved=budget.reserved_sessions, priority=budget.priority),
    ]
    if repo is not None:  # first: waiting for its repository, a connection holds nothing others could use
        levels.insert(0, Level("repo", repo, budget.max_sessions_per_repo, key=repo_key(repo)))
    return levels


def _free_slot(locks: int, level: Level) -> bool:
    """Whether some slot this connection may use in ``level`` is unlocked right now (asks, takes nothing)."""
    first = budgetfile.slot_offset(level.key, min(level.usable))  # usable slots are one run of bytes
    return budgetfile.locked_bytes(locks, first, len(level.usable)) < len(level.usable)


def would_wait(state_dir: str, client: str, budget: Budget, repo: str | None = None) -> bool:
    """Whether this connection would queue if it asked for its slots now: someone queued, a slot budget full, a hold.

    Only where to wait depends on it (session: the whole gate, or a lean waiter), never the
    order or the count: acquire decides those, under its locks. Anything odd (no state dir
    yet, an unsafe one) answers False, and acquire, in this process, refuses as it always did.
    """
    if budget.wait <= 0:
        return False  # never queues: a free slot or a refusal, at once
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except (OSError, Refusal):
        return False
    locks = -1
    try:
        locks = budgetfile.open_locks(dir_fd, state_dir)
        if holds.any_active(dir_fd, client) is not None:
            return True
        for level in _levels(client, budget, repo):
            if not level.usable:
                return False  # acquire refuses such a budget at once
            lanes = (budgetfile.region(level.queue) + budgetfile.TICKETS, _Acquirer.priority_lane(level))
            for start in lanes:  # its own queue, and a normal host head yields to the priority lane
                if start is not None and budgetfile.lock_in(locks, start, budgetfile.TICKET_SPACE) is not None:
                    return True  # someone is in the queue: grants follow arrival order
            if not _free_slot(locks, level):
                return True
        return False
    except (OSError, Refusal):
        return False
    finally:
        _close([locks] if locks >= 0 else [])
        os.close(dir_fd)


def acquire(
    state_dir: str,
    client: str,
    budget: Budget,
    session: Session,
    *,
    say: Say,
    emit: Emit,
    watch_fd: int = 1,
    repo: str | None = None,
    rest: bool = False,
) -> Held:
    """A repository slot (when ``repo``, its real path, is known), a client slot, then a host slot,
    each waiting in turn up to ``budget.wait`` seconds; never while root holds the host or the client.

    Refuses with Kind.BUSY at the deadline, Kind.CLIENT_GONE when ``watch_fd`` (the
    client's stdout pipe) reports the client gone while queued. ``say`` gets the one
    "waiting" line for the client, ``emit`` the ``session.queued`` events.
    """
    levels = _levels(client, budget, repo)
    if not levels[-1].usable:
        raise misconfigured(
            f"reserved_sessions = {budget.reserved_sessions} leaves no session of {budget.max_sessions} to normal keys"
        )
    umask = os.umask(statedir.SHARED_UMASK)
    dir_fd = statedir.open_dir(state_dir)
    locks = -1
    held = Held()
    indices: list[int] = []
    try:
        locks = budgetfile.open_locks(dir_fd, state_dir)
        acq = _Acquirer(dir_fd, locks, levels, budget.wait, watch_fd, say, emit)
        acq.rest = rest
        with _RoomFor(max(budget.max_sessions, budget.max_sessions_per_client, budget.max_sessions_per_repo)):
            while True:
                for level in levels:
                    for done, index in zip(levels, indices, strict=False):  # status shows slots held while queued
                        _describe(
                            dir_fd, done.record(index), _info(session, done, "queued", time.monotonic() - acq.start)
                        )
                    fd, index = acq.take(level)
                    held.fds.append(fd)
                    indices.append(index)
                    held.slots.append(level.slot(index))
                if holds.any_active(dir_fd, client) is None:
                    break
                # root placed a hold while we took our slots: give them back and wait like the rest
                _close(held.fds)
                held, indices = Held(), []
                if rest:
                    acq.hold_wait(levels[-1])  # refuses: a rest:// client never waits for a release
                    acq.hold_wait(levels[-2])
                elif budget.wait <= 0:
                    acq.on_hold = holds.any_active(dir_fd, client) or "maintenance"
                    raise acq.busy(levels[-1])
        held.waited = time.monotonic() - acq.start
        held.queues = acq.tickets
        if (acq.queued or acq.on_hold) and _client_gone(watch_fd):
            raise Refusal(Kind.CLIENT_GONE, "the client went away while queued for a session slot")
        for level, index in zip(levels, indices, strict=True):
            _describe(dir_fd, level.record(index), _info(session, level, "serving", held.waited))
        return held
    except BaseException:
        _close(held.fds)
        raise
    finally:
        _close([locks] if locks >= 0 else [])
        os.close(dir_fd)
        os.umask(umask)
