"""Refusals: the one way the gate says no, each kind with its own exit code.

Codes sit above 192 because borg owns 0-127 (borg 2's modern codes reach 110)
and 128+N is "killed by signal N": a gate refusal is never mistaken for borg's.
"""

from __future__ import annotations

import enum

from borg_gate.printable import printable


class Kind(enum.IntEnum):
    """Why a connection was refused; the value is the process exit code."""

    BAD_COMMAND = 210  # the client asked for something that is not a vetted `borg serve`
    NOT_ALLOWED = 211  # well formed, but this key may not have it (repo, binary, permission)
    MISCONFIGURED = 212  # config file, key line, state dir or binary is broken: fail closed
    BUSY = 213  # no session slot freed up before the deadline
    CLIENT_GONE = 214  # the client hung up while queued
    INTERNAL = 215  # a bug in the gate; refused rather than risk an unconfined borg

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Refusal(Exception):
    """Raised anywhere on a connection's path; turned into one stderr line and an exit code."""

    def __init__(self, kind: Kind, reason: str, **fields: object) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.fields = fields

    def __str__(self) -> str:
        return self.reason


def bad_command(reason: str, **fields: object) -> Refusal:
    return Refusal(Kind.BAD_COMMAND, reason, **fields)


def not_allowed(reason: str, **fields: object) -> Refusal:
    return Refusal(Kind.NOT_ALLOWED, reason, **fields)


def misconfigured(reason: str, **fields: object) -> Refusal:
    return Refusal(Kind.MISCONFIGURED, reason, **fields)


def busy(reason: str, **fields: object) -> Refusal:
    return Refusal(Kind.BUSY, reason, **fields)


def shown(text: str, limit: int = 120) -> str:
    """Render untrusted text for a one-line message: no control characters, bounded length."""
    return printable(text[:limit]) + ("…" if len(text) > limit else "")
