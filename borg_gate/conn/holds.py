"""Maintenance holds: root stops new sessions of the host or of one client, and may drain them.

A hold is a file in the state dir, ``hold.host`` or ``hold.client.<name>``, holding its reason
and since when as JSON. Only root's count: the gate believes a hold file only when it is a
regular file owned by root with one name and writable by nobody else, so a member of the
group cannot hold the host (her file under that name is ignored, and root's ``hold`` replaces
it). A hold lasts until ``borg-gate release`` or the next boot (the state dir is on tmpfs).

What a held connection does is the queue's business (slots): it waits at the head of its
queue as if the budget were full, re-reading the hold every HOLD_RECHECK seconds, so a
release lets the queue go on, in arrival order, within a second. ``active`` is all the
connection path needs; placing, lifting and draining are root's commands (borg_gate.admin.hold).
"""

from __future__ import annotations

import os
import stat

from borg_gate.base import jsontext

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Any, Final

HOLD_RECHECK: Final = 0.25
_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def file_name(client: str | None) -> str:
    return "hold.host" if client is None else f"hold.client.{client}"


def read(dir_fd: int, name: str) -> dict[str, Any] | None:
    """The hold recorded under ``name``, if root placed it; None otherwise."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1 and not st.st_mode & 0o022):
            return None
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        hold = jsontext.loads(data)
    except ValueError:
        hold = None
    # root's file is the hold, whatever became of its content
    return hold if isinstance(hold, dict) else {"reason": "maintenance", "since": st.st_mtime}


def active(dir_fd: int, client: str | None) -> str | None:
    """The reason of root's hold on ``client`` (None: on the host), or None when there is none."""
    hold = read(dir_fd, file_name(client))
    if hold is None:
        return None
    reason = hold.get("reason")
    return reason if isinstance(reason, str) and reason else "maintenance"


def any_active(dir_fd: int, client: str) -> str | None:
    """The reason new sessions of ``client`` must wait (a host hold first), or None."""
    return active(dir_fd, None) or active(dir_fd, client)
