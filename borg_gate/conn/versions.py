"""Which borg a binary is, and what its ``borg serve`` can enforce.

Running ``borg --version`` costs 90-170 ms, too much per connection. The version comes
from the config (``version = "…"``) or is detected once and cached in the state dir,
keyed by the binary's inode, size and mtime/ctime, so an upgraded binary is re-detected.

The state dir is shared by a group of gate users, any of whom could rewrite a shared cache
and make the gate believe a borg that ignores ``--permissions`` is one that enforces it. So
each unix user has its own cache (``borg-versions-<uid>.json``), read only when it is a
regular file with one link owned by that user and writable by nobody else, and written with O_EXCL and a
rename, both through the state dir's checked descriptor and never through a symlink; any
other file under that name is ignored (the binary is asked again).

The identity is the configured file's: a wrapper script whose underlying borg is upgraded
keeps its cached version (dpkg and pip rewrite their own wrappers on upgrade, a hand-written
``exec /opt/borg/bin/borg "$@"`` is not). State ``version = "…"`` in the config for any
binary serving keys with restricted permissions.
"""

from __future__ import annotations

import os

from borg_gate.base import jsontext, patterns, statedir
from borg_gate.base.config import BinarySpec, untrusted
from borg_gate.base.errors import Refusal, misconfigured, shown
from borg_gate.base.values import frozen, frozen_ordered

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

VERSION_RE: Final = r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?"  # patterns.version
MAX_CACHE_BYTES: Final = 1 << 16  # a few hundred binaries; anything bigger is not a cache the gate wrote
PRE_RANK: Final = {"a": 0, "b": 1, "rc": 2, None: 3}
DEV_RANK: Final = -1  # X.Y.Z.devN comes before X.Y.Za0 (PEP 440)
NOT_DEV: Final = 1 << 62  # a release sorts after all of its .devN builds


@frozen_ordered
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
        """A version (``1.2.4``, ``2.0.0b25``), or the first one in a text (``borg 1.2.4``)."""
        found = patterns.version(text)  # the config's, the cache's and this module's own: exact
        if found is not None:
            word = text
        else:  # what `borg --version` printed, once per binary: only detection pays for re
            import re

            m = re.search(VERSION_RE, text)
            if not m:
                raise ValueError(f"no borg version in {text!r}")
            word = m[0]
            found = patterns.version(word)
            assert found is not None  # the same form: tests/test_patterns.py
        major, minor, patch, pre, pre_num, dev = found
        pre_rank = DEV_RANK if pre is None and dev is not None else PRE_RANK[pre]
        return cls(major, minor, patch, pre_rank, pre_num or 0, NOT_DEV if dev is None else dev, word)

    def __str__(self) -> str:
        return self.text


def _v(text: str) -> BorgVersion:
    return BorgVersion.parse(text)


@frozen
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


# Every borg serve up to this version was read in borg's source: none has --legacy, all serve legacy
# (RPC) unless given --rest. A newer one is asked once (serve --help) whether it needs --legacy.
NEWEST_CHECKED: Final = _v("2.0.0b25")


def features(version: BorgVersion) -> ServeFeatures:
    legacy_options = version < _v("2.0.0b10")
    return ServeFeatures(
        append_only=legacy_options,
        storage_quota=legacy_options,
        permissions=version >= _v("2.0.0b18"),
        permissions_legacy_serve=False,
        rest=version >= _v("2.0.0b22"),
    )


