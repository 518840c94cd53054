"""A backup host for the budget tests: the real gate as a process, a counting recorder as borg.

``Site`` writes a config with the limits a test wants, starts gates the way sshd would
(key options on the command line, SSH_ORIGINAL_COMMAND in the environment, fd 1 a pipe the
test holds as "the client") and reads back what the recorders counted. ``Hold`` is a lock
the test keeps while a recorder must keep running: releasing it ends that borg serve.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from borg_gate.admin import slotstatus
from borg_gate.conn import budgetfile
from tests.testhost import GateHost

RECORDER = Path(__file__).with_name("recorder")
TMPFILES = Path(__file__).parents[2] / "packaging" / "tmpfiles.d"
PYTHON = sys.executable

BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
    "SSH_CLIENT": "127.0.0.1 40000 22",
    "SSH_ORIGINAL_COMMAND": "borg serve",
}


@dataclass
class Gate:
    """One connection: the gate process, and the read end of its stdout (the client's side)."""

    proc: subprocess.Popen[bytes]
    client: str
    stdout: int  # our end of its fd 1; closing it is the client hanging up
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hang_up(self) -> None:
        if self.stdout >= 0:
            os.close(self.stdout)
            self.stdout = -1

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)
        self.hang_up()
        return rc

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@dataclass
class Hold:
    """An exclusive lock on a file a recorder blocks on (shared) until the test lets go."""

    path: Path
    fd: int = -1

    def __post_init__(self) -> None:
        self.path.touch(mode=0o644)
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Site(GateHost):
    """A host in ``root`` (tests/testhost.GateHost) whose one borg is the counting recorder."""

    max_sessions: int = 4
    per_client: int = 2
    wait: float = 600
    gates: list[Gate] = field(default_factory=list)
    run_as: Sequence[str] = ()  # e.g. setpriv … --: run every gate as another user
    state: Path | None = None  # the state dir, when not ``root/state`` (e.g. made by the tmpfiles entry)
    reserved: int = 0
    per_repo: int = 1

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "bin").mkdir(exist_ok=True)
        self.log_file.parent.mkdir(exist_ok=True)
        shutil.copy2(RECORDER, self.recorder)
        self.write_config()

    @property
    def recorder(self) -> Path:
        return self.root / "bin" / "borg"

    @property
    def state_dir(self) -> Path:
        return self.state or super().state_dir

    def sections(self) -> dict[str, dict[str, Any]]:
        base = super().sections()
        limits = {
            "max_sessions": self.max_sessions,
            "max_sessions_per_client": self.per_client,
            "wait": self.wait,
            "reserved_sessions": self.reserved,
            "max_sessions_per_repo": self.per_repo,
        }
        return {
            "gate": base["gate"],
            "limits": limits,
            "repos": base["repos"],
            "borg": {"default": "borg"},
            "borg.binaries": {"borg": {"path": str(self.recorder), "version": "1.2.4"}},
        }

    def spawn(
        self, client: str, *key_args: str, env: Mapping[str, str] | None = None, hold: Hold | None = None
    ) -> Gate:
        read_end, write_end = os.pipe()
        stderr_path = self.root / "stderr" / f"{len(self.gates)}.txt"
        stderr_path.parent.mkdir(exist_ok=True)
        full_env = {**BASE_ENV, "USER": client, "HOME": str(self.root), **(env or {})}
        if hold is not None:
            full_env["LC_SLOTS_HOLD"] = str(hold.path)
        command = [PYTHON, "-m", "borg_gate", "--config", str(self.config_path)]
        argv = [*self.run_as, *command, "--client", client, *key_args]
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=err, env=full_env, cwd=self.root
            )
        os.close(write_end)
        gate = Gate(proc, client, read_end, stderr_path)
        self.gates.append(gate)
        return gate

    def admin_command(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "borg_gate", args[0], "--config", str(self.config_path), *args[1:]]

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``borg-gate ARGS --config <this site>`` as root, e.g. ``hold --reason x``."""
        command = self.admin_command(*args)
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root, check=False)

    def wait_all(self, timeout: float = 300) -> list[int]:
        return [g.wait(timeout) for g in self.gates]

    def kill_all(self) -> None:
        for g in self.gates:
            if g.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(g.pid, signal.SIGKILL)
            g.wait()

    # --- what the recorders wrote ---

    def counter(self) -> dict[str, Any]:
        path = self.root / "bin" / "counter.json"
        return json.loads(path.read_text()) if path.exists() else {"running": {}, "max": {}}

    def records(self) -> list[tuple[str, int, str, float, list[str]]]:
        """(what, pid, client, time, slots held) per recorder line; slots by name, as the gate calls them."""
        path = self.root / "bin" / "events.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            what, pid, client, ts, *rest = line.split(" ")
            offsets = [int(word[1:]) for word in rest[0].split(",")] if rest and rest[0] else []
            out.append((what, int(pid), client, float(ts), [slot_name(o, client) for o in offsets]))
        return out

    def started(self) -> dict[int, list[str]]:
        """pid -> slots held, for every recorder that started."""
        return {pid: held for what, pid, _, _, held in self.records() if what == "start"}

    def started_at(self, pid: int) -> float:
        """When the recorder exec'd as ``pid`` wrote its start record (unix time)."""
        (at,) = [t for what, p, _, t, _ in self.records() if what == "start" and p == pid]
        return at

    def running_now(self) -> list[str]:
        """Clients of the recorders alive right now, read so that all of them were alive at one instant.

        The records are read first, then each process polled: one found alive after the read
        was alive at the first poll too (it had started before the read), so every one counted
        was alive at that first poll. Exact, even for sessions that get killed.
        """
        starts = {pid: client for what, pid, client, *_ in self.records() if what == "start"}
        return [starts[g.pid] for g in self.gates if g.pid in starts and g.proc.poll() is None]

    def usage(self) -> list[slotstatus.BudgetUsage]:
        return slotstatus.snapshot(str(self.state_dir), self.max_sessions, self.per_client, self.reserved)


