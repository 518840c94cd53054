"""Refusals: the one way the gate says no, each kind with its own exit code.

Codes sit above 192 because borg owns 0-127 (borg 2's modern codes reach 110)
and 128+N is "killed by signal N": a gate refusal is never mistaken for borg's.
"""

from __future__ import annotations

from borg_gate.base.printable import printable

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import ClassVar


class _Kinds(type):
    def __iter__(cls) -> Iterator[Kind]:
        return iter(Kind.ALL)


class Kind(int, metaclass=_Kinds):
    """Why a connection was refused; the value is the process exit code.

    An int with a name rather than an enum.IntEnum: enum costs every connection about 3 ms of
    CPU to import (bench/overhead). Each kind is one object: compare with ``is`` or ``==``.
    """

    name: str
    ALL: ClassVar[tuple[Kind, ...]]
    BAD_COMMAND: ClassVar[Kind]
    NOT_ALLOWED: ClassVar[Kind]
    MISCONFIGURED: ClassVar[Kind]
    BUSY: ClassVar[Kind]
    CLIENT_GONE: ClassVar[Kind]
    INTERNAL: ClassVar[Kind]

    def __new__(cls, value: int, name: str) -> Kind:
        kind = super().__new__(cls, value)
        kind.name = name
        return kind

    @property
    def value(self) -> int:
        return int(self)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    def __repr__(self) -> str:
        return f"<Kind.{self.name}: {int(self)}>"


Kind.BAD_COMMAND = Kind(210, "BAD_COMMAND")  # the client asked for something that is not a vetted `borg serve`
Kind.NOT_ALLOWED = Kind(211, "NOT_ALLOWED")  # well formed, but this key may not have it (repo, binary, permission)
Kind.MISCONFIGURED = Kind(212, "MISCONFIGURED")  # config file, key line, state dir or binary is broken: fail closed
Kind.BUSY = Kind(213, "BUSY")  # no session slot freed up before the deadline
Kind.CLIENT_GONE = Kind(214, "CLIENT_GONE")  # the client hung up while queued
Kind.INTERNAL = Kind(215, "INTERNAL")  # a bug in the gate; refused rather than risk an unconfined borg
Kind.ALL = (Kind.BAD_COMMAND, Kind.NOT_ALLOWED, Kind.MISCONFIGURED, Kind.BUSY, Kind.CLIENT_GONE, Kind.INTERNAL)


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