@frozen
class Borg:
    """A configured binary with its known version."""

    spec: BinarySpec
    version: BorgVersion
    # serve has --legacy (borg #9766 proposes it, with --rest the default): the gate must say legacy itself
    legacy_option: bool = False

    @property
    def features(self) -> ServeFeatures:
        return features(self.version)


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _ask(path: str, *args: str) -> tuple[int, bytes, bytes]:
    """Run the binary once. stdin is /dev/null: the client's first request is not ours to read."""
    import subprocess  # here, not at the top: only a detection (new or upgraded binary) pays for it

    try:
        out = subprocess.run(
            [path, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise misconfigured(f"borg binary {path}: cannot run {' '.join(args)}: {exc}") from None
    return out.returncode, out.stdout, out.stderr


def detect_version(path: str) -> BorgVersion:
    """Ask the binary itself."""
    _, stdout, stderr = _ask(path, "--version")
    text = stdout.decode("utf-8", "replace") + stderr.decode("utf-8", "replace")
    try:
        return BorgVersion.parse(text)
    except ValueError:
        raise misconfigured(f"borg binary {path}: --version said {shown(text.strip(), 80)!r}") from None


def cache_name(uid: int | None = None) -> str:
    """This unix user's cache file in the state dir."""
    return f"borg-versions-{os.geteuid() if uid is None else uid}.json"


def _read_cache(dir_fd: int, name: str) -> dict[str, dict[str, str]]:
    """The cache, or {} when it is absent, unreadable, not JSON, or not a file only this user can write."""
    raw = statedir.read_own(dir_fd, name, MAX_CACHE_BYTES)
    if raw is None:
        return {}
    try:
        data = jsontext.loads(raw)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), absurdly nested
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(dir_fd: int, name: str, cache: dict[str, dict[str, str]]) -> None:
    # Best effort: a cache we cannot write only costs the next connection a --version.
    statedir.write_own(dir_fd, name, jsontext.dumps(cache, sort_keys=True).encode("utf-8"))


def _cached(spec: BinarySpec, identity: str, state_dir: str, field: str, compute: Callable[[], str]) -> str:
    """One fact about a binary, found once per identity, through this user's cache when the state dir can be used."""
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except (OSError, Refusal):  # missing or unsafe: the slots refuse an unsafe one; this only costs a probe
        return compute()
    try:
        name = cache_name()
        cache = _read_cache(dir_fd, name)
        entry = cache.get(spec.path)
        if not isinstance(entry, dict) or entry.get("identity") != identity:
            entry = {"identity": identity}
        value = entry.get(field)
        if isinstance(value, str):
            return value
        value = compute()
        cache[spec.path] = {**entry, field: value}
        _write_cache(dir_fd, name, cache)
        return value
    finally:
        os.close(dir_fd)


def detect_legacy_option(path: str) -> bool:
    """Whether this borg's serve has ``--legacy``, i.e. may serve rest:// unless told otherwise (borg #9766)."""
    code, stdout, _ = _ask(path, "serve", "--help")  # only a borg newer than the gate knows pays, once
    if code != 0:
        raise misconfigured(f"borg binary {path}: serve --help exited {code}")
    import re

    return re.search(rb"(?<![\w-])--legacy(?![\w-])", stdout) is not None


def _version(spec: BinarySpec, identity: str, state_dir: str) -> BorgVersion:
    text = _cached(spec, identity, state_dir, "version", lambda: detect_version(spec.path).text)
    try:
        return BorgVersion.parse(text)
    except ValueError:  # not what the gate wrote: ask the binary itself
        return detect_version(spec.path)


def resolve(spec: BinarySpec, state_dir: str) -> Borg:
    """The binary with its version (stated in the config, cached, or detected now) and its serve's modes."""
    try:
        st = os.stat(spec.path)
    except OSError as exc:
        raise misconfigured(f"borg binary {spec.name} = {spec.path}: {exc.strerror}") from None
    if not os.access(spec.path, os.X_OK) or not (st.st_mode & 0o111):
        raise misconfigured(f"borg binary {spec.name} = {spec.path}: not executable")
    problem = untrusted(st)  # the stat just taken: no extra system call
    if problem is not None:
        raise misconfigured(f"borg binary {spec.name} = {spec.path}: {problem}")
    identity = _identity(st)
    version = BorgVersion.parse(spec.version) if spec.version is not None else _version(spec, identity, state_dir)
    legacy = version > NEWEST_CHECKED and (
        _cached(spec, identity, state_dir, "legacy_option", lambda: str(detect_legacy_option(spec.path))) == "True"
    )
    return Borg(spec, version, legacy_option=legacy)
