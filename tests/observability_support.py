"""Helpers for the observability tests: a stand-in borg serve that runs as long as the test wants.

``HOLD_BORG`` replaces the recorder in a ``tests.recorder.Host``: started as borg serve, it
installs handlers for HUP/TERM/INT (each prints ``signal N`` and exits 100+N), prints
``ready``, reads stdin to EOF, then prints ``read N`` followed by as many bytes as the
first stdin line asks (``write=M``) and exits with its code (``exit=K``). The test
decides when a session ends by closing the gate's stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from borg_gate.admin import slotstatus
from tests.eventlog import read_events
from tests.recorder import GATE, SSHD_ENV, Host
from tests.waiting import wait_for

HOLD_BORG = r"""#!/usr/bin/python3 -IS
import os, signal, sys

def on_signal(signum, frame):
    os.write(1, f"signal {signum}\n".encode())
    os._exit(100 + signum)

for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, on_signal)
os.write(1, b"ready\n")
data = b""
while chunk := os.read(0, 1 << 16):
    data += chunk
first = data.split(b"\n", 1)[0].decode("ascii", "replace")
opts = dict(word.split("=", 1) for word in first.split() if "=" in word)
os.write(1, f"read {len(data)}\n".encode())
todo = int(opts.get("write", "0"))
block = b"x" * 65536
while todo > 0:
    todo -= os.write(1, block[: min(todo, len(block))])
sys.exit(int(opts.get("exit", "0")))
"""


def hold_host(root: Path, **config: Any) -> Host:
    host = Host(root, **config)
    binary = host.binary("borg")
    binary.unlink()
    binary.write_text(HOLD_BORG)
    binary.chmod(0o755)
    return host


def start_gate(
    host: Host, key_args: Sequence[str] = (), command: str = "borg serve", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command, **(env or {})}
    return subprocess.Popen(
        [*GATE, "--config", str(host.config_path), *key_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=host.root,
    )


def read_line(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    return proc.stdout.readline()


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    line = read_line(proc)
    assert line == b"ready\n", (line, proc.stderr.read() if proc.stderr and proc.poll() is not None else b"")


def events(host: Host, name: str | None = None) -> list[dict[str, Any]]:
    return read_events(host.log_file, name)


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a test's gate however it stands (teardown helper)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()  # a supervised child still holding them sees EOF and ends
    proc.wait(timeout=60)


LIMITS = {"max_sessions": 2, "max_sessions_per_client": 1, "wait": 60}  # a wrong guess fails in a minute


@contextlib.contextmanager
def busy_host(root: Path) -> Iterator[tuple[Host, dict[str, subprocess.Popen[bytes]]]]:
    """Host limit 2, client limit 1: alice and bob (supervised) serving, a second alice and carol waiting.

    Waiting is checked through the slot snapshot (the queue files), not by timing.
    """
    host = hold_host(root, limits=LIMITS)
    gates: dict[str, subprocess.Popen[bytes]] = {}
    try:
        gates["alice"] = start_gate(host, ["--client", "alice"])
        wait_ready(gates["alice"])
        gates["bob"] = start_gate(host, ["--client", "bob", "--supervise"])
        wait_ready(gates["bob"])
        gates["alice-2"] = start_gate(host, ["--client", "alice"])  # waits for alice's own slot
        gates["carol"] = start_gate(host, ["--client", "carol"])  # waits for a host slot
        wait_for(lambda: waiting(host) == {"host": 1, "alice": 1}, "one waiter for the host and one for alice")
        wait_for(lambda: len(events(host, "session.queued")) == 2, "both waiters' session.queued")
        yield host, gates
    finally:
        for gate in gates.values():
            stop(gate)


def waiting(host: Host) -> dict[str, int]:
    return {u.name: u.waiters for u in slotstatus.snapshot(str(host.state_dir), 2, 1) if u.waiters}


def end_session(gate: subprocess.Popen[bytes], stdin: bytes = b"") -> tuple[bytes, bytes]:
    """Close a serving gate's stdin: the stand-in borg answers and exits."""
    return gate.communicate(stdin, timeout=60)


def admin(host: Host, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``borg-gate status|metrics --config <host's> ARGS`` as a real process."""
    return subprocess.run(
        [*GATE, command, "--config", str(host.config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
