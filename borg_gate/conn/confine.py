"""borg's own confinement rules, for the one case where the path is on the command line.

In rest:// mode (borg 2.0b22+) the client names its repository as ``--backend FILE:<path>``.
The gate checks it before taking a slot with the rules of borg's ``check_rest_restrictions``:
realpath after expanduser, separator-aware prefix for restrict-to-path, exact match for
restrict-to-repository, both when both are given. borg checks again after exec.

It also refuses a confinement that confines nothing: a restriction whose realpath is ``/``
(``/``, ``//``, ``/.``, ``/..``, ``/srv/..``, a symlink to ``/``) admits every path borg can
reach, which is what no restriction at all does, and the gate never serves that. Only ``/``
counts: any other directory, however broad (``/srv``, ``/home``), does keep the key out of
everything beside it, and ``borg-gate check`` warns about the hazards of those (writable
ancestors, a confinement holding the key's own authorized_keys).
"""

from __future__ import annotations

import os

from borg_gate.base.errors import misconfigured, not_allowed, shown
from borg_gate.conn.policy import Confinement

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable

    Resolve = Callable[[str], str]


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def path_allowed(path: str, where: Confinement, resolve: Resolve = _real) -> bool:
    """True when borg would serve ``path`` under ``where``."""
    real = os.path.join(resolve(path), "")
    if where.paths and not any(real.startswith(os.path.join(resolve(p), "")) for p in where.paths):
        return False
    return not where.repositories or any(real == os.path.join(resolve(p), "") for p in where.repositories)


def check_backend(path: str | None, where: Confinement, resolve: Resolve = _real) -> None:
    if path is None:
        return  # ssh:// mode: the path travels inside the RPC; borg serve enforces it
    if not path_allowed(path, where, resolve):
        raise not_allowed(f"repository path not allowed: {shown(resolve(path), 120)}")


def unconfined(where: Confinement, resolve: Resolve = _real) -> str | None:
    """The first restriction (as its borg option) that confines nothing, or None."""
    for option, path in zip(where.options(), (*where.paths, *where.repositories), strict=True):
        if resolve(path) == "/":
            return option
    return None


def refuse_unconfined(where: Confinement, resolve: Resolve = _real) -> None:
    option = unconfined(where, resolve)
    if option is not None:
        raise misconfigured(
            f"confinement {shown(option, 120)} resolves to /: that is no confinement; "
            "name the clients' own directory (--restrict-to-path on the key line or [repos] root)"
        )
