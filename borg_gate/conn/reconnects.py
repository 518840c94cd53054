"""A deadline refusal remembered briefly, so that a rest client's automatic reconnects get it at once.

borgstore (>= 0.5.5, the transport of borg 2.0b22+ clients talking to ``serve --rest``: rest://
URLs in b22, ssh:// ones from b25) reconnects up to three more times, 5 s apart, when the
server closes stdout without an answer, which is what a refusal looks like to it. Without a
memory, one borg command refused at the queue deadline would queue three more full waits and
log four refusals. So a rest connection refused at its deadline is written down for RECALL
seconds, per client name and remote address; a rest connection of that client from that
address within that time waits for nothing: a slot free right now is still taken, a full
budget refuses at once with the first reason.

The memory is this unix user's own file in the state dir (``deadline-<uid>.json``), believed
only when it is a regular file with one link, owned by this user and writable by nobody else
(statedir.read_own): another member of the gate's group can neither plant an entry that
makes someone else's client be refused at once nor erase one. A file it cannot read or write
only means no memory: the connection queues as it always did.
"""

from __future__ import annotations

import os
import time

from borg_gate.base import jsontext, statedir, values
from borg_gate.base.errors import Kind, Refusal

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final, TypeVar

    T = TypeVar("T")

    from borg_gate.conn.slots import Budget

# borgstore's retries come 5 s after each refusal; refused at once, the third is in within ~16 s.
RECALL: Final = 30.0
MAX_BYTES: Final = 1 << 16
MAX_ENTRIES: Final = 200  # clients refused within RECALL by one unix user: a few, in practice


def file_name(uid: int | None = None) -> str:
    return f"deadline-{os.geteuid() if uid is None else uid}.json"


def _who(client: str, remote_ip: str | None) -> str:
    return f"{client} {remote_ip or '-'}"


def _load(dir_fd: int) -> dict[str, dict[str, object]]:
    raw = statedir.read_own(dir_fd, file_name(), MAX_BYTES)
    if raw is None:
        return {}
    try:
        data = jsontext.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _fresh(entry: dict[str, object], now: float) -> bool:
    at = entry.get("at")
    return isinstance(at, int | float) and 0 <= now - at <= RECALL  # a clock set back forgets


def recall(state_dir: str, client: str, remote_ip: str | None, now: float | None = None) -> str | None:
    """The reason this client was refused at its deadline less than RECALL seconds ago, or None."""
    now = time.time() if now is None else now
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except (OSError, Refusal):  # no usable state dir: the slots will say so
        return None
    try:
        entry = _load(dir_fd).get(_who(client, remote_ip))
    finally:
        os.close(dir_fd)
    if entry is None or not _fresh(entry, now) or not isinstance(entry.get("reason"), str):
        return None
    return str(entry["reason"])


def remember(state_dir: str, client: str, remote_ip: str | None, reason: str, now: float | None = None) -> None:
    """Write the deadline refusal down (best effort: no memory only costs the reconnects their wait)."""
    now = time.time() if now is None else now
    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
        try:
            entries = {k: v for k, v in _load(dir_fd).items() if _fresh(v, now)}
            entries[_who(client, remote_ip)] = {"at": now, "reason": reason}
            newest = sorted(entries.items(), key=lambda kv: float(str(kv[1]["at"])))[-MAX_ENTRIES:]
            statedir.write_own(dir_fd, file_name(), jsontext.dumps(dict(newest), sort_keys=True).encode("utf-8"))
        finally:
            os.close(dir_fd)
    except (OSError, Refusal):
        pass


def acquire(
    state_dir: str,
    client: str,
    remote_ip: str | None,
    *,
    rest: bool,
    budget: Budget,
    take: Callable[[Budget], T],
) -> T:
    """``take`` a slot under ``budget``; for rest:// clients, without waiting when just refused at the deadline.

    Only rest:// clients reconnect by themselves (borg 1.x and ssh:// clients end the command),
    so only they are remembered; a person re-running a command after RECALL queues as usual.
    """
    if not rest:
        return take(budget)
    earlier = recall(state_dir, client, remote_ip)
    if earlier is None:
        try:
            return take(budget)
        except Refusal as refusal:
            if refusal.kind is Kind.BUSY:
                remember(state_dir, client, remote_ip, refusal.reason)
            raise
    try:
        return take(values.replace(budget, wait=0))
    except Refusal as refusal:
        if refusal.kind is not Kind.BUSY:
            raise
        raise Refusal(
            Kind.BUSY,
            f"{earlier} (a reconnect within {RECALL:g} s of that refusal, refused without waiting again)",
            **{**refusal.fields, "reconnect": True},
        ) from None
