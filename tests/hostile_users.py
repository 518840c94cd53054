"""Real unix users for the hostile-member tests: a victim and a member of her gate group who attacks.

Made here if missing (as root), in their own group ``bgh`` so that no other test's users are
touched. ``shared_dir`` prepares a dir as packaging/tmpfiles.d prepares the state dir:
root:bgh 3770 (setgid, sticky, group-writable, nothing for others).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

GROUP = "bgh"
VICTIM = "bgh-victim"
MEMBER = "bgh-mallory"
# The system interpreter behind the venv, and a copy of the package in the test's own dir: the
# worktree (or a checkout under /root, as in the Debian chroots) may be unreadable to the users.
PYTHON = os.path.realpath(sys.executable)
PACKAGE = Path(__file__).resolve().parents[1] / "borg_gate"
_copies: dict[str, Path] = {}


def make_users(group: str, users: Sequence[str]) -> None:
    """``users`` (no home, no login shell), each a member of ``group``; made if missing, as root."""
    subprocess.run(["groupadd", "-f", group], check=True)
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", group, user], check=True)
        if user not in grp.getgrnam(group).gr_mem:
            subprocess.run(["usermod", "-aG", group, user], check=True)


def ensure_users() -> None:
    make_users(GROUP, (VICTIM, MEMBER))


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def as_user(user: str) -> list[str]:
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(_copies["lib"])}


def run_as(user: str, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Python code run as ``user``, with this tree's package importable (inside ``hostile_root`` only)."""
    return subprocess.run(
        [*as_user(user), PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
    )


def popen_as(user: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*as_user(user), PYTHON, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def shared_dir(path: Path, mode: int = 0o3770) -> Path:
    """A dir as the tmpfiles entry makes it (``d PATH 3770 root bgh``)."""
    path.mkdir()
    os.chown(path, 0, grp.getgrnam(GROUP).gr_gid)
    path.chmod(mode)
    return path


@pytest.fixture
def hostile_root() -> Iterator[Path]:
    """A world-traversable temp dir (pytest's tmp_path is root-only), with the two users made."""
    if os.geteuid() != 0:
        pytest.skip("needs root: hostile-member tests create unix users and run code as them (CI runs as root)")
    ensure_users()
    root = Path(tempfile.mkdtemp(prefix="bgh-", dir="/tmp"))
    root.chmod(0o755)
    lib = root / "lib"
    shutil.copytree(PACKAGE, lib / "borg_gate", ignore=shutil.ignore_patterns("__pycache__"))
    _copies["lib"] = lib
    try:
        yield root
    finally:
        _copies.pop("lib", None)
        shutil.rmtree(root)