def slot_name(offset: int, client: str) -> str:
    """The name of the slot at ``offset`` of the lock file: the host's, ``client``'s, or unknown."""
    region, index = divmod(offset, budgetfile.REGION)
    for key in ("host", f"client.{client}"):
        if budgetfile.region_number(key) == region:
            return f"slot.{key}.{index}"
    return f"slot.?{region}.{index}"


def hold_slot(site: Site, slot: str) -> int:
    """The test itself holds ``slot`` (``slot.host.0``), as a running borg serve would: its byte, locked."""
    site.state_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(site.state_dir / budgetfile.NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    key, _, index = slot.removeprefix("slot.").rpartition(".")
    assert budgetfile.lock(fd, budgetfile.slot_offset(key, int(index))), f"{slot} is taken"
    return fd


def apply_tmpfiles(root: Path, group: str) -> Path:
    """The packaged tmpfiles entry, applied by systemd-tmpfiles under ``root`` with ``group`` as borg-gate.

    What a boot does to /run/borg-gate and /var/log/borg-gate, here to ``root/run/borg-gate``;
    returns that state dir.
    """
    gid = grp.getgrnam(group).gr_gid
    # with --root, systemd-tmpfiles resolves names in the root's own /etc
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:0:\nborg-gate:x:{gid}:\n")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(TMPFILES)], check=True)
    return root / "run/borg-gate"


def held_locks(pid: int, state_dir: Path) -> list[tuple[int, int]]:
    """(fd, offset) of every byte of ``state_dir``'s lock file that ``pid``'s descriptors hold locked."""
    out = []
    lock_file = str(state_dir / budgetfile.NAME)
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{name}") != lock_file:
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}") as fh:
                    for line in fh:
                        parts = line.split()
                        if parts[:1] == ["lock:"]:
                            out.extend((int(name), o) for o in range(int(parts[7]), int(parts[8]) + 1))
    return out


def ticket_holders(site: Site) -> set[int]:
    """Pids of the site's gates holding a ticket: queued for a client or a host slot."""
    return {
        g.pid
        for g in site.gates
        if any(o % budgetfile.REGION >= budgetfile.TICKETS for _, o in held_locks(g.pid, site.state_dir))
    }


def assert_all_free(site: Site) -> None:
    for usage in site.usage():
        assert usage.holders == () and usage.waiters == 0, usage


def running(site: Site) -> Iterator[Gate]:
    return (g for g in site.gates if g.proc.poll() is None)
