"""Which borg a binary is, and what its ``borg serve`` can enforce.

Running ``borg --version`` costs 90-170 ms, too much per connection. The version comes
from the config (``version = "…"``) or is detected once and cached in the state dir,
keyed by the binary's inode, size and mtime/ctime, so an upgraded binary is re-detected.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Final

from borg_gate.config import BinarySpec
from borg_gate.errors import misconfigured, shown

VERSION_RE: Final = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?")
CACHE_NAME: Final = "borg-versions.json"
PRE_RANK: Final = {"a": 0, "b": 1, "rc": 2, None: 3}
DEV_RANK: Final = -1  # X.Y.Z.devN comes before X.Y.Za0 (PEP 440)
NOT_DEV: Final = 1 << 62  # a release sorts after all of its .devN builds


@dataclass(frozen=True, order=True)
class BorgVersion:
    major: int
    minor: int
    patch: int
    pre_rank: int = 3  # dev < a < b < rc < final
    pre_num: int = 0
    dev: int = NOT_DEV  # a git build (2.0.0b18.dev2) may lack what its release has: it sorts before it
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> BorgVersion:
        m = VERSION_RE.search(text)
        if not m:
            raise ValueError(f"no borg version in {text!r}")
        dev = NOT_DEV if m[6] is None else int(m[6])
        pre_rank = DEV_RANK if m[4] is None and m[6] is not None else PRE_RANK[m[4]]
        return cls(int(m[1]), int(m[2]), int(m[3]), pre_rank, int(m[5] or 0), dev, m[0])

    def __str__(self) -> str:
        return self.text


def _v(text: str) -> BorgVersion:
    return BorgVersion.parse(text)


@dataclass(frozen=True)
class ServeFeatures:
    """What ``borg serve`` of one version enforces when given an option (checked per tag in borg's source)."""

    append_only: bool  # 1.x, 2.0.0 up to b9: --append-only (b10-b15 exit "append-only is not supported (yet?)")
    storage_quota: bool  # same range: --storage-quota (b10-b15 exit "storage-quota is not supported (yet?)")
    permissions: bool  # 2.0.0b18+: serve takes --permissions {all,no-delete,write-only,read-only}
    # --permissions binds whatever the ssh:// (legacy, non-rest) serve opens. No borg so far: b18-b21 apply it
    # only when the client's RPC open asks for a borg 2 repository (remote.py: ``if not v1_or_v2``), so a
    # client opening a borg 1.x repository under the confinement gets delete; b22+ legacy serve ignores it.
    permissions_legacy_serve: bool
    rest: bool  # 2.0.0b22+: --rest --backend FILE:<path>, where --permissions binds every repository


def features(version: BorgVersion) -> ServeFeatures:
    legacy_options = version < _v("2.0.0b10")
    return ServeFeatures(
        append_only=legacy_options,
        storage_quota=legacy_options,
        permissions=version >= _v("2.0.0b18"),
        permissions_legacy_serve=False,
        rest=version >= _v("2.0.0b22"),
    )


@dataclass(frozen=True)
class Borg:
    """A configured binary with its known version."""

    spec: BinarySpec
    version: BorgVersion

    @property
    def features(self) -> ServeFeatures:
        return features(self.version)


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def detect_version(path: str) -> BorgVersion:
    """Ask the binary itself. stdin is /dev/null: the client's first request is not ours to read."""
    import subprocess  # here, not at the top: only a detection (new or upgraded binary) pays for it

    try:
        out = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise misconfigured(f"borg binary {path}: cannot run --version: {exc}") from None
    text = out.stdout.decode("utf-8", "replace") + out.stderr.decode("utf-8", "replace")
    try:
        return BorgVersion.parse(text)
    except ValueError:
        raise misconfigured(f"borg binary {path}: --version said {shown(text.strip(), 80)!r}") from None


def _read_cache(cache_path: str) -> dict[str, dict[str, str]]:
    try:
        with open(cache_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):  # absent, unreadable, not JSON, absurdly nested
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_path: str, cache: dict[str, dict[str, str]]) -> None:
    # Best effort: a cache we cannot write only costs the next connection a --version.
    tmp = f"{cache_path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o664)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cache, fh, indent=1, sort_keys=True)
        os.replace(tmp, cache_path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def resolve(spec: BinarySpec, state_dir: str) -> Borg:
    """The binary with its version: stated in the config, cached, or detected now."""
    try:
        st = os.stat(spec.path)
    except OSError as exc:
        raise misconfigured(f"borg binary {spec.name} = {spec.path}: {exc.strerror}") from None
    if not os.access(spec.path, os.X_OK) or not (st.st_mode & 0o111):
        raise misconfigured(f"borg binary {spec.name} = {spec.path}: not executable")
    if spec.version is not None:
        return Borg(spec, BorgVersion.parse(spec.version))
    cache_path = os.path.join(state_dir, CACHE_NAME)
    cache = _read_cache(cache_path)
    entry = cache.get(spec.path)
    identity = _identity(st)
    if isinstance(entry, dict) and entry.get("identity") == identity:
        try:
            return Borg(spec, BorgVersion.parse(str(entry.get("version", ""))))
        except ValueError:
            pass
    version = detect_version(spec.path)
    cache[spec.path] = {"identity": identity, "version": version.text}
    _write_cache(cache_path, cache)
    return Borg(spec, version)
