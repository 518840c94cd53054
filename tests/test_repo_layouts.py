"""The synthetic layouts of tests/repo_layouts.py (used by the tests and bench/repos) against real repositories.

Real ones are made with the installed borg (``borg init``), Debian's borg2 (its own verb:
``rcreate`` before b10, ``repo-create`` after) and 2.0.0b22 from tests/borgs/build, each
with one archive; versions come from the binaries, never from this file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from borg_gate.admin import repos
from borg_gate.conn.versions import BorgVersion
from tests import repo_layouts
from tests.e2e import harness

BUILD = harness.REPO_ROOT / "tests" / "borgs" / "build"


def version(borg: str) -> str:
    return subprocess.run([borg, "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]


def borg2_path() -> str:
    out = subprocess.run([harness.SYSTEM_PYTHON, str(BUILD), "2.0.0b22"], capture_output=True, text=True, check=True)
    (path,) = (line.split()[1] for line in out.stdout.splitlines() if line.startswith("2.0.0b22 "))
    return path


def real(borg: str, path: Path, tmp: Path) -> Path:
    env = {"PATH": "/usr/bin:/bin", "BORG_BASE_DIR": str(tmp / "base"), "BORG_PASSPHRASE": "x", "LANG": "C.UTF-8"}
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("data\n")
    v = version(borg)
    if v.startswith("1."):
        steps = [["init", "--encryption=none", str(path)], ["create", f"{path}::a1", str(src)]]
    else:
        create = "rcreate" if BorgVersion.parse(v) < BorgVersion.parse("2.0.0b10") else "repo-create"
        steps = [["-r", str(path), create, "--encryption=none"], ["-r", str(path), "create", "a1", str(src)]]
    for step in steps:
        subprocess.run([borg, *step], env=env, capture_output=True, text=True, check=True)
    return path


def names(path: Path) -> set[str]:
    """Top-level and namespace-level names, object names folded (they are hashes)."""
    out = set()
    for p in path.rglob("*"):
        rel = p.relative_to(path).parts
        if rel[0] in ("data", "packs", "archives", "keys", "index", "cache") and len(rel) > 1:
            out.add(rel[0] + "/…")
        elif rel[0].split(".")[0] in ("index", "hints", "integrity"):
            out.add(rel[0].split(".")[0] + ".N")
        else:
            out.add("/".join(rel))
    return out


def scan(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return repos.classify(fd, repos._list(fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("which", ["borg", "borg2-debian", "borg2-b22"])
def test_synthetic_layout_matches_a_real_repository(tmp_path: Path, which: str) -> None:
    borg = {"borg": harness.BORG1, "borg2-debian": harness.BORG2}.get(which) or borg2_path()
    v = version(borg)
    made = real(borg, tmp_path / "real", tmp_path)
    if v.startswith("1."):
        fake, fmt = repo_layouts.borg1(tmp_path / "fake"), "borg1"
    elif (made / "config").is_file():  # 2.0 b1-b9: borg 1's layout, version 2
        fake, fmt = repo_layouts.borg1(tmp_path / "fake", version=2), "borg2-segments"
    else:
        levels = 1 if (made / "packs").is_dir() else 2
        ver = (made / "config" / "version").read_text()
        fake, fmt = repo_layouts.store(tmp_path / "fake", archives=1, levels=levels, version=ver), "borg2"
    assert scan(made) == scan(fake) == fmt
    real_names, fake_names = names(made), names(fake)
    assert real_names - {"lock.roster", "lock.exclusive", "keys", "cache"} <= fake_names, (v, real_names, fake_names)
    # what encryption adds (nonce, keys/) or a later session writes (cache/, index/ objects, data/ of b19)
    assert fake_names - real_names <= {"nonce", "keys", "keys/…", "cache", "cache/…", "index/…", "data/…"}, (
        v,
        fake_names,
    )
