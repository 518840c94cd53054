"""The gate copy the test venv holds must be this tree's: other unix users run it.

scripts/setup makes the test venv in a world-readable place and installs the gate into it as
a copy, not editable: an editable install points back into the checkout, which sshd's and the
slot tests' unix users cannot read when it lies under /root (``No module named borg_gate``).
Tests import the working tree themselves (pytest puts the checkout first on sys.path); the
gates they start as other processes import the copy. A stale copy stops the session with the
command that refreshes it (scripts/setup; scripts/test runs it first): nothing is reinstalled
behind the runner's back.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def stale_files() -> list[str]:
    """The borg_gate files (every subpackage's too) whose installed copy differs from the working tree's."""
    installed = Path(sysconfig.get_paths()["purelib"]) / "borg_gate"
    tree = REPO_ROOT / "borg_gate"
    names = {p.relative_to(tree) for p in tree.rglob("*.py")} | {
        p.relative_to(installed) for p in installed.rglob("*.py")
    }
    return sorted(
        str(n)
        for n in names
        if not (tree / n).exists()
        or not (installed / n).exists()
        or (tree / n).read_bytes() != (installed / n).read_bytes()
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if sys.prefix == sys.base_prefix:
        return  # not the test venv (a system pytest): nothing of ours to check
    stale = stale_files()
    if stale:
        pytest.exit(
            f"the test venv's copy of borg_gate differs from this tree ({', '.join(stale[:5])}"
            f"{', ...' if len(stale) > 5 else ''}): run scripts/setup (scripts/test runs it first)",
            returncode=4,
        )
