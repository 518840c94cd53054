"""Session slots: host-wide and per-client budgets held as kernel file locks.

Placeholder until the budget issue lands: takes no slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from borg_gate.policy import Budget


@dataclass
class Held:
    """Slots taken for one connection; their descriptors are inherited by borg serve."""

    fds: list[int] = field(default_factory=list)
    waited: float = 0.0
    slots: list[str] = field(default_factory=list)


def acquire(state_dir: str, client: str, budget: Budget, **info: object) -> Held:
    return Held()
