"""The state dir: where the lock file, slot records and caches live, opened once and checked before use.

Every file in it is reached through the directory descriptor returned here (``dir_fd``)
and opened with O_NOFOLLOW, so nobody can swap the directory or plant a symlink between
the check and the use. A state dir is refused (misconfigured) when it is a symlink, not a
directory, owned by someone other than root or the gate's own user, world-writable (sticky
or not) or group-writable without the sticky bit. It is created when missing (mode 0700 for
the gate's own user); its parent must exist.

Sharing one host budget between several unix users (one per client) works through a group:

    groupadd borg-gate                      # the gate users, and nobody else
    usermod -aG borg-gate alice             # for each client's unix user
    # in /etc/tmpfiles.d/borg-gate.conf (the package ships it), applied at every boot:
    #   d /run/borg-gate       3770 root borg-gate -
    #   f /run/borg-gate/locks 0660 root borg-gate -

The budget itself is the root-owned ``locks`` file (budgetfile: why). The setgid bit makes
every file a member creates belong to the group whatever her primary group is, so status can
read it; the gate creates its own files (records, counters, the version cache) readable by
the group and writable by their owner alone. The sticky bit is required: with it, only a
file's owner (or root) can unlink or replace it, so no member can remove the lock file or
another user's files. Each member is a possible attacker of the others: every file read here
is opened without following links or blocking, and checked before it is used.
"""

from __future__ import annotations

import errno
import os
import stat

from borg_gate.base.errors import misconfigured

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Container
    from typing import Final

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FILE_MODE: Final = 0o660  # group-writable: gate users sharing a budget through a setgid dir
SHARED_UMASK: Final = 0o007

HOWTO: Final = "create it with: install -d -o root -g <gate group> -m 3770 DIR"


def unsafe(path: str, st: os.stat_result, owners: Container[int], what: str = "state dir") -> str | None:
    """Why a shared dir must not be used, or None: the one rule the gate and ``borg-gate check`` share.

    For the state dir and, with ``what="log dir"``, the event log's dir. World-writable is
    refused whether sticky or not (``/tmp``): every local user would be a member, able to plant
    names, hold locks and fill the dir. Group-writable needs the sticky bit (else any member
    could unlink the others' files).
    """
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} {path}: not a directory"
    if st.st_uid not in owners:
        return f"{what} {path}: owned by uid {st.st_uid}, not by root or this user"
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return f"{what} {path}: world-writable without the sticky bit"
    if st.st_mode & stat.S_IWOTH:
        return (
            f"{what} {path}: world-writable (sticky or not, every local user could plant and hold files"
            f" in it); use a dir of its own: install -d -o root -g <gate group> -m 3770 DIR"
        )
    if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISVTX:
        return (
            f"{what} {path}: group-writable without the sticky bit (any member could unlink the"
            f" others' {'slot files' if what == 'state dir' else 'files'}); fix: install -d -o root"
            f" -g {group_name(st.st_gid)} -m 3770 {path}"
        )
    return None


def _check(path: str, st: os.stat_result) -> None:
    problem = unsafe(path, st, (0, os.geteuid()))
    if problem is not None:
        raise misconfigured(problem)


def group_name(gid: int) -> str:
    import grp  # only a refused dir pays for the lookup

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def open_dir(path: str, *, create: bool = True) -> int:
    """A checked descriptor of the state dir, created (0700) if missing and ``create``.

    Raises FileNotFoundError when it is missing and ``create`` is false, a misconfigured
    Refusal when it is unsafe or cannot be made.
    """
    for _ in range(2):
        try:
            fd = os.open(path, DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass  # a concurrent gate made it; open and check it
            except OSError as exc:
                raise misconfigured(f"state dir {path}: cannot create: {exc.strerror}; {HOWTO}") from None
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "a symlink" if os.path.islink(path) else "not a directory"
                raise misconfigured(f"state dir {path}: {kind}") from None
            raise misconfigured(f"state dir {path}: cannot open: {exc.strerror}") from None
        try:
            _check(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise misconfigured(f"state dir {path}: vanished while being created")


def open_file(dir_fd: int, name: str, *, create: bool = True) -> int:
    """A regular file in the state dir, read-write, never through a symlink; raises OSError.

    O_NONBLOCK keeps a FIFO planted under a slot's name from hanging the open; it changes
    nothing for regular files, and anything else is refused.
    """
    flags = FILE_FLAGS | (os.O_CREAT if create else 0)
    fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return fd


def own_file(st: os.stat_result) -> bool:
    """This user's own regular file with one name: nobody else can have planted or linked it."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


OWN_MODE: Final = 0o644  # a user's own file: nobody else may write it (a shared one could be poisoned)


def read_own(dir_fd: int, name: str, max_bytes: int) -> bytes | None:
    """This user's own file in the shared dir, or None when it is anything else.

    Believed only when it is a regular file with one link, owned by this user and writable
    by nobody else: another member of the group could otherwise plant or rewrite it. Absent,
    unreadable, too big or foreign: None, and the caller goes on as if it had no memory.
    """
    try:
        fd = open_file(dir_fd, name, create=False)  # O_NOFOLLOW|O_NONBLOCK, regular files only
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_nlink != 1:
            return None
        raw = os.read(fd, max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw if len(raw) <= max_bytes else None


def temp_name(name: str) -> str:
    """An unguessable temp name beside ``name``: ``.NAME.<16 hex>.tmp`` (64 random bits).

    Every file the gate or root replaces lives in a dir another user can write (the state
    dir is shared by the group, a user's ~/.ssh is the user's). A name built from the pid
    could be planted in advance (pid_max is 32,768) and an O_EXCL create on it then fails
    for good; a random one cannot be predicted. The leading dot and the ``.tmp`` suffix keep
    it out of globs such as node_exporter's ``*.prom`` and the gate's own ``counters-*.json``.
    """
    return f".{name}.{os.urandom(8).hex()}.tmp"


def replace_file(
    dir_fd: int,
    name: str,
    data: bytes,
    mode: int,
    *,
    owner: tuple[int, int] | None = None,
    durable: bool = False,
) -> None:
    """Replace ``name`` in ``dir_fd`` by a new file holding ``data``, atomically; raises OSError.

    The one way this program replaces a file: a temp file made with O_CREAT|O_EXCL|O_NOFOLLOW
    under temp_name() (so neither a planted name nor a symlink can redirect or block it),
    its mode set with fchmod (the umask and a setgid dir must not widen it), its owner set
    when asked, then renamed over ``name``: a reader sees the old file or the new, never
    half of one. ``durable`` adds fsync of the file and the dir, for files a crash must not
    lose (authorized_keys); caches and counters skip it (a rename over a file already costs
    ext4 a data flush, ~0.5 ms, see counters). On any error the temp file is removed.
    """
    for _ in range(3):  # EEXIST on 64 random bits: only a broken RNG; give up after three
        tmp = temp_name(name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temp name", name)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if durable:
            os.fsync(dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


# Writes of this process's caches that failed, for the next event to log and count once
# (events.EventLog.emit drains it): a cache that cannot be written costs every later
# connection a probe (90-170 ms for borg --version), which must never go unnoticed.
failed_writes: list[str] = []


def write_own(dir_fd: int, name: str, data: bytes, *, mode: int = OWN_MODE) -> bool:
    """Replace this user's own file (replace_file); never raises: a failure is noted in failed_writes."""
    try:
        replace_file(dir_fd, name, data, mode)
    except OSError as exc:
        failed_writes.append(f"{name}: {exc.strerror or exc}")
        return False
    return True
