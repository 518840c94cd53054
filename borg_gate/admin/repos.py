"""``borg-gate repos [--json] [--authorized-keys FILE…]``: every repository this host serves, and how fresh it is.

Found from file metadata only: directory listings, stat calls and the first bytes of a
borg 1 ``config`` file; never segment or pack data, never a passphrase. Where it looks:
``[repos] root`` expanded for every client the state dir has seen (counters, latest
sessions, current slot holders) and, with ``--authorized-keys``, each gate key's own
confinement (``--restrict-to-path`` is searched below, ``--restrict-to-repository`` is one
repository).

Last change, per format:
- ``borg2`` (a borgstore repository, 2.0 betas from b10 on): every object under
  ``archives/`` is one archive (deleted ones end in ``.del`` until compact removes them),
  so the newest one's mtime is when the last archive was created and their number is the
  archive count. A prune, delete or compact does not move it.
- ``borg1`` (``config`` with ``[repository]``, version 1) and ``borg2-segments`` (the same
  layout, version 2, from borg 2.0 b1-b9): the newest transaction, the highest N of
  ``index.N``/``hints.N``/``integrity.N``, and its mtime. Every commit makes one, and prune,
  delete and compact commit too: a compaction looks like a backup here. Supervise mode
  tells them apart: the client's last session shows the bytes borg serve read (what the
  client uploaded), large for a backup, small for a compaction.

Size on disk is the sum of allocated blocks (``du``), never following a symlink. A borg 2
``packs/`` (b22) or ``data/`` (b19) can hold millions of files: its walk is cached per user
(``repos-cache-<uid>.json`` in the state dir, trusted only when it is this user's own file
and not writable by others) and redone only when one of the store's namespace directories
(``locks/`` changes with every borg session) has changed, or after MAX_CACHE_AGE. A walk
has a budget: MAX_SIZE_FILES files and MAX_SIZE_SECONDS per repository, MAX_RUN_SECONDS
for all the walks of one run (the metrics timer allows 50 s). Past it the walk stops, the
size is a lower bound (``size_complete`` false, ``>=`` in the text, a problem naming the
budget) and it is not cached. One store of 1,000,000 files is walked whole: ``metrics``
takes 3.5 s without the cache, 0.08 s with it.

Repository dirs belong to the clients' unix users, any of whom may plant symlinks, loops,
FIFOs, unreadable or enormous trees, or swap her repos root (or a dir above it) for a
symlink. A root (root's: the config or a key line) is resolved by safeopen.open_path one component
at a time from ``/``, following only symlinks owned by root; a symlink anyone else owns
ends that root with a problem and nothing under it is opened. A root that resolves to ``/``
is refused with the gate's own rule (confine.refuse_unconfined) and never walked. Below
the root the search opens every directory relative to its parent with O_NOFOLLOW, reports
(and never follows) symlinks, visits a directory once, stops after MAX_DIRS directories per
root and MAX_DEPTH levels (MAX_TREE_DEPTH inside a repository), reads at most MAX_ENTRIES
entries of a directory it searches, never opens a FIFO or device, and reports what it
could not read. Names are shown with control characters escaped.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from borg_gate.admin import counterfiles, safeopen, served, slotstatus
from borg_gate.admin.status import admin_parser, guarded, load_config
from borg_gate.base import config, counters, patterns, statedir
from borg_gate.base.errors import Refusal, shown
from borg_gate.base.events import iso
from borg_gate.conn import confine, keyopts, policy

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH: Final = 4  # /srv/borg/<client>/host/name: repositories this deep below a root are found
MAX_TREE_DEPTH: Final = 16  # inside a repository
MAX_ENTRIES: Final = 100_000  # read of one directory outside the size walk
MAX_DIRS: Final = 10_000  # directories searched per root (repositories' insides not counted)
# The size walk's budget. Measured (bench/repos --one-store-files 1000000, warm kernel caches,
# 2 cores): a borg 2 store of 1,000,000 packs walks at 294,000 files/s, `metrics` 3.5 s without
# the size cache, 0.08 s with it. 4,000,000 files (about 14 s at that rate) stop a warm walk at
# the same place every run; 15 s stop a slower one (a cold disk, a loaded host) before it eats
# the run. 35 s for all the walks of a run leave 15 s of the metrics timer's 50 s
# (TimeoutStartSec) for the interpreter, the search and the output (1.4 s for 10,000
# repositories with the cache). A stopped walk is not cached, so it runs again next time; one
# cut short by the run's deadline gets further then, as the walks before it come from the cache.
MAX_SIZE_FILES: Final = 4_000_000
MAX_SIZE_SECONDS: Final = 15.0
MAX_RUN_SECONDS: Final = 35.0
CONFIG_BYTES: Final = 4096
TRANSACTION_RE: Final = re.compile(r"(index|hints|integrity)\.([0-9]{1,20})")
ARCHIVE_RE: Final = re.compile(r"[0-9a-f]{64}")
STORE_NAMESPACES: Final = ("archives", "cache", "config", "data", "index", "keys", "locks", "packs")
CACHE_MODE: Final = 0o600
MAX_CACHE_BYTES: Final = 64 << 20
MAX_CACHE_AGE: Final = 86400.0  # a full walk at least daily, whatever the stamps say
# A directory holding one of these but no valid config was meant to be a repository.
REPO_HINTS: Final = ("README", "data", "archives", "packs", "keys", "nonce")


@dataclass(frozen=True)
class Root:
    client: str
    path: str
    kind: str  # "path" (searched below) or "repository" (exactly one)
    source: str  # "config [repos] root" or "FILE:LINE"


@dataclass
class Repo:
    client: str
    path: str
    format: str  # borg1, borg2-segments, borg2
    size_bytes: int
    files: int
    last_change: float | None  # unix time
    last_change_is: str  # "last archive created" or "last transaction (backup, prune, delete or compact)"
    transaction: int | None = None  # borg1/borg2-segments
    archives: int | None = None  # borg2
    locked: bool = False  # borg's own lock is there (a session has it open, or a stale lock)
    sessions: list[int] = field(default_factory=list)  # pids of the client's sessions that may hold it
    problems: list[str] = field(default_factory=list)
    size_complete: bool = True  # False: the size walk ran out of budget and size_bytes is a lower bound


@dataclass(frozen=True)
class Problem:
    client: str
    path: str
    problem: str


@dataclass
class ClientSession:
    client: str
    last_start: float | None = None
    last_end: float | None = None  # supervise mode only, as the next three
    last_exit_code: int | None = None
    last_bytes_up: int | None = None  # bytes borg serve read: what the client uploaded
    last_success: float | None = None
    user: str | None = None  # set when the entry is not the client's own (counterfiles.Totals.last)


@dataclass
class ReposReport:
    state_dir: str
    roots: list[Root]
    repos: list[Repo]
    problems: list[Problem]
    clients: list[ClientSession]


# --------------------------------------------------------------------------- where to look


def seen_clients(totals: counterfiles.Totals, holders: Sequence[slotstatus.Holder]) -> set[str]:
    """Every client the state dir knows: a label in the counters, a latest session, a slot holder."""
    clients = {client for client, _ in totals.last}
    for name in {counters.family(key) for key in totals.values}:
        clients.update(counterfiles.by_label(totals.values, name, "client"))
    clients.update(h.client for h in holders if h.client)
    return {c for c in clients if patterns.client_name(c)}


def config_roots(cfg: config.Config, clients: set[str]) -> list[Root]:
    if not cfg.repos_root:
        return []
    roots = []
    for client in sorted(clients):
        with contextlib.suppress(Refusal):  # a root with a stray brace: check reports it
            roots += _roots(policy.confinement(keyopts.KeyOptions(), cfg, client), client, "config [repos] root")
    return roots


def _roots(where: policy.Confinement, client: str, source: str) -> list[Root]:
    return [Root(client, p, "path", source) for p in where.paths] + [
        Root(client, p, "repository", source) for p in where.repositories
    ]


def key_roots(files: Sequence[str], cfg: config.Config) -> tuple[list[Root], list[Problem]]:
    """The confinement of every gate key line in these authorized_keys files, as the gate computes it."""
    from borg_gate.admin import check  # only --authorized-keys pays for it

    roots: list[Root] = []
    problems: list[Problem] = []
    configs: dict[str, config.Config | None] = {}

    def key_config(path: str | None) -> config.Config | None:
        if path is None:
            return cfg
        if path not in configs:
            try:
                configs[path] = config.load_config(path, True)
            except Refusal:
                configs[path] = None
        return configs[path]

    for path in files:
        try:
            data, st = served.read_keys(path)
        except OSError as exc:
            problems.append(Problem("", path, f"authorized_keys: {exc.strerror}"))
            continue
        owner = check.keys_owner(path, st)
        for number, key in served.gate_keys(data):
            where = f"{path}:{number}"
            if isinstance(key, Refusal):
                problems.append(Problem("", where, key.reason))
                continue
            try:
                key_cfg = key_config(key.config)
                if key_cfg is None:
                    problems.append(Problem(key.client or "", where, f"its config {key.config} is broken"))
                    continue
                client = policy.client_name(key, owner.name if owner else "")
                roots += _roots(policy.confinement(key, key_cfg, client), client, where)
            except Refusal as exc:
                problems.append(Problem("", where, exc.reason))
    return roots, problems


# --------------------------------------------------------------------------- reading one directory


@dataclass
class Entries:
    """One directory's entries by name: lstat results (never followed)."""

    fd: int
    st: os.stat_result
    items: dict[str, os.stat_result]


