"""Counters files another member of the state dir's group can plant or hold: the gate stays in control.

The state dir is shared by a group; any member can create ``counters-<uid>.json`` for any uid
before that user's first event, fill it with whatever json chokes on, make it huge, or open
it and hold its flock. None of that may cost a connection more than its counting.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from borg_gate.admin import counterfiles
from borg_gate.base import connection, counters, events
from borg_gate.base.counters import series
from borg_gate.base.events import EventLog
from tests.hostile_users import MEMBER, VICTIM, popen_as, run_as, shared_dir, uid
from tests.hostile_users import hostile_root as hostile_root  # a fixture
from tests.recorder import Host

OTHER_UID = 65534  # nobody: another member of the gate group
RESTARTED = series(counters.SINK_FAILURES, sink="counters")
DEEP = "[" * 100_000  # deeper than json's C scanner goes: RecursionError, not ValueError


def mine(state_dir: Path) -> Path:
    return state_dir / f"counters-{os.getuid()}.json"


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: planting a file owned by another uid (CI runs as root)")


@pytest.mark.parametrize("planter", ["another member", "this user"])
def test_deeply_nested_counters_file_gives_no_traceback(tmp_path: Path, planter: str) -> None:
    """The review's case: a RecursionError used to escape emit and the gate's own error handler."""
    host = Host(tmp_path / "host")
    planted = mine(host.state_dir)
    planted.write_text(DEEP)
    planted.chmod(0o666)
    if planter == "another member":
        as_root()
        os.chown(planted, OTHER_UID, -1)

    outcome = host.run("borg serve", ["--client", "alice"])
    err = outcome.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-400:]
    assert outcome.record is not None, (outcome.returncode, err)  # served as without the file
    values = counterfiles.load(str(host.state_dir)).values
    if planter == "another member":  # not ours: left alone, nothing counted into it
        assert planted.read_text() == DEEP
    else:  # ours, garbled: started over, and the restart is counted
        assert values[RESTARTED] == 1 and values[series(counters.STARTED, client="alice")] == 1


def test_a_file_owned_by_another_uid_is_never_written(tmp_path: Path) -> None:
    as_root()
    planted = mine(tmp_path)
    planted.write_text(json.dumps({"values": {counters.CONFIG_ERRORS: 1_000_000}}))
    planted.chmod(0o666)
    os.chown(planted, OTHER_UID, -1)
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1}) is False
    assert json.loads(planted.read_text()) == {"values": {counters.CONFIG_ERRORS: 1_000_000}}


def test_a_huge_sparse_file_is_not_read_and_starts_over(tmp_path: Path) -> None:
    """A 256 MiB hole (or any size) would be read whole, and parsed, on every event; it is neither."""
    with mine(tmp_path).open("wb") as fh:
        fh.truncate(256 << 20)
    other = tmp_path / "counters-4242.json"
    with other.open("wb") as fh:
        fh.truncate(256 << 20)
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    assert mine(tmp_path).stat().st_size == counters.BLOCK
    totals = counterfiles.load(str(tmp_path))
    assert totals.values == {counters.CONFIG_ERRORS: 1, RESTARTED: 1}
    assert totals.unreadable == [other.name]
    assert totals.last_errors[-1]["sink"] == "counters"


def test_just_over_the_cap_is_refused_and_at_the_cap_is_read(tmp_path: Path) -> None:
    body = json.dumps({"values": {counters.CONFIG_ERRORS: 2}}).encode()
    at_cap = tmp_path / "counters-4242.json"
    at_cap.write_bytes(body.ljust(counters.MAX_BYTES))
    over = tmp_path / "counters-4243.json"
    over.write_bytes(body.ljust(counters.MAX_BYTES + 1))
    totals = counterfiles.load(str(tmp_path))
    assert totals.values == {counters.CONFIG_ERRORS: 2} and totals.unreadable == [over.name]


def test_a_fifo_in_place_of_the_counters_file(tmp_path: Path) -> None:
    os.mkfifo(mine(tmp_path))
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1}) is False
    assert counterfiles.load(str(tmp_path)).unreadable == [mine(tmp_path).name]


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)  # a member opens our file and never lets go
print("held", flush=True)
sys.stdin.read()
"""

ADDER = """
import sys
from borg_gate.base import counters
print(counters.add(sys.argv[1], {counters.CONFIG_ERRORS: 1}))
"""


