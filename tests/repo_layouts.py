"""Synthetic borg repositories, laid out as real ones are (for tests and bench/repos).

Checked against real repositories (tests/test_repo_layouts.py builds one of each with the
installed borg and compares): borg 1.x ``borg init`` makes README, config (``[repository]``,
``version = 1``), nonce, data/0/<segment N>, and each commit index.N, hints.N, integrity.N;
borg 2.0.0b5 the same with ``version = 2``. A borgstore repository (2.0 b10+) has
config/{id,manifest,readme,version}, keys/, locks/, index/ (b22) or cache/chunks.* (b19), one empty file per
archive in archives/ (``<64 hex>``, ``.del`` once deleted, gone after compact) and its
objects in packs/XX/<id> (b22, one level) or data/XX/YY/<id> (b19, two levels), created as
needed. Object contents here are random bytes: the gate never reads them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

README = b"This is a Borg Backup repository.\nSee https://borgbackup.readthedocs.io/\n"


def _touch(path: Path, data: bytes, mtime: float | None) -> None:
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _hex(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def borg1(path: Path, transactions: int = 5, mtime: float | None = None, version: int = 1, segments: int = 3) -> Path:
    """A borg 1.x (version 1) or 2.0 b1-b9 (version 2) repository whose newest transaction is ``transactions``."""
    (path / "data" / "0").mkdir(parents=True)
    _touch(path / "README", README, mtime)
    config = (
        f"[repository]\nversion = {version}\nsegments_per_dir = 1000\nmax_segment_size = 524288000\n"
        f"append_only = 0\nstorage_quota = 0\nadditional_free_space = 0\nid = {_hex(path)}\n"
    )
    _touch(path / "config", config.encode(), mtime)
    _touch(path / "nonce", b"0000000000000042", mtime)
    for n in range(segments):
        _touch(path / "data" / "0" / str(n), b"BORG_SEG" + os.urandom(512), mtime)
    for name in ("index", "hints", "integrity"):
        _touch(path / f"{name}.{transactions}", os.urandom(64), mtime)
    return path


def store(
    path: Path,
    archives: int = 2,
    packs: int = 4,
    mtime: float | None = None,
    *,
    levels: int = 1,
    deleted: int = 0,
    version: str = "4",
) -> Path:
    """A borgstore repository: ``levels`` 1 is b22's packs/XX/, 2 is b19's data/XX/YY/."""
    for d in ("config", "keys", "locks", "index" if levels == 1 else "cache", "archives"):
        (path / d).mkdir(parents=True, exist_ok=True)
    _touch(path / "config" / "id", _hex(path, "id").encode(), mtime)
    _touch(path / "config" / "manifest", os.urandom(300), mtime)
    _touch(path / "config" / "readme", README, mtime)
    _touch(path / "config" / "version", version.encode(), mtime)
    _touch(path / "keys" / _hex(path, "key"), os.urandom(500), mtime)
    if levels == 1:  # b22 keeps its chunk index in index/, b19 in cache/chunks.<hash>
        _touch(path / "index" / _hex(path, "index"), os.urandom(400), mtime)
    else:
        _touch(path / "cache" / f"chunks.{_hex(path, 'chunks')[:16]}", os.urandom(400), mtime)
    for i in range(archives + deleted):
        name = _hex(path, "archive", i) + (".del" if i >= archives else "")
        _touch(path / "archives" / name, b"", mtime)
    namespace = "packs" if levels == 1 else "data"
    for i in range(packs):
        h = _hex(path, "pack", i)
        where = path / namespace / h[:2] if levels == 1 else path / namespace / h[:2] / h[2:4]
        where.mkdir(parents=True, exist_ok=True)
        _touch(where / h, os.urandom(700), mtime)
    return path
