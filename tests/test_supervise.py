"""Supervise mode through the real gate: borg serve as a child, signals forwarded, session.ended, borg's exit code."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import traceback
from pathlib import Path

import psutil
import pytest

from borg_gate.admin import counterfiles, slotstatus
from borg_gate.base import counters
from borg_gate.conn import supervise
from tests.observability_support import events, hold_host, read_line, start_gate, stop, wait_ready
from tests.recorder import Host
from tests.slots_support import held_locks
from tests.waiting import wait_for


def in_use(host: Host) -> dict[str, int]:
    """Held slots per budget (a client with none is not listed)."""
    return {u.name: len(u.holders) for u in slotstatus.snapshot(str(host.state_dir), 8, 2) if u.holders}


def slot_fds(pid: int, host: Host) -> list[int]:
    """The descriptors of ``pid`` that hold a lock on the state dir's lock file (one per slot)."""
    return sorted({fd for fd, _ in held_locks(pid, host.state_dir)})


def child_of(gate: subprocess.Popen[bytes]) -> psutil.Process:
    (child,) = wait_for(lambda: psutil.Process(gate.pid).children(), "the supervised child")
    return child


@pytest.mark.parametrize("how", [["--supervise"], []])
def test_session_end_accounted_and_exit_code_passed_on(tmp_path: Path, how: list[str]) -> None:
    host = hold_host(tmp_path, gate={} if how else {"mode": "supervise"})  # the key's option, or the config's
    payload = b"exit=3 write=300000\n" + os.urandom(200_000)
    gate = start_gate(host, ["--client", "alice", *how])
    try:
        out, err = gate.communicate(payload, timeout=120)
    finally:
        stop(gate)
    assert gate.returncode == 3, err
    assert out == b"ready\n" + f"read {len(payload)}\n".encode() + b"x" * 300_000  # nothing from the supervisor
    assert err == b""
    started, ended = events(host, "session.started"), events(host, "session.ended")
    assert len(started) == 1 and len(ended) == 1
    e = ended[0]
    assert e["conn"] == started[0]["conn"] and e["pid"] == gate.pid and e["serve_pid"] != gate.pid
    assert e["client"] == "alice" and e["binary"] == str(host.binary("borg"))
    assert e["exit_code"] == 3 and e["signal"] is None
    assert e["duration"] >= 0 and e["cpu_seconds"] > 0 and e["max_rss"] > 1 << 20
    # every read and write call: stdin and stdout, plus what the interpreter reads at start-up
    assert len(payload) <= e["bytes_read"] < len(payload) + (8 << 20)
    assert len(out) <= e["bytes_written"] < len(out) + (1 << 20)
    assert {"disk_read", "disk_written"} <= e.keys()
    values = counterfiles.load(str(host.state_dir)).values
    assert values[counters.series(counters.ENDED, client="alice")] == 1
    assert values[counters.series(counters.READ, client="alice")] == e["bytes_read"]
    assert values[counters.series(counters.WRITTEN, client="alice")] == e["bytes_written"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_signals_forwarded(tmp_path: Path, sig: signal.Signals) -> None:
    host = hold_host(tmp_path)
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    try:
        wait_ready(gate)  # the child's handlers are in place
        os.kill(gate.pid, sig)
        line = read_line(gate)  # before closing stdin, whose EOF would end the child anyway
        out, _ = gate.communicate(timeout=60)
    finally:
        stop(gate)
    assert line == f"signal {int(sig)}\n".encode() and out == b""
    assert gate.returncode == 100 + sig
    (ended,) = events(host, "session.ended")
    assert ended["exit_code"] == 100 + sig


def test_child_killed_by_signal(tmp_path: Path) -> None:
    host = hold_host(tmp_path)
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    try:
        wait_ready(gate)
        child_of(gate).kill()
        gate.communicate(timeout=60)
    finally:
        stop(gate)
    assert gate.returncode == 128 + signal.SIGKILL
    (ended,) = events(host, "session.ended")
    assert ended["signal"] == "SIGKILL" and ended["exit_code"] == 137


def test_child_killed_by_a_realtime_signal(tmp_path: Path) -> None:
    host = hold_host(tmp_path)
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    try:
        wait_ready(gate)
        child_of(gate).send_signal(signal.SIGRTMIN + 6)  # no name in signal.Signals
        gate.communicate(timeout=60)
    finally:
        stop(gate)
    assert gate.returncode == 128 + signal.SIGRTMIN + 6
    (ended,) = events(host, "session.ended")
    assert ended["signal"] == f"SIG{signal.SIGRTMIN + 6}" and ended["exit_code"] == gate.returncode


def test_supervisor_lets_go_of_the_client_pipes(tmp_path: Path) -> None:
    host = hold_host(tmp_path)
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    try:
        wait_ready(gate)
        child = child_of(gate)
        assert child.cmdline()[-1] == "serve" or "serve" in child.cmdline()
        # the supervisor: /dev/null where the client's pipes were, so it cannot touch the protocol
        wait_for(lambda: os.readlink(f"/proc/{gate.pid}/fd/1") == os.devnull, "stdout dropped")
        assert os.readlink(f"/proc/{gate.pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{child.pid}/fd/0").startswith("pipe:")
        assert os.readlink(f"/proc/{child.pid}/fd/1").startswith("pipe:")
        assert os.readlink(f"/proc/{gate.pid}/fd/2") == os.readlink(f"/proc/{child.pid}/fd/2")
        # the slots: only borg serve holds them, so they free the moment it ends
        assert len(slot_fds(child.pid, host)) == 2 and slot_fds(gate.pid, host) == []
    finally:
        stop(gate)


def test_killed_supervisor_leaves_borg_serving(tmp_path: Path) -> None:
    host = hold_host(tmp_path)
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    try:
        wait_ready(gate)
        child = child_of(gate)
        os.kill(gate.pid, signal.SIGKILL)
        gate.wait(timeout=60)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        assert in_use(host) == {"host": 1, "alice": 1}  # borg serve still holds both slots
        assert gate.stdin is not None and gate.stdout is not None
        gate.stdin.write(b"write=5\n")
        gate.stdin.close()
        assert gate.stdout.read() == b"read 8\nxxxxx"  # the orphaned borg serve finished the session
        child.wait(timeout=60)
        assert in_use(host) == {}
    finally:
        stop(gate)
    assert events(host, "session.ended") == []  # nobody left to log it


def test_exec_failure_is_a_refusal(tmp_path: Path) -> None:
    host = hold_host(tmp_path)
    host.binary("borg").write_text("#!/nonexistent/interpreter\n")  # executable, but execve fails: ENOENT
    gate = start_gate(host, ["--client", "alice", "--supervise"])
    out, err = gate.communicate(b"", timeout=60)
    assert gate.returncode == 212 and out == b""
    assert err.startswith(b"borg-gate: cannot run ") and b"No such file or directory" in err
    (refused,) = events(host, "connection.refused")
    assert refused["kind"] == "misconfigured"
    assert events(host, "session.ended") == []


def test_io_of_a_reaped_child_as_an_unprivileged_user() -> None:
    """The accounting: our own /proc/self/io grows by the child's I/O when we reap it, for any user."""
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:  # a process of an unprivileged user, running the already imported code
        try:
            os.close(r)
            os.chdir("/")
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                # dropping root makes a process non-dumpable, its /proc files root's; sshd's exec of the
                # gate as the user resets that, so do the same here: prctl(PR_SET_DUMPABLE, 1)
                ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)
            pid = os.fork()
            if pid == 0:
                os.execv("/bin/sh", ["sh", "-c", "head -c 3000000 /dev/zero > /dev/null"])
            status, _usage, io = supervise.reap(pid)
            os.write(w, f"{io['bytes_read']} {io['bytes_written']} {os.waitstatus_to_exitcode(status)}".encode())
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        report = fh.read()
    os.waitpid(helper, 0)
    read, written, code = map(int, report.split())
    assert code == 0
    assert 3_000_000 <= read < 3_000_000 + (1 << 20) and 3_000_000 <= written < 3_000_000 + (1 << 16)
