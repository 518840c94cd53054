"""Opening a path that runs through other users' directories, as root, without being steered.

root's admin commands walk trees and read files below directories that backup users own
(a key's ``--restrict-to-path /home/borg/repos``, ``~/.ssh/authorized_keys``). The kernel's
own path walk follows every symlink, so a user who swaps a directory of hers for a symlink
sends root wherever she likes: to ``/`` (root walked 10,000 directories and listed names
under /root), or into another user's 0700 directory, whose repositories root then published
under her client's name. This module is the one place such a path is opened: only root's own
symlinks (the host's layout, ``/srv -> /data/srv``) are followed.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from typing import Final

PATH_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # a handle on the name itself: nothing opened
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FILE_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
MAX_SYMLINKS: Final = 40  # root's symlinks followed while resolving one path: the kernel's MAXSYMLINKS


class NotTrusted(OSError):
    """Not resolved: a symlink root does not own (or a loop); nothing at or under ``path`` is opened."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.ELOOP, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def owner_name(uid: int) -> str:
    """A uid as admin output names it: the user's name, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _names(path: str) -> list[str]:
    """An absolute path's names after lexical normalisation: no ``.``, no ``..``, no empty name."""
    return [name for name in os.path.normpath(path).split("/") if name]


def open_path(path: str, *, directory: bool = True) -> tuple[int, str]:
    """Open what ``path`` names, following only root's own symlinks; return it and where it is.

    A trust check: root then reads or walks what this opens.
    1. ``path`` is root's (config, key line, sshd's AuthorizedKeysFile); ``.``, ``..`` and
       ``//`` go lexically first.
    2. From ``/``, each name is opened relative to the directory before it, with O_PATH and
       O_NOFOLLOW: a handle on that very entry, never followed, never opened (a FIFO cannot
       block), never looked up again by name (nothing can be swapped in between).
    3. A directory: go on from it. A symlink: followed only when root owns it: its target
       (read from the handle whose owner was checked) takes its place and resolution starts
       again from ``/`` on the new path, at most MAX_SYMLINKS times; ``..`` in the target is
       lexical over directories just checked to be real. A symlink anyone else owns raises
       NotTrusted naming it. Anything else on the way: ENOTDIR.
    4. The last name must be a directory (``directory``) or a regular file; a file is opened
       through its O_PATH handle (/proc/self/fd), so it is the very inode just checked.
    Returns a read-only descriptor (the caller closes it) and the path with every symlink
    resolved. Raises NotTrusted, or OSError (ENOENT, EACCES, ENOTDIR, EINVAL, ...).
    """
    if not path.startswith("/"):
        raise NotTrusted(path, "not an absolute path")
    names = _names(path)
    hops = 0
    while True:
        fd = os.open("/", PATH_FLAGS)
        try:
            for i, name in enumerate(names):
                here = "/" + "/".join(names[: i + 1])
                sub = os.open(name, PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                st = os.fstat(fd)
                last = i == len(names) - 1
                if stat.S_ISDIR(st.st_mode) or (last and not directory and stat.S_ISREG(st.st_mode)):
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ENOTDIR if directory or not last else errno.EINVAL, "not a directory", here)
                if st.st_uid != 0:
                    raise NotTrusted(here, f"a symlink owned by {owner_name(st.st_uid)}, not followed")
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise NotTrusted(here, f"more than {MAX_SYMLINKS} symlinks (a loop?)")
                target = os.readlink("", dir_fd=fd)  # this very symlink's: the one whose owner was checked
                names = _names(os.path.join(os.path.dirname(here), target, *names[i + 1 :]))
                break  # again from /, on the new path
            else:
                where = "/" + "/".join(names)
                if directory:
                    return os.open(".", DIR_FLAGS, dir_fd=fd), where
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", where)
                return os.open(f"/proc/self/fd/{fd}", FILE_FLAGS), where
        finally:
            os.close(fd)
