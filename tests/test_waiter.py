"""A queued connection waits as the lean waiter (session, waiter.py); one with free slots never does.

The storm, kill and hang-up tests (test_slots*, test_queue*, test_signals, test_busy_host)
run through the waiter too, since every connection of theirs that queues becomes one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_gate.base import statedir
from borg_gate.base.connection import Connection
from borg_gate.base.errors import Kind
from borg_gate.conn import budgetfile, session, slots
from tests.slots_support import Hold, Site, assert_all_free, hold_slot
from tests.waiting import wait_for


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "host", max_sessions=1, per_client=1)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def is_waiter(argv: list[str]) -> bool:
    return argv[1:2] == ["-IS"] and argv[2].endswith("/borg_gate/conn/waiter.py")


def test_a_queued_connection_waits_as_the_waiter_and_keeps_its_pid_and_id(site: Site) -> None:
    hold = Hold(site.root / "hold")
    first = site.spawn("alice", hold=hold)
    wait_for(lambda: first.pid in site.started(), "the first recorder to start")
    second = site.spawn("bob")
    wait_for(lambda: "waiting for a session slot" in second.stderr(), "bob to queue")
    argv = cmdline(second.pid)
    assert is_waiter(argv), argv  # the same process, now the lean waiter
    hold.release()
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert second.pid in site.started()  # and borg serve ran as that same pid, holding its slots
    (queued,) = site.events("session.queued")
    started = {e["client"]: e for e in site.events("session.started")}
    assert queued["conn"] == started["bob"]["conn"] and queued["pid"] == started["bob"]["pid"] == second.pid
    assert started["bob"]["binary"] == str(site.recorder) and started["bob"]["restrictions"]  # the gate's context
    assert_all_free(site)


def test_a_waiter_whose_client_hangs_up_leaves_at_once(site: Site) -> None:
    fd = hold_slot(site, "slot.host.0")
    gate = site.spawn("alice")
    wait_for(lambda: is_waiter(cmdline(gate.pid)), "alice to become the waiter")
    gate.hang_up()
    assert gate.wait(60) == Kind.CLIENT_GONE
    (refused,) = site.events("connection.refused")
    assert refused["kind"] == "client-gone" and refused["client"] == "alice"
    os.close(fd)
    assert_all_free(site)


def test_a_supervised_connection_queues_as_the_waiter_then_supervises(site: Site) -> None:
    fd = hold_slot(site, "slot.host.0")
    gate = site.spawn("alice", "--supervise")
    wait_for(lambda: is_waiter(cmdline(gate.pid)), "alice to become the waiter")
    os.close(fd)
    assert gate.wait(60) == 0
    (ended,) = site.events("session.ended")
    (started,) = site.events("session.started")
    assert ended["conn"] == started["conn"] and ended["exit_code"] == 0


# --- would_wait: where to wait, never who gets a slot ---------------------------------------------


def budget(wait: float = 600) -> slots.Budget:
    return slots.Budget(max_sessions=1, max_sessions_per_client=1, wait=wait)


def test_would_wait_sees_a_full_budget_a_queue_and_a_hold(site: Site) -> None:
    state = str(site.state_dir)
    assert not slots.would_wait(state, "alice", budget())  # no state dir yet: acquire makes it
    fd = hold_slot(site, "slot.host.0")
    assert slots.would_wait(state, "alice", budget())
    assert not slots.would_wait(state, "alice", budget(wait=0))  # never queues: refused at once instead
    os.close(fd)
    assert not slots.would_wait(state, "alice", budget())

    dir_fd = statedir.open_dir(state)
    locks = budgetfile.open_locks(dir_fd, state)
    ticket = budgetfile.reopen(locks)
    budgetfile.lock(ticket, budgetfile.ticket_offset("host", 7))  # someone is queued for the host
    assert slots.would_wait(state, "alice", budget())
    os.close(ticket)
    assert not slots.would_wait(state, "alice", budget())

    done = site.admin("hold", "--client", "alice", "--reason", "test")
    assert done.returncode == 0, done.stderr
    assert slots.would_wait(state, "alice", budget()) and not slots.would_wait(state, "bob", budget())
    os.close(locks)
    os.close(dir_fd)


def test_would_wait_counts_only_usable_slots(site: Site) -> None:
    """A normal key stays out of the reserved slots: those being free does not let it skip the queue."""
    state = str(site.state_dir)
    reserved = slots.Budget(max_sessions=2, max_sessions_per_client=2, wait=600, reserved_sessions=1)
    fd = hold_slot(site, "slot.host.0")
    assert slots.would_wait(state, "alice", reserved)
    assert not slots.would_wait(state, "alice", slots.Budget(2, 2, 600, reserved_sessions=1, priority=True))
    os.close(fd)


# --- the Seat survives the exec ------------------------------------------------------------------

texts = st.text(max_size=20)
seats = st.builds(
    session.Seat,
    state_dir=texts,
    client=texts,
    binary=texts,
    restrictions=st.lists(texts, max_size=3).map(tuple),
    budget=st.builds(
        slots.Budget,
        st.integers(0, 99),
        st.integers(0, 99),
        st.floats(0, 1e6),
        st.integers(0, 9),
        st.booleans(),
        st.integers(1, 9),
    ),
    repo=st.none() | texts,
    rest=st.booleans(),
    argv=st.lists(texts, min_size=1, max_size=5).map(tuple),
    env=st.dictionaries(texts, texts, max_size=4),
    umask=st.integers(0, 0o777),
    supervise=st.booleans(),
    log_file=st.none() | texts,
    syslog=st.booleans(),
    conn=st.builds(
        Connection,
        texts,
        texts,
        st.integers(0, 2**31),
        st.none() | texts,
        st.none() | st.integers(0, 65535),
        st.none() | texts,
        st.none() | texts,
        st.floats(0, 2e9),
        st.floats(0, 1e6),
    ),
    context=st.dictionaries(texts, st.none() | st.integers() | texts | st.lists(texts, max_size=3), max_size=4),
)


@given(seats)
def test_a_seat_reads_back_as_it_was_written(seat: session.Seat) -> None:
    assert session.Seat.load(seat.dump()) == seat


# --- what a connection loads ----------------------------------------------------------------------
# --- signals across the exec into the waiter --------------------------------------------------------


def test_a_signal_during_the_exec_into_the_waiter_is_answered_by_the_waiter() -> None:
    """exec resets the handlers but keeps the mask: defer holds SIGHUP back until the waiter can refuse."""
    package_root = str(Path(session.__file__).parents[2])
    after = (
        "import sys; sys.path.insert(0, sys.argv[1]); from borg_gate.conn import interrupt; interrupt.install()\n"
        "try:\n    interrupt.resume()\nexcept interrupt.Interrupted as exc:\n    print('answered', exc.name)"
    )
    before = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); from borg_gate.conn import interrupt\n"
        "interrupt.install(); interrupt.defer(); os.kill(os.getpid(), signal.SIGHUP)\n"
        "os.execv(sys.executable, [sys.executable, '-IS', '-c', sys.argv[2], sys.argv[1]])"
    )
    out = subprocess.run(
        [sys.executable, "-IS", "-c", before, package_root, after],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout) == (0, "answered SIGHUP\n"), out.stderr
