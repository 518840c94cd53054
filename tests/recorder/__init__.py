"""Running the real gate as sshd would, with a recorder standing in for borg.

``Host`` is one backup host in a temp dir: a config file, a state dir, a log file and a
recorder "borg" (``tests/recorder/borg``) with a stated version. ``Host.run`` starts the
gate as a real process with sshd's environment and SSH_ORIGINAL_COMMAND, stdin a pipe
already holding the bytes the test wrote, and returns what came out, including the
recorder's record when the gate exec'd it. ``fake_borg`` installs the recorder alone, for tests
of the version detection (``detections`` counts its ``--version`` answers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from borg_gate.base.errors import Kind
from tests.testhost import GateHost

RECORDER = Path(__file__).with_name("borg")
GATE = [sys.executable, "-m", "borg_gate"]
REFUSAL_CODES = frozenset(int(k) for k in Kind)

# What sshd hands a forced command (BORG-FACTS), plus hostile extras that must never reach borg.
SSHD_ENV: Mapping[str, str] = {
    "HOME": "/home/alice",
    "USER": "alice",
    "LOGNAME": "alice",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "SHELL": "/bin/sh",
    "MAIL": "/var/mail/alice",
    "PWD": "/home/alice",
    "SSH_CLIENT": "127.0.0.1 40000 22",
    "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
    "LANG": "C.UTF-8",
}


@dataclass
class Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    pid: int
    record: dict[str, Any] | None

    @property
    def refused(self) -> bool:
        return self.record is None and self.returncode in REFUSAL_CODES

    def stderr_line(self) -> str:
        """The refusal's one stderr line (asserts there is exactly one and it has the gate's form)."""
        text = self.stderr.decode("utf-8")
        lines = text.splitlines(keepends=True)
        assert len(lines) == 1 and lines[0].endswith("\n"), f"not one stderr line: {text!r}"
        line = lines[0].rstrip("\n")
        assert line.startswith("borg-gate: "), line
        return line.removeprefix("borg-gate: ")


@dataclass
class Host(GateHost):
    """A backup host in ``root`` (tests/testhost.GateHost) with a recorder standing in for each borg."""

    binaries: dict[str, str] = field(default_factory=lambda: {"borg": "1.2.4"})  # name -> stated version
    repos_root: str | None = None
    gate: dict[str, str] = field(default_factory=dict)  # more [gate] keys, e.g. umask
    limits: dict[str, int | float] = field(default_factory=dict)
    borg_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        self.log_file.parent.mkdir(exist_ok=True)
        for name in self.binaries:
            if not self.binary(name).exists():
                fake_borg(self.bin_dir(name))
        self.write_config()

    def bin_dir(self, name: str) -> Path:
        return self.root / "bin" / name

    def binary(self, name: str) -> Path:
        return self.bin_dir(name) / "borg"

    def record_path(self, name: str) -> Path:
        return self.bin_dir(name) / "record.json"

    def sections(self) -> dict[str, dict[str, Any]]:
        base = super().sections()
        binaries: dict[str, Any] = {
            name: {"path": str(self.binary(name)), "version": version} if version else str(self.binary(name))
            for name, version in self.binaries.items()
        }
        return {
            "gate": {**base["gate"], **self.gate},
            "limits": dict(self.limits),
            "repos": {"root": self.repos_root} if self.repos_root is not None else base["repos"],
            "borg": {"default": next(iter(self.binaries))},
            "borg.binaries": binaries,
            "borg.env": dict(self.borg_env),
        }

    def run(
        self,
        command: str | None,
        key_args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        cwd: Path | None = None,
        config: bool = True,
        timeout: float = 60,
    ) -> Outcome:
        for name in self.binaries:
            self.record_path(name).unlink(missing_ok=True)
        full_env = dict(SSHD_ENV)
        if command is not None:
            full_env["SSH_ORIGINAL_COMMAND"] = command
        full_env.update(env or {})
        argv = [*GATE, *(["--config", str(self.config_path)] if config else []), *key_args]
        return run_gate(argv, full_env, stdin=stdin, cwd=cwd or self.root, timeout=timeout, records=self)

    def start(self, command: str, key_args: Sequence[str] = (), *, stdin: bytes = b"") -> tuple[Popen[bytes], int]:
        """A connection left running: its borg (the recorder) waits for stdin's EOF."""
        env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}
        argv = [*GATE, "--config", str(self.config_path), *key_args]
        return start_gate(argv, env, stdin=stdin, cwd=self.root)

    def record(self) -> dict[str, Any] | None:
        found = [p for p in (self.record_path(n) for n in self.binaries) if p.exists()]
        assert len(found) <= 1, found
        return json.loads(found[0].read_text()) if found else None


def fake_borg(directory: Path, version: str | None = None) -> Path:
    """The recorder installed as ``directory/borg``: the one fake borg of these tests.

    Its ``--version`` says ``version`` (written to ``VERSION`` next to it; without one, what a
    ``VERSION`` there says, else 1.2.4) and counts the call (``detections``); its serve records.
    """
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "borg"
    shutil.copy2(RECORDER, binary)
    if version is not None:
        (directory / "VERSION").write_text(version)
    return binary


def detections(binary: Path) -> int:
    """How often ``binary`` (a ``fake_borg``) answered ``--version``: the version detections it saw."""
    calls = binary.with_name("version-calls")
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def start_gate(argv: Sequence[str], env: Mapping[str, str], *, stdin: bytes, cwd: Path) -> tuple[Popen[bytes], int]:
    """Start the gate as sshd does (umask 022, fds 0-2 pipes); stdin already holds ``stdin``.

    Returns the process and the write end of its stdin, still open: close it to send EOF.
    """
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, stdin)  # small: fits the pipe buffer, so no reader is needed yet
        proc = subprocess.Popen(
            list(argv),
            stdin=read_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            umask=0o022,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return proc, write_end


def run_gate(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bytes = b"",
    cwd: Path,
    timeout: float = 60,
    records: Host | None = None,
) -> Outcome:
    """Run the gate to its end, its stdin holding ``stdin`` then EOF."""
    proc, write_end = start_gate(argv, env, stdin=stdin, cwd=cwd)
    os.close(write_end)
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, out, err, proc.pid, records.record() if records else None)