def _open_dir(name: str, dir_fd: int | None) -> int:
    return os.open(name, DIR_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)


def _list(fd: int, limit: int = MAX_ENTRIES) -> dict[str, os.stat_result]:
    """A directory's entries, lstat'ed; at most ``limit`` of them (a planted giant costs no memory)."""
    out: dict[str, os.stat_result] = {}
    with os.scandir(fd) as it:
        for entry in it:
            if len(out) >= limit:
                break
            with contextlib.suppress(OSError):  # gone since the listing
                out[entry.name] = entry.stat(follow_symlinks=False)
    return out


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink, not followed"
    if exc.errno == errno.ENOTDIR:
        return "not a directory"
    return exc.strerror or str(exc)


def _read_small(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a regular file (never a FIFO, device or symlink), or None."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def classify(dir_fd: int, items: Mapping[str, os.stat_result]) -> str | None:
    """borg1, borg2-segments, borg2, "unreadable config" or None (no repository here)."""
    cfg = items.get("config")
    if cfg is None:
        return None
    if stat.S_ISDIR(cfg.st_mode):
        try:
            fd = _open_dir("config", dir_fd)
        except OSError:
            return "unreadable config"
        try:
            inside = _list(fd)
            version = _read_small(fd, "version", 16) if "version" in inside else b""
        except OSError:
            return "unreadable config"
        finally:
            os.close(fd)
        if version is None:
            return "unreadable config"
        return "borg2" if version.strip().isdigit() else None
    if not stat.S_ISREG(cfg.st_mode):
        return None
    head = _read_small(dir_fd, "config", CONFIG_BYTES)
    if head is None:
        return "unreadable config"
    text = head.decode("utf-8", "replace")
    if not text.lstrip().startswith("[repository]"):
        return None
    m = re.search(r"^\s*version\s*=\s*([0-9]+)\s*$", text, re.M)
    return "borg2-segments" if m and m[1] == "2" else "borg1"


# --------------------------------------------------------------------------- size


@dataclass
class SizeBudget:
    """What one repository's size walk may spend: MAX_SIZE_FILES files, and the time until ``deadline``."""

    clock: Callable[[], float]
    start: float
    deadline: float  # on ``clock``: the repository's own limit or the run's, whichever comes first
    deadline_is: str  # which of the two, for the problem
    files: int = 0  # counted so far
    stopped: str = ""  # the limit that stopped the walk, once one has

    def spent(self) -> bool:
        """True once a limit is reached; asked before each entry (a clock read is 20 times cheaper than a stat)."""
        if not self.stopped and self.clock() >= self.deadline:
            self.stopped = self.deadline_is
        return bool(self.stopped)

    def count_file(self) -> bool:
        """Count one more file; False, and stopped, when the repository's files are used up."""
        if self.files >= MAX_SIZE_FILES:
            self.stopped = f"{MAX_SIZE_FILES:,} files per repository"
            return False
        self.files += 1
        return True


def tree_size(
    fd: int, seen: set[tuple[int, int]], problems: list[str], budget: SizeBudget, prefix: str = "", depth: int = 0
) -> int:
    """Allocated bytes below an open directory, its files counted in ``budget``; symlinks counted, never followed.

    Streams each listing (a planted directory of millions of entries costs time, not memory),
    stops at MAX_TREE_DEPTH (borg's own trees are 3 deep; a planted one could be deeper than
    the interpreter's recursion limit) and where ``budget`` is spent (``budget.stopped`` says
    so): then the bytes so far are a lower bound.
    """
    if depth >= MAX_TREE_DEPTH:
        problems.append(f"{prefix}: deeper than {MAX_TREE_DEPTH} levels, not counted")
        return 0
    total = 0
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if budget.spent():
                    return total
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                if not stat.S_ISDIR(st.st_mode):
                    if not budget.count_file():
                        return total
                elif (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    subdirs.append(entry.name)
                total += st.st_blocks * 512
    except OSError as exc:
        problems.append(f"{prefix or '.'}: {_why(exc)}")
        return total
    for name in subdirs:
        if budget.spent():
            break
        where = f"{prefix}{shown(name, 60)}/"
        try:
            sub = _open_dir(name, fd)
        except OSError as exc:
            problems.append(f"{where[:-1]}: {_why(exc)}")
            continue
        try:
            total += tree_size(sub, seen, problems, budget, where, depth + 1)
        finally:
            os.close(sub)
    return total


def _stamp(items: Mapping[str, os.stat_result], st: os.stat_result) -> list[int]:
    """What changes whenever borg writes a store: its own dir and each namespace dir (locks/: every session)."""
    out = [st.st_ino, st.st_mtime_ns]
    for name in STORE_NAMESPACES:
        s = items.get(name)
        out += [s.st_ino, s.st_mtime_ns, s.st_ctime_ns] if s is not None else [0, 0, 0]
    return out


class SizeCache:
    """Per-user cache of store sizes, in the state dir; anything not quite right is ignored."""

    def __init__(self, state_dir: str) -> None:
        self.name = f"repos-cache-{os.geteuid()}.json"
        self.dir_fd: int | None = None
        self.entries: dict[str, Any] = {}
        self.used: dict[str, Any] = {}
        self.hits = self.misses = 0
        self.failed: str | None = None  # why the cache could not be written, for the report's problems
        try:
            self.dir_fd = statedir.open_dir(state_dir, create=False)
        except (OSError, Refusal):
            return
        raw = self._read()
        if raw is not None:
            with contextlib.suppress(ValueError, RecursionError):
                data = json.loads(raw)
                if isinstance(data, dict) and isinstance(data.get("stores"), dict):
                    self.entries = data["stores"]

    def _read(self) -> bytes | None:
        assert self.dir_fd is not None
        try:
            fd = os.open(self.name, FILE_FLAGS, dir_fd=self.dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            if st.st_size > MAX_CACHE_BYTES:
                return None
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def get(self, path: str, stamp: list[int], now: float) -> tuple[int, int] | None:
        e = self.entries.get(path)
        if (
            isinstance(e, dict)
            and e.get("stamp") == stamp
            and isinstance(e.get("at"), int | float)
            and 0 <= now - e["at"] < MAX_CACHE_AGE
            and isinstance(e.get("size"), int)
            and isinstance(e.get("files"), int)
        ):
            self.hits += 1
            self.used[path] = e
            return e["size"], e["files"]
        self.misses += 1
        return None

    def put(self, path: str, stamp: list[int], now: float, size: int, files: int) -> None:
        self.used[path] = {"stamp": stamp, "at": now, "size": size, "files": files}

    def save(self) -> None:
        """Best effort, atomically (temp file + rename); only the stores seen this time are kept."""
        if self.dir_fd is None:
            return
        if self.used != self.entries:
            data = json.dumps({"stores": self.used}, separators=(",", ":")).encode()
            try:  # the one way to replace a file; a failure goes to the report's problems
                statedir.replace_file(self.dir_fd, self.name, data, CACHE_MODE)
            except OSError as exc:
                self.failed = f"{self.name}: {exc.strerror or exc}"
        os.close(self.dir_fd)
        self.dir_fd = None


# --------------------------------------------------------------------------- one repository


def _borg1(fd: int, items: Mapping[str, os.stat_result], repo: Repo) -> None:
    newest: dict[int, float] = {}
    for name, st in items.items():
        m = TRANSACTION_RE.fullmatch(name)
        if m and stat.S_ISREG(st.st_mode):
            n = int(m[2])
            newest[n] = max(newest.get(n, 0.0), st.st_mtime)
    if newest:
        repo.transaction = max(newest)
        repo.last_change = newest[repo.transaction]
    else:
        repo.problems.append("no transaction yet (no index.N, hints.N or integrity.N)")
    repo.locked = "lock.exclusive" in items or "lock.roster" in items


def _borg2(fd: int, items: Mapping[str, os.stat_result], repo: Repo) -> None:
    archives = items.get("archives")
    repo.archives = 0
    if archives is not None and stat.S_ISDIR(archives.st_mode):
        try:
            sub = _open_dir("archives", fd)
            try:
                with os.scandir(sub) as it:  # streamed: the count is exact however many there are
                    for entry in it:
                        if not ARCHIVE_RE.fullmatch(entry.name):
                            continue  # NAME.del: deleted, until compact removes it
                        with contextlib.suppress(OSError):
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode):
                                repo.archives += 1
                                repo.last_change = max(repo.last_change or 0.0, st.st_mtime)
            finally:
                os.close(sub)
        except OSError as exc:
            repo.problems.append(f"archives/: {_why(exc)}")
    locks = items.get("locks")
    if locks is not None and stat.S_ISDIR(locks.st_mode):
        with contextlib.suppress(OSError):
            sub = _open_dir("locks", fd)
            try:
                repo.locked = bool(os.listdir(sub))
            finally:
                os.close(sub)


def inspect(
    fd: int,
    st: os.stat_result,
    items: Mapping[str, os.stat_result],
    client: str,
    path: str,
    fmt: str,
    cache: SizeCache,
    now: float,
    budget: Callable[[], SizeBudget],
) -> Repo:
    store = fmt == "borg2"
    repo = Repo(
        client=client,
        path=path,
        format=fmt,
        size_bytes=0,
        files=0,
        last_change=None,
        last_change_is="last archive created" if store else "last transaction (backup, prune, delete or compact)",
    )
    if store:
        _borg2(fd, items, repo)
    else:
        _borg1(fd, items, repo)
    stamp = _stamp(items, st) if store else []
    cached = cache.get(path, stamp, now) if store else None
    if cached is None:
        problems: list[str] = []
        walk = budget()  # started now: the cache lookup above costs it nothing
        size = tree_size(fd, {(st.st_dev, st.st_ino)}, problems, walk) + st.st_blocks * 512
        files = walk.files
        repo.problems += problems[:5] + ([f"… and {len(problems) - 5} more"] if len(problems) > 5 else [])
        if walk.stopped:  # a lower bound: said so, and never cached as if it were the size
            repo.size_complete = False
            repo.problems.append(
                f"size walk stopped after {files:,} files / {walk.clock() - walk.start:.1f} s"
                f" (budget: {walk.stopped}): size is at least {size:,} bytes"
            )
        elif store and not problems:
            cache.put(path, stamp, now, size, files)
    else:
        size, files = cached
    repo.size_bytes = size
    repo.files = files
    return repo


# --------------------------------------------------------------------------- the search


@dataclass
class Search:
    cache: SizeCache
    now: float
    clock: Callable[[], float] = time.monotonic  # the size walks' budgets are on it
    repos: dict[str, Repo] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    walks_end: float = field(init=False)  # on ``clock``: no size walk of this run goes past it

    def __post_init__(self) -> None:
        self.walks_end = self.clock() + MAX_RUN_SECONDS

    def size_budget(self) -> SizeBudget:
        start = self.clock()
        if start + MAX_SIZE_SECONDS <= self.walks_end:
            return SizeBudget(self.clock, start, start + MAX_SIZE_SECONDS, f"{MAX_SIZE_SECONDS:g} s per repository")
        return SizeBudget(self.clock, start, self.walks_end, f"{MAX_RUN_SECONDS:g} s for all size walks of a run")

    def root(self, root: Root) -> None:
        try:
            fd, real = safeopen.open_path(root.path)  # root's own symlinks only: a user's ends it here
        except safeopen.NotTrusted as exc:
            self.problems.append(Problem(root.client, exc.path, exc.reason))
            return
        except OSError as exc:
            why = "missing (no backup yet?)" if exc.errno == errno.ENOENT else _why(exc)
            self.problems.append(Problem(root.client, root.path, why))
            return
        try:
            is_path = root.kind == "path"
            where = policy.Confinement((root.path,) if is_path else (), () if is_path else (root.path,))
            # The gate's own rule and words (one definition): as the gate resolves the path (realpath:
            # lstat and readlink only, it differs from ours only where root wrote ``..``), and as resolved here.
            try:
                confine.refuse_unconfined(where)
                confine.refuse_unconfined(where, lambda _path: real)
            except Refusal as exc:
                self.problems.append(Problem(root.client, root.path, exc.reason))
                return
            st = os.fstat(fd)
            budget = [MAX_DIRS]
            found = self.directory(
                fd, st, root.client, root.path, 0, {(st.st_dev, st.st_ino)}, budget, root.kind == "repository"
            )
            if not found and root.kind == "path" and not any(p.path.startswith(root.path) for p in self.problems):
                self.problems.append(Problem(root.client, root.path, "no repository here"))
            if budget[0] <= 0:
                self.problems.append(Problem(root.client, root.path, f"search stopped after {MAX_DIRS} directories"))
        finally:
            os.close(fd)

    def directory(
        self,
        fd: int,
        st: os.stat_result,
        client: str,
        path: str,
        depth: int,
        seen: set[tuple[int, int]],
        budget: list[int],
        exact: bool,
    ) -> bool:
        """Search one directory; True when a repository is at or below it."""
        budget[0] -= 1
        try:
            items = _list(fd)
        except OSError as exc:
            self.problems.append(Problem(client, path, _why(exc)))
            return True  # reported: its parent must not also say "no repository"
        if len(items) >= MAX_ENTRIES:
            self.problems.append(Problem(client, path, f"more than {MAX_ENTRIES} entries: the rest not searched"))
        fmt = classify(fd, items)
        if fmt == "unreadable config":
            self.problems.append(Problem(client, path, "looks like a repository, but its config is unreadable"))
            return True
        if fmt is not None:
            if path not in self.repos:
                self.repos[path] = inspect(fd, st, items, client, path, fmt, self.cache, self.now, self.size_budget)
            return True
        if exact or depth >= MAX_DEPTH:
            why = "no repository (no borg config)" if exact else f"no repository within {MAX_DEPTH} levels"
            self.problems.append(Problem(client, path, why))
            return True
        if any(h in items for h in REPO_HINTS):
            self.problems.append(Problem(client, path, "not a repository: no borg config (broken or planted?)"))
            return True
        found = False
        for name, sub_st in sorted(items.items()):
            sub_path = os.path.join(path, name)
            if stat.S_ISLNK(sub_st.st_mode):
                self.problems.append(Problem(client, sub_path, "a symlink, not followed"))
                found = True
                continue
            if not stat.S_ISDIR(sub_st.st_mode) or budget[0] <= 0:
                continue
            if (sub_st.st_dev, sub_st.st_ino) in seen:
                self.problems.append(Problem(client, sub_path, "seen before (a loop or bind mount)"))
                continue
            seen.add((sub_st.st_dev, sub_st.st_ino))
            try:
                sub = _open_dir(name, fd)
            except OSError as exc:
                self.problems.append(Problem(client, sub_path, _why(exc)))
                found = True
                continue
            try:
                below = self.directory(sub, os.fstat(sub), client, sub_path, depth + 1, seen, budget, False)
            finally:
                os.close(sub)
            if not below and depth == 0:
                self.problems.append(Problem(client, sub_path, "no repository here"))
            found = found or below
        return found


# --------------------------------------------------------------------------- the report


def client_sessions(totals: counterfiles.Totals, clients: set[str]) -> list[ClientSession]:
    """One row per client; a client whose latest session only a user of unknown or disputed service reports
    gets that user's row instead (counterfiles: never merged, never the newer picked)."""
    keys = set(totals.last) | {(c, None) for c in clients if not any(k[0] == c for k in totals.last)}
    out = []
    for client, user in sorted(keys, key=lambda k: (k[0], k[1] or "")):
        e = totals.last.get((client, user), {})
        code = e.get("exit_code")
        up = e.get("bytes_read")
        out.append(
            ClientSession(
                client,
                last_start=e.get("start"),
                last_end=e.get("end"),
                last_exit_code=int(code) if code is not None and code >= 0 else None,
                last_bytes_up=int(up) if up is not None and "end" in e else None,
                last_success=e.get("success"),
                user=user,
            )
        )
    return out


def _covers(restrictions: Sequence[str], path: str) -> bool:
    paths = [r.split("=", 1)[1] for r in restrictions if r.startswith("--restrict-to-path=")]
    repos = [r.split("=", 1)[1] for r in restrictions if r.startswith("--restrict-to-repository=")]
    inside = os.path.join(path, "")
    return (not paths or any(inside.startswith(os.path.join(p, "")) for p in paths)) and (
        not repos or any(inside == os.path.join(r, "") for r in repos)
    )


def report(
    cfg: config.Config, authorized_keys: Sequence[str] = (), totals: counterfiles.Totals | None = None
) -> ReposReport:
    usage = slotstatus.snapshot(cfg.state_dir, cfg.max_sessions, cfg.max_sessions_per_client)
    holders = [h for u in usage for h in u.holders if h.state != "queued"]
    if totals is None:
        totals = counterfiles.load(cfg.state_dir, authorized_keys)
    clients = seen_clients(totals, holders)
    roots = config_roots(cfg, clients)
    problems: list[Problem] = [
        Problem(client, "", f"latest sessions from users {', '.join(users)} differ: each shown with its user")
        for client, users in sorted(totals.disputed.items())
    ]
    if authorized_keys:
        more, key_problems = key_roots(authorized_keys, cfg)
        problems += key_problems
        roots += [r for r in more if r not in roots]
        clients.update(r.client for r in more)
    search = Search(SizeCache(cfg.state_dir), time.time())
    for root in dict.fromkeys(roots):
        search.root(root)
    search.cache.save()
    if search.cache.failed:  # counted among the problems: the next run walks every store again
        problems.append(Problem("", cfg.state_dir, f"size cache not written: {search.cache.failed}"))
    for repo in search.repos.values():
        pids = {h.pid for h in holders if h.pid and h.client == repo.client and _covers(h.restrictions, repo.path)}
        repo.sessions = sorted(pids)
    repos = sorted(search.repos.values(), key=lambda r: (r.client, r.path))
    return ReposReport(
        cfg.state_dir, list(dict.fromkeys(roots)), repos, problems + search.problems, client_sessions(totals, clients)
    )


# --------------------------------------------------------------------------- output


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    try:  # a file's mtime is its owner's to set (touch -d): far past or future is shown, never a crash
        stamp = iso(ts)[:19] + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (not a date)"
    age = max(now - ts, 0)
    ago = f"{age / 86400:.1f}d" if age >= 86400 else f"{age / 3600:.1f}h" if age >= 3600 else f"{age / 60:.0f}m"
    return f"{stamp} ({ago} ago)"


def text(r: ReposReport, now: float | None = None) -> str:
    from borg_gate.admin.status import _size, _table  # one table style for every admin command

    now = time.time() if now is None else now
    lines = [f"borg-gate repos: {len(r.repos)} repositories, {len(r.problems)} problems (state dir {r.state_dir})", ""]
    if r.repos:
        rows = [["CLIENT", "REPOSITORY", "FORMAT", "SIZE", "LAST CHANGE", "ARCHIVES/TX", "SESSION"]]
        for repo in r.repos:
            count = str(repo.archives) if repo.archives is not None else f"tx {repo.transaction}"
            held = ",".join(map(str, repo.sessions)) or ("locked" if repo.locked else "-")
            rows.append(
                [
                    shown(repo.client, 40),
                    shown(repo.path, 100),
                    repo.format,
                    _size(repo.size_bytes) if repo.size_complete else f">= {_size(repo.size_bytes)}",
                    _when(repo.last_change, now),
                    count,
                    held,
                ]
            )
        lines += _table(rows)
        lines.append("  (borg1 last change: any commit, prune/delete/compact too; borg2: the last archive created)")
    if r.clients:
        lines += ["", "clients' last sessions:"]
        rows = [["CLIENT", "STARTED", "ENDED", "EXIT", "BYTES UP", "LAST SUCCESS"]]
        for c in r.clients:
            rows.append(
                [
                    shown(c.client if c.user is None else f"{c.client} (user {c.user})", 60),
                    _when(c.last_start, now),
                    _when(c.last_end, now),
                    "-" if c.last_exit_code is None else str(c.last_exit_code),
                    "-" if c.last_bytes_up is None else _size(c.last_bytes_up),
                    _when(c.last_success, now),
                ]
            )
        lines += _table(rows)
    if r.problems:
        lines += ["", "problems:"]
        lines += [f"  {shown(p.client or '-', 40)}  {shown(p.path, 160)}: {shown(p.problem, 160)}" for p in r.problems]
        lines += [f"  {shown(repo.path, 160)}: {shown(p, 160)}" for repo in r.repos for p in repo.problems]
    return "\n".join(lines) + "\n"


def as_json(r: ReposReport) -> str:
    return json.dumps(asdict(r), indent=2, ensure_ascii=True) + "\n"


Sample = tuple[dict[str, str], float | int | None]

GAUGES: Final = {
    "borg_gate_repo_last_change_timestamp_seconds": "Repository's last change: borg2 the last archive created,"
    " borg1 the last transaction (prune, delete and compact commit too).",
    "borg_gate_repo_size_bytes": "Repository's size on disk (allocated blocks).",
    "borg_gate_repo_archives": "Archives in a borg 2 repository.",
    "borg_gate_client_last_session_start_timestamp_seconds": "When the client's latest session started.",
    "borg_gate_client_last_success_timestamp_seconds": "When the client's latest session that exited 0 ended"
    " (supervise mode only).",
    "borg_gate_repos_problems": "Places under the repository roots that are unreadable or no repository.",
}


def _utf8(path: str) -> str:
    """A path as UTF-8 text: a name that is not UTF-8 (kept by Python as surrogates) shows its bytes as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _who(c: ClientSession) -> dict[str, str]:
    return {"client": c.client} if c.user is None else {"client": c.client, counterfiles.USER_LABEL: c.user}


def metric_lines(r: ReposReport) -> Iterator[str]:
    """The freshness gauges ``borg-gate metrics`` adds: one series per repository and per client."""
    problems = len(r.problems) + sum(len(x.problems) for x in r.repos)
    samples: dict[str, list[Sample]] = {
        "borg_gate_repo_last_change_timestamp_seconds": [
            ({"client": x.client, "repo": _utf8(x.path), "format": x.format}, x.last_change) for x in r.repos
        ],
        "borg_gate_repo_size_bytes": [({"client": x.client, "repo": _utf8(x.path)}, x.size_bytes) for x in r.repos],
        "borg_gate_repo_archives": [({"client": x.client, "repo": _utf8(x.path)}, x.archives) for x in r.repos],
        "borg_gate_client_last_session_start_timestamp_seconds": [(_who(c), c.last_start) for c in r.clients],
        "borg_gate_client_last_success_timestamp_seconds": [(_who(c), c.last_success) for c in r.clients],
        "borg_gate_repos_problems": [({}, problems)],
    }
    for name, help_text in GAUGES.items():
        yield f"# HELP {name} {help_text}"
        yield f"# TYPE {name} gauge"
        for labels, value in samples[name]:
            if value is not None:
                number = int(value) if float(value).is_integer() else repr(float(value))
                yield f"{counters.series(name, **labels)} {number}"


def keys_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--authorized-keys",
        metavar="FILE",
        nargs="+",
        action="extend",
        default=[],
        help="also search the confinement of every gate key in these authorized_keys files",
    )


def main(argv: list[str]) -> int:
    parser = admin_parser("repos", __doc__ or "")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    keys_argument(parser)
    args = parser.parse_args(argv)

    def work() -> None:
        r = report(load_config(args.config), args.authorized_keys)
        sys.stdout.write(as_json(r) if args.json else text(r))

    return guarded("repos", work)
