"""Issue 10, point 9d: a config or borg binary someone else could rewrite is refused at connection time (212).

Whoever can write either chooses what every backup user runs, and under which confinement:
only root or the gate's own user may own them, and neither the group nor others may write them.
The check costs nothing: the gate fstat()s the config and stat()s the binary anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from borg_gate.base.errors import Kind
from tests.recorder import Host

OTHER_UID = 65534  # nobody


@pytest.mark.parametrize(
    ("mode", "owner", "why"),
    [
        (0o664, 0, "writable by the group (mode 664)"),
        (0o646, 0, "writable by others (mode 646)"),
        (0o644, OTHER_UID, f"owned by uid {OTHER_UID}, not by root or this user"),
    ],
)
def test_an_untrusted_config_is_refused(tmp_path: Path, mode: int, owner: int, why: str) -> None:
    host = Host(tmp_path)
    host.config_path.chmod(mode)
    os.chown(host.config_path, owner, -1)
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None
    assert out.stderr_line() == f"config {host.config_path}: {why}"
    host.config_path.chmod(0o644)
    os.chown(host.config_path, 0, -1)
    assert host.run("borg serve", ["--client", "alice"]).returncode == 0


@pytest.mark.parametrize(
    ("mode", "owner", "why"),
    [
        (0o775, 0, "writable by the group (mode 775)"),
        (0o757, 0, "writable by others (mode 757)"),
        (0o755, OTHER_UID, f"owned by uid {OTHER_UID}, not by root or this user"),
    ],
)
def test_an_untrusted_borg_binary_is_refused(tmp_path: Path, mode: int, owner: int, why: str) -> None:
    host = Host(tmp_path)
    binary = host.binary("borg")
    os.chown(binary, owner, -1)
    binary.chmod(mode)
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None  # never run, not even for --version
    assert out.stderr_line() == f"borg binary borg = {binary}: {why}"
