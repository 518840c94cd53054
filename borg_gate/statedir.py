"""The state dir: where slot, queue and cache files live, opened once and checked before use.

Every file in it is reached through the directory descriptor returned here (``dir_fd``)
and opened with O_NOFOLLOW, so nobody can swap the directory or plant a symlink between
the check and the use. A state dir is refused (misconfigured) when it is a symlink, not a
directory, owned by someone other than root or the gate's own user, or group- or
world-writable without the sticky bit. It is created when missing (mode 0700 for the gate's
own user); its parent must exist.

Sharing one host budget between several unix users (one per client) works through a group:

    groupadd borg-gate                      # the gate users, and nobody else
    usermod -aG borg-gate alice             # for each client's unix user
    install -d -o root -g borg-gate -m 3770 /run/borg-gate
    # on systemd hosts, to survive reboots (/run is a tmpfs), in /etc/tmpfiles.d/borg-gate.conf:
    #   d /run/borg-gate 3770 root borg-gate -

The setgid bit makes every file created inside belong to the group whatever the creating
user's primary group is; the gate creates its files with umask 007 (mode 0660), so each gate
user can lock and update the files of the others. The sticky bit is required: without it any
member could unlink a slot file held by a running session, and the next gate would create a
fresh file under that name, lock it and serve over the limit. With it, only a file's owner
(or root) can unlink or replace it. Only gate users may be in the group: a member who could
run arbitrary code could hold slots forever (a denial of service, never a way around
confinement, which borg serve enforces).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container
from typing import Final

from borg_gate.errors import misconfigured

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FILE_MODE: Final = 0o660  # group-writable: gate users sharing a budget through a setgid dir
SHARED_UMASK: Final = 0o007

HOWTO: Final = "create it with: install -d -o root -g <gate group> -m 3770 DIR"


def unsafe(path: str, st: os.stat_result, owners: Container[int]) -> str | None:
    """Why a state dir must not be used, or None: the one rule the gate and ``borg-gate check`` share."""
    if not stat.S_ISDIR(st.st_mode):
        return f"state dir {path}: not a directory"
    if st.st_uid not in owners:
        return f"state dir {path}: owned by uid {st.st_uid}, not by root or this user"
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return f"state dir {path}: world-writable without the sticky bit"
    if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISVTX:
        return (
            f"state dir {path}: group-writable without the sticky bit (any member could unlink the"
            f" others' slot files); fix: install -d -o root -g {group_name(st.st_gid)} -m 3770 {path}"
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


def open_file(dir_fd: int, name: str, *, create: bool = True, exclusive: bool = False) -> int:
    """A regular file in the state dir, read-write, never through a symlink; raises OSError.

    O_NONBLOCK keeps a FIFO planted under a slot's name from hanging the open; it changes
    nothing for regular files, and anything else is refused.
    """
    flags = FILE_FLAGS | (os.O_CREAT if create else 0) | (os.O_EXCL if exclusive else 0)
    fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return fd


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


def write_own(dir_fd: int, name: str, data: bytes) -> None:
    """Replace this user's own file atomically (O_EXCL temp file, rename); best effort, never raises."""
    import contextlib

    tmp = f"{name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, OWN_MODE, dir_fd=dir_fd)
        try:
            os.fchmod(fd, OWN_MODE)  # the gate's umask 007 would leave it group-writable, and so ignored
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
