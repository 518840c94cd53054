"""borg's own confinement rules, for the one case where the path is on the command line.

In rest:// mode (borg 2.0b22+) the client names its repository as ``--backend FILE:<path>``.
The gate checks it before taking a slot with the rules of borg's ``check_rest_restrictions``:
realpath after expanduser, separator-aware prefix for restrict-to-path, exact match for
restrict-to-repository, both when both are given. borg checks again after exec.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from borg_gate.errors import not_allowed, shown
from borg_gate.policy import Confinement

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
