"""Issue 10, point 7: a signal before exec ends the gate with a documented code, one line at most, no traceback.

The moments are made exact, never guessed: a gate waiting for a slot is found through its
session.queued event; a gate in its refusal pause is found by its refusal line, then stopped
(SIGSTOP) so the signal is seen pending (/proc/PID/status) before it is let go (SIGCONT).
The Ctrl-C case goes through a real pty: the terminal driver turns ^C into SIGINT for the
gate, as sshd's pty does for a key line without ``restrict`` and ``ssh -tt``.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from borg_gate.base.errors import Kind
from tests.observability_support import events, hold_host, start_gate, stop, wait_ready
from tests.recorder import GATE, SSHD_ENV, Host
from tests.waiting import wait_for

SIGNALS = [
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGRTMIN + 3,
]
REFUSED = "rm -rf /"  # not borg serve: refused (210) after the pause


def name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def pending(pid: int, sig: int) -> bool:
    """sig is pending for pid (its own or its thread group's set)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    mask = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(mask >> (sig - 1) & 1)


def stopped(pid: int) -> bool:
    """pid is stopped; a pid that ended first (the pause is 0.2 s, stopping takes microseconds) fails the test."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state != "Z", "ended before it could be stopped"
    return state == "T"


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[Host, subprocess.Popen[bytes]]]:
    """One session holding the only host slot."""
    host = hold_host(tmp_path, limits={"max_sessions": 1, "max_sessions_per_client": 1, "wait": 600})
    holder = start_gate(host, ["--client", "bob"])
    try:
        wait_ready(holder)
        yield host, holder
    finally:
        stop(holder)


@pytest.mark.parametrize("sig", SIGNALS, ids=name)
def test_a_signal_while_queued_is_a_client_gone_refusal(busy: tuple[Host, subprocess.Popen[bytes]], sig: int) -> None:
    host, _ = busy
    waiter = start_gate(host, ["--client", "alice"])
    try:
        wait_for(lambda: events(host, "session.queued"), "alice's session.queued")
        # The queue's stderr notice follows its event: signalled between the two, the gate
        # would rightly end without it. Wait for the line itself (bounded) before signalling.
        assert waiter.stderr is not None
        assert select.select([waiter.stderr], [], [], 60)[0], "no stderr line from the queued gate"
        first = waiter.stderr.readline()
        os.kill(waiter.pid, sig)
        _, err = waiter.communicate(timeout=60)
    finally:
        stop(waiter)
    assert waiter.returncode == Kind.CLIENT_GONE, err
    said = (first + err).decode().splitlines()
    assert said[0].startswith("borg-gate: waiting for a session slot")  # the queue's own notice, as ever
    assert said[1:] == [f"borg-gate: interrupted by {name(sig)} before borg serve started"]  # one ending line
    (refused,) = events(host, "connection.refused")
    assert refused["kind"] == "client-gone" and name(sig) in refused["reason"]


@pytest.mark.parametrize("sig", SIGNALS, ids=name)
def test_a_signal_during_the_refusal_pause_keeps_the_refusal(tmp_path: Path, sig: int) -> None:
    host = Host(tmp_path)
    gate = start_gate(host, ["--client", "alice"], command=REFUSED)
    try:
        assert gate.stderr is not None
        line = gate.stderr.readline()  # said: only the pause and the exit are left
        os.kill(gate.pid, signal.SIGSTOP)
        assert line.startswith(b"borg-gate: "), line
        wait_for(lambda: stopped(gate.pid), "the gate stopped in its refusal pause")
        os.kill(gate.pid, sig)
        wait_for(lambda: pending(gate.pid, sig), f"{name(sig)} pending")
        os.kill(gate.pid, signal.SIGCONT)
        rest = gate.stderr.read()
        gate.wait(timeout=60)
    finally:
        stop(gate)
    assert gate.returncode == Kind.BAD_COMMAND  # the refusal's own code
    assert rest == b""  # nothing after the one line: no traceback, no second line
    assert [e["event"] for e in events(host)] == ["connection.refused"]


def test_ctrl_c_on_a_pty_during_the_refusal_pause(tmp_path: Path) -> None:
    """The issue's case: a key line without restrict, ssh -tt, Ctrl-C while the refusal is on screen."""
    host = Host(tmp_path)
    env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": REFUSED}
    argv = [*GATE, "--config", str(host.config_path), "--client", "alice"]
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty, as sshd's session child
        os.chdir(host.root)
        os.execve(argv[0], argv, env)
    try:
        seen = b""
        while b"\n" not in seen:
            seen += os.read(master, 4096)
        os.kill(pid, signal.SIGSTOP)
        assert seen.startswith(b"borg-gate: "), seen
        wait_for(lambda: stopped(pid), "the gate stopped in its refusal pause")
        os.write(master, b"\x03")  # ^C: the terminal driver sends SIGINT to the foreground group
        wait_for(lambda: pending(pid, signal.SIGINT), "SIGINT pending from the pty's ^C")
        os.kill(pid, signal.SIGCONT)
        _, status = os.waitpid(pid, 0)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child is gone and the pty closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == Kind.BAD_COMMAND, status
    text = seen.decode("utf-8", "replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.count("borg-gate:") == 1, text
