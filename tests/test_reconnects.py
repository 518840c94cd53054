"""A rest:// client refused at the queue deadline comes back three times (borgstore >= 0.5.5): refused at once.

Through the real gate (recorder borg, real kernel locks): one session holds the only slot,
a rest:// connection waits its full deadline and is refused; the reconnects of that client
from that address are then refused without a wait, with the first refusal's reason, while
other clients, other addresses and legacy connections queue as before, and a reconnect
finding a free slot is served. The memory file is believed only when it is the user's own.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from borg_gate.base import statedir
from borg_gate.conn import reconnects
from tests.recorder import Host
from tests.waiting import wait_for

WAIT = 1.0


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path / "host", binaries={"borg": "2.0.0b22"}, limits={"max_sessions": 1, "wait": WAIT})
    (h.repos / "alice").mkdir(parents=True)
    return h


def rest(host: Host) -> str:
    return f"borg serve --rest --backend FILE:{host.repos}/alice/repo"


def refusals(host: Host) -> list[dict[str, object]]:
    return [e for e in host.events() if e["event"] == "connection.refused"]


def from_ip(ip: str) -> dict[str, str]:
    return {"SSH_CONNECTION": f"{ip} 40001 127.0.0.1 22", "SSH_CLIENT": f"{ip} 40001 22"}


def holding(host: Host) -> tuple[subprocess.Popen[bytes], int]:
    """A session that holds the only slot: started, and logged session.started (it holds the slot then)."""
    proc, stdin = host.start(rest(host), ["--client", "alice"])

    def started() -> bool:
        if host.events("session.started"):
            return True
        assert proc.poll() is None, "the holder never started: it ended first"
        return False

    wait_for(started, "the holder's session.started", timeout=30)
    return proc, stdin


def test_reconnects_after_a_deadline_refusal_are_refused_at_once(host: Host) -> None:
    holder, stdin = holding(host)
    try:
        first = host.run(rest(host), ["--client", "alice"])
        assert first.returncode == 213
        assert b"waiting for a session slot" in first.stderr
        for _ in range(3):  # borgstore's three reconnects
            again = host.run(rest(host), ["--client", "alice"])
            assert again.returncode == 213
            assert b"waiting for a session slot" not in again.stderr  # it did not queue
            assert "refused without waiting again" in again.stderr_line()
        other_ip = host.run(rest(host), ["--client", "alice"], env=from_ip("192.0.2.7"))
        legacy = host.run("borg serve", ["--client", "alice"])
        other_client = host.run(rest(host).replace("alice", "bob"), ["--client", "bob"])
        for queued in (other_ip, legacy, other_client):
            assert queued.returncode == 213 and b"waiting for a session slot" in queued.stderr
    finally:
        os.close(stdin)
        holder.wait(30)
    events = refusals(host)
    assert [e.get("reconnect", False) for e in events] == [False, True, True, True, False, False, False]
    assert {e["reason"] for e in events[1:4]} == {
        f"{events[0]['reason']} (a reconnect within 30 s of that refusal, refused without waiting again)"
    }
    assert all(e["waited"] >= WAIT for e in events if not e.get("reconnect"))
    assert all(e["waited"] < WAIT for e in events if e.get("reconnect"))
    # the slot is free again: a reconnect takes it at once
    served = host.run(rest(host), ["--client", "alice"])
    assert served.returncode == 0 and served.record is not None


def test_the_memory_expires(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    reconnects.remember(str(state), "alice", "10.0.0.1", "server busy", now=1000.0)
    assert reconnects.recall(str(state), "alice", "10.0.0.1", now=1000.0 + reconnects.RECALL) == "server busy"
    assert reconnects.recall(str(state), "alice", "10.0.0.1", now=1000.1 + reconnects.RECALL) is None
    assert reconnects.recall(str(state), "alice", "10.0.0.1", now=999.0) is None  # a clock set back forgets
    assert reconnects.recall(str(state), "alice", "10.0.0.2", now=1000.0) is None
    assert reconnects.recall(str(state), "bob", "10.0.0.1", now=1000.0) is None


def planted(state: Path, how: str) -> None:
    name = state / reconnects.file_name()
    good = state / "good.json"
    good.write_text(f'{{"alice 10.0.0.1": {{"at": {time.time()}, "reason": "planted"}}}}')
    good.chmod(0o644)
    if how == "symlink":
        name.symlink_to(good)
    elif how == "hardlink":
        os.link(good, name)
    elif how == "group-writable":
        good.chmod(0o664)
        good.rename(name)
    elif how == "foreign":
        os.chown(good, 65534, 65534)
        good.rename(name)
    elif how == "fifo":
        os.mkfifo(name)


@pytest.mark.parametrize("how", ["symlink", "hardlink", "group-writable", "foreign", "fifo"])
def test_only_the_users_own_file_is_believed(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted(state, how)
    assert reconnects.recall(str(state), "alice", "10.0.0.1") is None
    reconnects.remember(str(state), "bob", "10.0.0.1", "busy")  # never writes through what was planted
    assert (state / "good.json").exists() or how in ("group-writable", "foreign")
    if how in ("symlink", "hardlink"):
        assert "bob" not in (state / "good.json").read_text()


def test_file_is_the_users_own_and_private_to_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    reconnects.remember(str(state), "alice", None, "busy")
    st = (state / reconnects.file_name()).stat()
    assert (st.st_uid, st.st_mode & 0o777, st.st_nlink) == (os.geteuid(), statedir.OWN_MODE, 1)
    assert reconnects.recall(str(state), "alice", None) == "busy"
