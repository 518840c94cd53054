"""Steps 4 and 5 of a connection: its session slots (queueing if it must), session.started, borg serve.

Queueing is the one part of a connection that takes long: at 02:00 a thousand of them may
wait for minutes. By then everything the gate decided is in a :class:`Seat`, plain data,
and the whole gate (its parser, config, policy, versions: most of its memory) is needed no
more. So a connection that would have to queue (slots.would_wait: someone is queued ahead,
a budget is full, root holds it) first becomes a lean process that only waits: it execs
``python3 -IS borg_gate/conn/waiter.py``, which reads the Seat back and runs :func:`run` with no
more than this module needs (slots, events, exec). Same pid, same stdin/stdout/stderr, same
connection id. In bench/herd's storm of 1,000 such a waiter is 3.5 MiB (PSS), 1.4 times a
bare interpreter; the whole gate waiting was 8 MiB. One that finds its slots free takes them
in the gate's process and execs at once. Either way :func:`run` takes the slots, so queue order
and limits do not depend on which process waits: would_wait only picks the process.
"""

from __future__ import annotations

import marshal
import os
import sys

from borg_gate.base import events, values
from borg_gate.base.connection import Connection
from borg_gate.base.errors import Kind
from borg_gate.conn import execute, interrupt, reconnects, slots, tell
from borg_gate.conn.interrupt import Interrupted

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Any, Final, NoReturn

WAITER: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "waiter.py")
MAX_SEAT_BYTES: Final = 1 << 22  # a key line's restrictions and an environment: a few KiB in practice


@values.frozen
class Seat:
    """What a connection needs once the gate has decided what it may run, and nothing the client chose."""

    state_dir: str
    client: str
    binary: str  # the config's path of the borg binary (status, events)
    restrictions: tuple[str, ...]
    budget: slots.Budget
    repo: str | None  # its real path when the gate knows the repository before exec (its own queue)
    rest: bool  # a rest:// client: a hold or a deadline refuses it at once (reconnects)
    argv: tuple[str, ...]
    env: dict[str, str]
    umask: int
    supervise: bool
    log_file: str | None
    syslog: bool
    conn: Connection
    context: dict[str, Any]  # the fields the connection's events carry (EventLog.bind)

    def log(self) -> events.EventLog:
        log = events.EventLog(self.conn, self.log_file, syslog=self.syslog, state_dir=self.state_dir)
        log.bind(**self.context)
        return log

    def dump(self) -> bytes:
        fields = values.asdict(self)
        fields.update(budget=values.asdict(self.budget), conn=values.asdict(self.conn))
        return marshal.dumps(fields)

    @classmethod
    def load(cls, data: bytes) -> Seat:
        fields = marshal.loads(data)  # noqa: S302  # written by this very process before its exec
        fields.update(budget=slots.Budget(**fields["budget"]), conn=Connection(**fields["conn"]))
        return cls(**fields)


def start(seat: Seat, log: events.EventLog) -> NoReturn:
    """Take the slots and exec borg serve: here when they are free, else as a lean waiter."""
    if slots.would_wait(seat.state_dir, seat.client, seat.budget, seat.repo):
        become_waiter(seat)  # returns only if the exec failed: then this process waits
    run(seat, log)


def become_waiter(seat: Seat) -> None:
    """exec the waiter with the Seat in a memfd; returns if it cannot (the caller waits instead)."""
    try:
        fd = os.memfd_create("borg-gate-seat", 0)
    except OSError:
        return
    try:
        data = seat.dump()
        if len(data) > MAX_SEAT_BYTES or os.write(fd, data) != len(data):
            return
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        interrupt.defer()
        try:
            # -IS as the Debian package's /usr/bin/borg-gate; the waiter puts this package on its path.
            os.execve(sys.executable, [sys.executable, "-IS", WAITER, str(fd)], seat.env)
        finally:
            interrupt.resume()  # no exec: this process waits, with its own handlers
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)  # only reached when no exec happened


def run(seat: Seat, log: events.EventLog) -> NoReturn:
    """Step 4: the repository's slot (when known), the client's, then the host's, each in its
    queue until the deadline (not again for a rest:// client's reconnect right after a deadline
    refusal), never while root holds the host or the client. Step 5: borg serve takes over this
    process, holding the slots (or runs as its child, supervised)."""
    conn = seat.conn
    session = slots.Session(seat.client, conn.id, seat.binary, seat.restrictions, conn.unix_user)
    held = reconnects.acquire(
        seat.state_dir,
        seat.client,
        conn.remote_ip,
        rest=seat.rest,
        budget=seat.budget,
        take=lambda budget: slots.acquire(
            seat.state_dir, seat.client, budget, session, say=tell.say, emit=log.emit, repo=seat.repo, rest=seat.rest
        ),
    )
    log.emit(
        "session.started", waited=round(held.waited, 3), slots=held.slots, queues=held.queues, argv=list(seat.argv)
    )
    if seat.supervise:
        from borg_gate.conn import supervise  # only supervised connections pay for it

        interrupt.release(keep=supervise.FORWARDED)  # the supervisor forwards these to borg serve
        supervise.run(seat.argv, seat.env, seat.umask, held.fds, log)
    execute.exec_serve(seat.argv, seat.env, seat.umask, held.fds)


def resume(fd: int) -> NoReturn:
    """The waiter's whole life: read the Seat the gate left in ``fd``, then :func:`run` it."""
    interrupt.install()  # exec reset the gate's handlers; what came meanwhile is held back (defer)
    try:
        data = os.read(fd, MAX_SEAT_BYTES + 1)
        os.close(fd)
        seat = Seat.load(data)
    except Exception:  # no Seat, so no connection id nor log to tell: the client at least hears why
        tell.say("internal error, refused (the waiting process lost its connection's state)")
        os._exit(int(Kind.INTERNAL))
    log = seat.log()
    try:
        try:
            interrupt.resume()  # a signal that came while this interpreter started is answered now
            run(seat, log)
        except SystemExit:
            raise
        except BaseException as exc:  # a refusal, a signal, a bug: as the gate answers them
            tell.fail(exc, log)
    except Interrupted:  # arrived inside those handlers, before a refusal took over: end quietly
        os._exit(int(Kind.CLIENT_GONE))
