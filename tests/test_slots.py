"""Session slots through the real gate: state dir safety, slot records, refusals, kill -9, snapshot."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_gate.admin import slotstatus
from borg_gate.base import statedir
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import slots
from borg_gate.conn.policy import Budget
from tests.slots_support import Hold, Site, assert_all_free, hold_slot
from tests.waiting import wait_for


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "host", max_sessions=1, per_client=2)


# --- the state dir -------------------------------------------------------------------------


def test_missing_state_dir_is_created_private(site: Site) -> None:
    assert not site.state_dir.exists()
    assert site.spawn("alice").wait(60) == 0
    st = site.state_dir.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    locks = (site.state_dir / "locks").lstat()  # nobody else can plant anything here: the gate makes it
    assert stat.S_ISREG(locks.st_mode) and stat.S_IMODE(locks.st_mode) == 0o600 and locks.st_uid == os.geteuid()
    uid = os.geteuid()
    assert {p.name for p in site.state_dir.glob("rec.*")} == {f"rec.client.alice.0.{uid}", f"rec.host.0.{uid}"}


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda d: d.symlink_to(d.parent / "elsewhere"), "a symlink"),
        (lambda d: (d.mkdir(), os.chown(d, 54321, 0)), "owned by uid 54321, not by root or this user"),
        (lambda d: (d.mkdir(), d.chmod(0o777)), "world-writable without the sticky bit"),
        (lambda d: d.write_text(""), "not a directory"),
    ],
)
def test_unsafe_state_dir_is_refused(site: Site, prepare, reason: str) -> None:  # type: ignore[no-untyped-def]
    (site.root / "elsewhere").mkdir(mode=0o700)
    prepare(site.state_dir)
    gate = site.spawn("alice")
    assert gate.wait(60) == Kind.MISCONFIGURED
    assert gate.stderr() == f"borg-gate: state dir {site.state_dir}: {reason}\n"
    assert site.started() == {}


def test_world_writable_sticky_state_dir_is_refused(site: Site) -> None:
    """Like /tmp: every local user would be a member, able to plant names and hold locks."""
    site.state_dir.mkdir()
    site.state_dir.chmod(0o1777)
    gate = site.spawn("alice")
    assert gate.wait(60) == Kind.MISCONFIGURED
    assert gate.stderr().startswith(f"borg-gate: state dir {site.state_dir}: world-writable (sticky or not")
    assert site.started() == {}


@pytest.mark.parametrize(("plant", "reason"), [("symlink", "a symlink"), ("fifo", "not a regular file")])
def test_a_planted_lock_file_is_refused(site: Site, plant: str, reason: str) -> None:
    site.state_dir.mkdir(mode=0o700)
    victim = site.root / "victim"
    victim.write_text("do not touch\n")
    if plant == "symlink":
        (site.state_dir / "locks").symlink_to(victim)
    else:
        os.mkfifo(site.state_dir / "locks")
    gate = site.spawn("alice")
    assert gate.wait(60) == Kind.MISCONFIGURED
    assert gate.stderr().startswith(f"borg-gate: state dir {site.state_dir}: lock file locks: {reason}")
    assert victim.read_text() == "do not touch\n"
    assert site.started() == {}


def test_planted_slot_and_record_names_change_nothing(site: Site) -> None:
    """Slots are bytes of the lock file: files under the old slot names, or a record name pointing
    elsewhere, are never opened for a lock, and a record is never written through a link."""
    site.state_dir.mkdir(mode=0o700)
    victim = site.root / "victim"
    victim.write_text("do not touch\n")
    uid = os.geteuid()
    (site.state_dir / "slot.host.0").symlink_to(victim)
    os.mkfifo(site.state_dir / "slot.client.alice.0")
    (site.state_dir / f"rec.host.0.{uid}").symlink_to(victim)
    os.link(victim, site.state_dir / f"rec.client.alice.0.{uid}")
    gate = site.spawn("alice", "--wait", "0")
    assert gate.wait(60) == 0, gate.stderr()
    assert victim.read_text() == "do not touch\n"
    assert len(site.started()) == 1


def test_versions_cache_lives_in_the_state_dir(site: Site) -> None:
    site.write_config(borg__binaries={"borg": {"path": str(site.recorder)}})  # no stated version: detected
    assert site.spawn("alice").wait(60) == 0  # creates the state dir
    assert site.spawn("alice").wait(60) == 0
    (cache,) = site.state_dir.glob("borg-versions-*.json")  # the gate user's own
    assert str(site.recorder) in cache.read_text()


# --- what a held slot says ----------------------------------------------------------------------


def test_borg_serve_holds_its_slots_and_status_can_read_them(site: Site) -> None:
    hold = Hold(site.root / "hold")
    gate = site.spawn("alice", hold=hold)
    wait_for(lambda: gate.pid in site.started(), "the recorder to start")
    assert sorted(site.started()[gate.pid]) == ["slot.client.alice.0", "slot.host.0"]

    (started,) = site.events("session.started")
    assert started["slots"] == ["slot.client.alice.0", "slot.host.0"]
    host, alice = site.usage()
    assert (host.kind, host.name, host.limit, host.waiters) == ("host", "host", 1, 0)
    assert (alice.kind, alice.name, alice.limit, alice.waiters) == ("client", "alice", 2, 0)
    for usage in (host, alice):
        (holder,) = usage.holders
        assert holder.pid == gate.pid
        assert holder.client == "alice"
        assert holder.conn == started["conn"]
        assert holder.binary == str(site.recorder)
        assert holder.restrictions == (f"--restrict-to-path={site.root}/repos/alice",)
        assert holder.user == "root"
        assert holder.state == "serving"
        assert holder.started is not None
    assert (alice.holders[0].slot, host.holders[0].slot) == ("slot.client.alice.0", "slot.host.0")

    hold.release()
    assert gate.wait(60) == 0
    assert_all_free(site)


def test_kill_9_of_borg_serve_frees_its_slot_at_once(site: Site) -> None:
    hold = Hold(site.root / "hold")
    first = site.spawn("alice", hold=hold)
    wait_for(lambda: first.pid in site.started(), "the recorder to start")
    refused = site.spawn("bob", "--wait", "0")
    assert refused.wait(60) == Kind.BUSY

    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(60) == -signal.SIGKILL
    # Reaped means dead, and a dead process holds no lock: the next connection gets in without waiting.
    second = site.spawn("bob", "--wait", "0")
    assert second.wait(60) == 0
    assert second.pid in site.started()
    assert_all_free(site)


# --- refusals ------------------------------------------------------------------------------------


def test_wait_0_refuses_at_once_naming_the_full_budget(site: Site) -> None:
    fd = hold_slot(site, "slot.host.0")
    gate = site.spawn("alice", "--wait", "0")
    assert gate.wait(60) == Kind.BUSY
    assert gate.stderr() == "borg-gate: server busy: 1/1 sessions in use, alice 1/2; waited 0.0 s\n"
    (refused,) = site.events("connection.refused")
    assert (refused["kind"], refused["budget"], refused["in_use"], refused["limit"]) == ("busy", "host", 1, 1)
    assert site.events("session.queued") == []
    os.close(fd)
    assert_all_free(site)


def test_a_full_client_budget_is_named_as_such(site: Site) -> None:
    fd = hold_slot(site, "slot.client.alice.0")
    gate = site.spawn("alice", "--wait", "0", "--max-sessions", "1")
    assert gate.wait(60) == Kind.BUSY
    assert gate.stderr() == "borg-gate: server busy: alice has 1/1 sessions in use (server 0/1); waited 0.0 s\n"
    os.close(fd)


def test_the_deadline_refuses_after_waiting_once(site: Site) -> None:
    fd = hold_slot(site, "slot.host.0")
    gate = site.spawn("alice", "--wait", "0.5")
    assert gate.wait(60) == Kind.BUSY
    said = gate.stderr().splitlines()
    assert said[0] == "borg-gate: waiting for a session slot (1/1 in use)…"
    assert said[1].startswith("borg-gate: server busy: 1/1 sessions in use, alice 1/2; waited 0.")
    assert len(said) == 2
    (queued,) = site.events("session.queued")
    assert (queued["budget"], queued["in_use"], queued["limit"], queued["position"]) == ("host", 1, 1, 1)
    # The refused waiter left nothing behind: the next one is head of the queue.
    os.close(fd)
    assert site.spawn("alice", "--wait", "0").wait(60) == 0
    assert_all_free(site)


# --- snapshot --------------------------------------------------------------------------------------


def test_snapshot_of_a_missing_state_dir_creates_nothing(tmp_path: Path) -> None:
    usage = slotstatus.snapshot(str(tmp_path / "none"), 8, 2)
    assert usage == [slotstatus.BudgetUsage("host", "host", 8, (), 0)]
    assert not (tmp_path / "none").exists()


def test_snapshot_never_disturbs_a_connection(site: Site) -> None:
    """A probing snapshot (flock LOCK_SH|LOCK_NB) would make some of these wait=0 gates see a busy slot."""
    stop = threading.Event()
    looks = 0

    def look() -> None:
        nonlocal looks
        while not stop.is_set():
            site.usage()
            looks += 1

    assert site.spawn("alice", "--wait", "0").wait(60) == 0  # the files exist from here on
    watcher = threading.Thread(target=look)
    watcher.start()
    try:
        codes = [site.spawn("alice", "--wait", "0", env={"LC_SLOTS_SECONDS": "0"}).wait(60) for _ in range(15)]
    finally:
        stop.set()
        watcher.join()
    assert codes == [0] * 15
    assert looks > 15


def test_snapshot_counts_waiters_and_a_client_slot_held_while_queued(site: Site) -> None:
    fd = hold_slot(site, "slot.host.0")
    gate = site.spawn("alice")
    wait_for(lambda: site.usage()[0].waiters == 1, "the gate to queue")
    host, alice = site.usage()
    assert host.holders[0].pid == os.getpid() and host.holders[0].client is None  # ours: no record
    (queued,) = alice.holders
    assert (queued.pid, queued.state, queued.client) == (gate.pid, "queued", "alice")
    os.close(fd)
    assert gate.wait(60) == 0
    assert_all_free(site)


def test_a_refused_state_dir_raises_for_snapshot(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o777)
    (tmp_path / "state").chmod(0o777)
    with pytest.raises(Refusal, match="world-writable"):
        slotstatus.snapshot(str(tmp_path / "state"), 8, 2)


# --- in-process: the pieces a gate process is made of ---------------------------------------------


def quiet(*_: object, **__: object) -> None:
    return None


def test_acquire_in_process_takes_client_then_host_and_describes_both(tmp_path: Path) -> None:
    session = slots.Session("alice", "c0ffee", "/usr/bin/borg", ("--restrict-to-path=/srv/alice",), "alice")
    held = slots.acquire(str(tmp_path / "s"), "alice", Budget(2, 1, 0), session, say=quiet, emit=quiet, watch_fd=-1)
    try:
        assert held.slots == ["slot.client.alice.0", "slot.host.0"]
        assert all(not os.get_inheritable(fd) for fd in held.fds)  # exec_serve makes them so, nobody earlier
        with pytest.raises(Refusal) as refused:
            slots.acquire(str(tmp_path / "s"), "alice", Budget(2, 1, 0), session, say=quiet, emit=quiet, watch_fd=-1)
        assert refused.value.kind is Kind.BUSY
        host, alice = slotstatus.snapshot(str(tmp_path / "s"), 2, 1)
        assert [h.conn for h in host.holders + alice.holders] == ["c0ffee", "c0ffee"]
    finally:
        for fd in held.fds:
            os.close(fd)
    assert all(u.holders == () for u in slotstatus.snapshot(str(tmp_path / "s"), 2, 1))


def test_open_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fd = statedir.open_dir(str(tmp_path / "s"))
    try:
        os.mkdir("slot.host.0", dir_fd=fd)
        with pytest.raises(OSError):
            statedir.open_file(fd, "slot.host.0")
    finally:
        os.close(fd)


def test_the_refusal_counts_from_the_lock_file_not_proc_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued connection asks the lock file (F_OFD_GETLK) what is in use: /proc/locks is status' alone."""
    from borg_gate.admin import slotstatus

    def unreadable() -> dict[tuple[int, int, int], list[tuple[int, int, bool]]]:
        raise AssertionError("a connection read /proc/locks")

    state = str(tmp_path / "s")
    session = slots.Session("alice", "c1", "/usr/bin/borg")
    first = slots.acquire(state, "bob", Budget(1, 2, 0), session, say=quiet, emit=quiet, watch_fd=-1)
    monkeypatch.setattr(slotstatus, "lock_table", unreadable)
    with pytest.raises(Refusal) as refused:
        slots.acquire(state, "alice", Budget(1, 2, 0), session, say=quiet, emit=quiet, watch_fd=-1)
    # alice 1/2: her own client slot, held while she queues for the host
    assert refused.value.reason == "server busy: 1/1 sessions in use, alice 1/2; waited 0.0 s"
    for fd in first.fds:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40), st.booleans()), max_size=12),
    st.integers(0, 200),
    st.integers(1, 200),
)
def test_locked_bytes_is_what_proc_locks_says(locks: list[tuple[int, int, bool]], start: int, length: int) -> None:
    """budgetfile.locked_bytes against slotstatus' reading of /proc/locks, for any set of (overlapping) locks."""
    from borg_gate.admin import slotstatus
    from borg_gate.conn import budgetfile

    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(os.path.join(tmp, "locks"), os.O_RDWR | os.O_CREAT, 0o600)
        held = []
        try:
            for at, n, write in locks:
                other = budgetfile.reopen(fd)
                held.append(other)
                budgetfile.lock(other, at, n, shared=not write)
            table = slotstatus.lock_table().get(slotstatus.devino(os.fstat(fd)), [])
            for exclusive_only in (False, True):
                expected = slotstatus.count(table, start, length, exclusive_only=exclusive_only)
                assert budgetfile.locked_bytes(fd, start, length, exclusive_only=exclusive_only) == expected
        finally:
            for other in held:
                os.close(other)
            os.close(fd)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40), st.booleans()), max_size=8),
    st.integers(0, 300),
    st.integers(1, 300),
)
def test_highest_locked_is_the_top_write_locked_byte(
    locks: list[tuple[int, int, bool]], start: int, length: int
) -> None:
    """budgetfile.highest_locked, for any set of (overlapping) read and write locks held by other
    descriptions: the highest write-locked byte in the range, as a byte-by-byte count has it."""
    from borg_gate.conn import budgetfile

    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(os.path.join(tmp, "locks"), os.O_RDWR | os.O_CREAT, 0o600)
        held = []
        written: set[int] = set()
        try:
            for at, n, write in locks:
                other = budgetfile.reopen(fd)
                held.append(other)
                if budgetfile.lock(other, at, n, shared=not write) and write:  # a conflicting one is not taken
                    written.update(range(at, at + n))
            expected = max((b for b in written if start <= b < start + length), default=None)
            assert budgetfile.highest_locked(fd, start, length) == expected
        finally:
            for other in held:
                os.close(other)
            os.close(fd)