def test_a_lock_held_forever_costs_the_count_not_the_connection(tmp_path: Path) -> None:
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mine(tmp_path))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        # a blocking flock would never return: the timeout turns that hang into a failure
        adder = subprocess.run(
            [sys.executable, "-c", ADDER, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
        )
        assert adder.stdout == "False\n"
        assert counterfiles.load(str(tmp_path)).values == {
            counters.CONFIG_ERRORS: 1
        }  # a shared lock does not stop readers
    finally:
        holder.communicate("")
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    assert counterfiles.load(str(tmp_path)).values == {counters.CONFIG_ERRORS: 2}


LOADER = """
import sys
from borg_gate.admin import counterfiles
print(counterfiles.load(sys.argv[1]).unreadable)
"""


def test_an_exclusive_lock_held_forever_makes_the_file_unreadable_not_a_hang(tmp_path: Path) -> None:
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    fd = os.open(mine(tmp_path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        loader = subprocess.run(
            [sys.executable, "-c", LOADER, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
        )
        assert loader.stdout == f"[{mine(tmp_path).name!r}]\n"
    finally:
        os.close(fd)


@pytest.mark.parametrize("sink", ["append_line", "send_syslog"])
def test_emit_never_raises_whatever_a_sink_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: str) -> None:
    def broken(*_: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(events, sink, broken)
    monkeypatch.setattr(counters, "add", broken)
    log_file = str(tmp_path / "log") if sink == "append_line" else None
    log = EventLog(connection.current({}), log_file, syslog=sink == "send_syslog", state_dir=str(tmp_path))
    log.emit("session.started")
    assert log.failures == 2  # the broken sink and the counters


SESSION_FILE = """
import fcntl, os, sys
os.umask(0o007)  # the gate's shared umask
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o660)  # like a slot file: group-writable, locked for hours
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""

LINK = """
import os, sys
try:
    os.link(sys.argv[1], sys.argv[2])
    print("linked")
except OSError as exc:
    print(exc.errno)
"""

OPEN = """
import os, sys
try:
    os.open(sys.argv[1], os.O_RDONLY)
    print("opened")
except OSError as exc:
    print(exc.errno)
"""


def test_a_victims_file_linked_under_her_counters_name_costs_no_wait(hostile_root: Path) -> None:
    """Issue 10, point 3, as two real users: the linked file's lock is a session's; it is never waited on.

    The victim holds a lock on one of her group-writable files for good (as a session holds its
    slot); the member links that file under the victim's counters name. Had the gate used it, the
    count would wait LOCK_WAIT on a lock that never goes and return False: True means it did not wait.
    """
    state = shared_dir(hostile_root / "state")
    session = state / "victim-session"
    counters_name = state / f"counters-{uid(VICTIM)}.json"
    holder = popen_as(VICTIM, SESSION_FILE, str(session))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n", holder.stderr
        assert run_as(MEMBER, LINK, str(session), str(counters_name)).stdout == "linked\n"
        assert counters_name.stat().st_nlink == 2 and counters_name.stat().st_uid == uid(VICTIM)
        added = run_as(VICTIM, ADDER, str(state))
        assert added.stdout == "True\n", added.stderr
        assert session.read_bytes() == b"" and session.stat().st_nlink == 1  # her session file untouched
        st = counters_name.stat()
        assert (st.st_uid, st.st_nlink, stat.S_IMODE(st.st_mode)) == (uid(VICTIM), 1, 0o600)
        totals = counterfiles.load(str(state))
        assert totals.values == {
            counters.CONFIG_ERRORS: 1,
            RESTARTED: 1,
        }  # the planted name costs the history, and says so
        assert "hard link" in totals.last_errors[-1]["error"]
        # 0600: the member can neither open the new file (to hold its lock) nor, under
        # fs.protected_hardlinks, link it anywhere
        assert run_as(MEMBER, OPEN, str(counters_name)).stdout == f"{errno.EACCES}\n"
        if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1":
            assert run_as(MEMBER, LINK, str(counters_name), str(state / "x")).stdout == f"{errno.EPERM}\n"
        assert run_as(VICTIM, ADDER, str(state)).stdout == "True\n"
        assert counterfiles.load(str(state)).values[counters.CONFIG_ERRORS] == 2
    finally:
        holder.communicate("")


COUNTED_LOAD = """
import json, sys, time
from borg_gate.admin import counterfiles
pauses = []
real = time.sleep
time.sleep = lambda s: (pauses.append(s), real(s))[1]
print(json.dumps([counterfiles.load(sys.argv[1]).unreadable, pauses]))
"""


def test_a_member_holding_her_own_files_lock_never_slows_status(hostile_root: Path) -> None:
    """status (root) reading a member's counters file she keeps locked: skipped after a few tries, not waited on."""
    state = shared_dir(hostile_root / "state")
    assert run_as(MEMBER, ADDER, str(state)).stdout == "True\n"
    mine_there = state / f"counters-{uid(MEMBER)}.json"
    holder = popen_as(MEMBER, HOLDER.replace("LOCK_SH", "LOCK_EX"), str(mine_there))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n", holder.stderr
        # root's status, in its own process; every pause it takes is recorded (a blocking flock
        # would never return: the subprocess timeout turns that hang into a failure)
        out = subprocess.run(
            [sys.executable, "-c", COUNTED_LOAD, str(state)], capture_output=True, text=True, timeout=60, check=True
        )
        unreadable, pauses = json.loads(out.stdout)
        assert unreadable == [mine_there.name]
        assert len(pauses) == counters.READ_TRIES - 1 and sum(pauses) <= counters.READ_TRIES * counters.READ_PAUSE
    finally:
        holder.communicate("")
