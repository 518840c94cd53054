"""Monotonic counters behind ``borg-gate metrics``, kept in the state dir.

They are incremented on the connection path, so: stdlib only, one short critical section.
Each unix user has its own ``counters-<uid>.json``, updated in place under an exclusive
fcntl.flock on that file (readers take a shared one), so concurrent gates never lose an
increment and a reader never sees half an update. One file per user: nobody ever writes
another user's file, whatever the state dir's sticky bit and group say.

In place rather than temp file + rename: on ext4 a rename over a file forces a data flush
(auto_da_alloc), ~0.5 ms per event against ~0.06 ms in place (bench/logging_cost.py). The
file only grows in blocks reserved with posix_fallocate before writing, and every write
covers the whole file (JSON padded with spaces), so a full disk refuses the reservation and
loses this increment, never the totals. A power cut in mid-write could garble the file;
it then starts over at zero, which Prometheus' rate() and increase() take as a counter
reset, as they do the reset after a reboot when the state dir is on tmpfs (/run).

Beside the counters each file keeps, per client, its latest session (``last``): when it
started and, in supervise mode, when it ended, with what exit code and how many bytes it
read (what the client uploaded) and wrote, and when a session last ended with exit 0.
``borg-gate repos`` and ``metrics`` read them; nothing else keeps timestamps, since the
event log may be off or rotated away. root's readers check and attribute every entry and
series before they use it (borg_gate.admin.counterfiles): never the newest over all users' files.

fcntl.flock rather than the filelock package: filelock's import alone costs ~30-40 ms per
connection, more than the gate's whole budget.

Other members of the state dir's group can plant files here, so a counters file is only
trusted as far as it must be. The writer opens its own file through the checked dir
descriptor (O_NOFOLLOW, O_NONBLOCK) and uses it only when it is a regular file owned by
this uid, with one link and mode 0600. A file planted by another uid costs the count, never
more. A second name for another of this user's files (a member can hard-link a victim's
group-writable slot file under the victim's counters name, which fs.protected_hardlinks
allows her: she can read and write it) is never written into nor waited on: its lock is a
session's, held for hours. Being the user's own, in a sticky dir, it is replaced by a fresh
0600 file (a rename, so nothing but the name changes); so is an older 0644 file, which
anyone could have kept open to hold its lock. Once verified, nobody but this user (and root)
can open the file, so the only lock it ever waits for is another of this user's gates, for
at most LOCK_WAIT seconds. The writer reads at most MAX_BYTES and takes anything it cannot
parse (garbled, too deep for json, not an object) as a reason to start over, counting that
as a sink failure.

Readers (status, metrics, repos; usually root) are borg_gate.admin.counterfiles: what a file
holds is parsed and checked there, never copied through.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

from borg_gate.base import jsontext, statedir
from borg_gate.base.errors import Refusal
from borg_gate.base.printable import printable

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

PREFIX: Final = "counters-"
# The owner's alone: a file others can open is a file others can flock (and, with
# fs.protected_hardlinks, one they can hard-link elsewhere). status and metrics run as root.
FILE_MODE: Final = 0o600
FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO planted here cannot hang us
BLOCK: Final = 4096
MAX_BYTES: Final = 1 << 20  # ~10,000 series; a bigger file is not one the gate wrote
# Our own gates hold the lock for microseconds, but 100 of them on 2 busy cores can queue for
# seconds (2 s lost increments in a loaded storm); a group member holding it on purpose
# only delays a connection by this much per event, never hangs it.
LOCK_WAIT: Final = 10.0
READ_TRIES: Final = 20  # readers: non-blocking tries READ_PAUSE apart, then the file is skipped
READ_PAUSE: Final = 0.002

REFUSALS: Final = "borg_gate_refusals_total"
STARTED: Final = "borg_gate_sessions_started_total"
ENDED: Final = "borg_gate_sessions_ended_total"
QUEUED: Final = "borg_gate_queued_total"
WAITED: Final = "borg_gate_wait_seconds_total"
CPU: Final = "borg_gate_session_cpu_seconds_total"
READ: Final = "borg_gate_session_read_bytes_total"
WRITTEN: Final = "borg_gate_session_written_bytes_total"
CONFIG_ERRORS: Final = "borg_gate_config_errors_total"
SINK_FAILURES: Final = "borg_gate_sink_failures_total"
SINKS: Final = ("file", "syslog", "render", "counters", "cache")  # the sink label's values

HELP: Final = {
    STARTED: "Sessions that took their slots and started borg serve.",
    ENDED: "Sessions whose borg serve ended (supervise mode only).",
    REFUSALS: "Connections refused, by reason (the gate's exit code kind).",
    QUEUED: "Connections that had to wait for a slot, by the budget that was full.",
    WAITED: "Seconds connections spent waiting for a slot (started or refused).",
    CPU: "CPU seconds used by ended borg serve sessions (supervise mode only).",
    READ: "Bytes read by ended borg serve sessions, all files and pipes (supervise mode only).",
    WRITTEN: "Bytes written by ended borg serve sessions, all files and pipes (supervise mode only).",
    CONFIG_ERRORS: "Connections that found the config file broken.",
    SINK_FAILURES: "Events a log sink failed to take (file, syslog, render, counters).",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series(metric: str, /, **labels: object) -> str:
    """A series in Prometheus' text syntax: ``metric{a="x",b="y"}`` (labels sorted).

    Label values go through printable(): a client name read from a slot file reaches
    ``borg-gate metrics`` on a terminal, and Prometheus has no escape for an ESC.
    """
    if not labels:
        return metric
    inner = ",".join(f'{k}="{_label(printable(str(v)))}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def family(key: str) -> str:
    return key.split("{", 1)[0]


LAST_FIELDS: Final = ("start", "end", "exit_code", "bytes_read", "bytes_written", "success")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if value > 0 else 0.0


def from_event(record: Mapping[str, Any], errors: Mapping[str, str]) -> dict[str, float]:
    """What one event adds to the counters (the failed sinks included)."""
    event = record.get("event")
    client = str(record.get("client", ""))
    inc: dict[str, float] = {}
    if event == "connection.refused":
        inc[series(REFUSALS, reason=record.get("kind", "unknown"))] = 1
    elif event == "session.started":
        inc[series(STARTED, client=client)] = 1
    elif event == "session.queued":
        inc[series(QUEUED, budget=record.get("budget", "unknown"))] = 1
    elif event == "session.ended":
        inc[series(ENDED, client=client)] = 1
        inc[series(CPU, client=client)] = _number(record.get("cpu_seconds"))
        inc[series(READ, client=client)] = _number(record.get("bytes_read"))
        inc[series(WRITTEN, client=client)] = _number(record.get("bytes_written"))
    elif event == "config.error":
        inc[CONFIG_ERRORS] = 1
    if event in ("session.started", "connection.refused") and _number(record.get("waited")):
        inc[series(WAITED, client=client)] = _number(record.get("waited"))
    for sink in errors:
        inc[series(SINK_FAILURES, sink=sink)] = 1
    return inc


def latest(record: Mapping[str, Any], now: float) -> dict[str, dict[str, float]]:
    """What one event sets in its client's ``last`` entry (empty for other events)."""
    client = record.get("client")
    if not isinstance(client, str) or not client:
        return {}
    if record.get("event") == "session.started":
        return {client: {"start": now}}
    if record.get("event") != "session.ended":
        return {}
    code = record.get("exit_code")
    entry = {"end": now, "exit_code": float(code) if isinstance(code, int) else -1.0}
    entry.update({k: _number(record.get(k)) for k in ("bytes_read", "bytes_written")})
    if code == 0:
        entry["success"] = now
    return {client: entry}


def _last(data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A file's ``last`` entries, numbers only (a planted file can put nothing else there)."""
    raw = data.get("last")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, dict[str, float]] = {}
    for client, entry in raw.items():
        if isinstance(client, str) and isinstance(entry, dict):
            out[client] = {
                k: float(v)
                for k, v in entry.items()
                if k in LAST_FIELDS and isinstance(v, int | float) and not isinstance(v, bool)
            }
    return out


def parse(raw: bytes) -> dict[str, Any] | None:
    """The file's object: {} for an empty (new) file, None for anything else that is not one."""
    if not raw.strip():
        return {}
    try:
        data = jsontext.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json's C scanner will go
        return None
    return data if isinstance(data, dict) else None


def _values(data: Mapping[str, Any]) -> dict[str, float]:
    """The writer keeps whatever is there (its own file); root's readers check every series (counterfiles)."""
    values = data.get("values")
    if not isinstance(values, dict):
        return {}
    return {k: _number(v) for k, v in values.items()}


def read_bounded(fd: int) -> bytes | None:
    """The whole file, or None when it is bigger than MAX_BYTES (a sparse or planted giant is never read)."""
    if os.fstat(fd).st_size > MAX_BYTES:
        return None
    chunks = []
    offset = 0
    while offset <= MAX_BYTES and (chunk := os.pread(fd, 1 << 16, offset)):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks) if offset <= MAX_BYTES else None


def _lock(fd: int, operation: int) -> bool:
    """flock within LOCK_WAIT seconds: anyone in the group can open our file, lock it and never let go.

    Uncontended, one non-blocking flock. Contended, a blocking flock in a helper thread on a
    dup of ``fd`` (the thread's own, so a reused descriptor number can never be locked by
    mistake), woken by the kernel the instant the holder lets go; polling instead loses the
    race to 50 busy gates now and then. Given up on, the dup still shares ``fd``'s open file
    description: a lock the thread gets later goes when the caller closes ``fd``.
    """
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    import threading  # only contention pays for it

    got = threading.Event()
    dup = os.dup(fd)

    def wait() -> None:
        try:
            fcntl.flock(dup, operation)
            got.set()
        except OSError:
            pass
        finally:
            os.close(dup)  # the lock belongs to the shared open file description, not to this descriptor

    threading.Thread(target=wait, daemon=True).start()
    return got.wait(LOCK_WAIT)


def _same_file(fd: int, name: str, dir_fd: int) -> bool:
    """The name still leads to fd's file (a gate of this user may have replaced it meanwhile)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _replace(dir_fd: int, name: str, old: int) -> str | None:
    """Put a fresh 0600 file under our own name, with the old one's counts when they are its own.

    Returns what was wrong with the old file (a sink error text), or None; raises OSError when
    the name could not be replaced. A hard link's bytes belong to another of our files: never copied.
    """
    linked = os.fstat(old).st_nlink != 1
    raw = None if linked else read_bounded(old)
    kept = raw is not None and parse(raw) is not None
    statedir.replace_file(dir_fd, name, raw if kept and raw else b"", FILE_MODE)
    if linked:
        return f"{name}: a second name of another file (a hard link), replaced"
    return None if kept else f"{name}: unreadable, started over from zero"


def _open_own(dir_fd: int, name: str) -> tuple[int, str | None] | None:
    """Our counters file, locked and verified, with what had to be replaced first; None: this count is lost."""
    note: str | None = None
    for _ in range(3):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | FLAGS, FILE_MODE, dir_fd=dir_fd)
        except OSError:
            return None
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return None  # planted by another member (or a FIFO): not ours to trust, write or wait on
            if st.st_nlink != 1 or stat.S_IMODE(st.st_mode) != FILE_MODE:
                note = _replace(dir_fd, name, fd) or note
                continue
            if not _lock(fd, fcntl.LOCK_EX):  # only this user's gates can hold it: microseconds each
                return None
            if not _same_file(fd, name, dir_fd):
                continue  # replaced while we waited: count into the file that has the name now
            keep = True
            return fd, note
        finally:
            if not keep:
                os.close(fd)
    return None


def open_state_dir(state_dir: str) -> int | None:
    """The state dir, checked as the slots check it; None if missing or unsafe (counting is best effort)."""
    try:
        return statedir.open_dir(state_dir, create=False)
    except (OSError, Refusal):
        return None


def add(
    state_dir: str,
    increments: Mapping[str, float],
    errors: Mapping[str, str] | None = None,
    last: Mapping[str, Mapping[str, float]] | None = None,
) -> bool:
    """Add to this user's counters and set its clients' ``last``, under its lock; False if the state dir refused."""
    if not increments and not errors and not last:
        return True
    dir_fd = open_state_dir(state_dir)
    if dir_fd is None:
        return False
    name = f"{PREFIX}{os.geteuid()}.json"
    try:
        opened = _open_own(dir_fd, name)
    except OSError:
        opened = None
    finally:
        os.close(dir_fd)
    if opened is None:
        return False
    fd, note = opened
    try:
        if note is not None:  # a member linked another of our files under this name, or a garbled file
            errors = {"counters": note, **(errors or {})}
            increments = {**increments, series(SINK_FAILURES, sink="counters"): 1}
        raw = read_bounded(fd)
        data = None if raw is None else parse(raw)
        if raw is None or data is None:  # oversized or garbled: start over from zero, and say so
            errors = {"counters": f"{name}: unreadable, started over from zero", **(errors or {})}
            increments = {**increments, series(SINK_FAILURES, sink="counters"): 1}
            os.ftruncate(fd, 0)
            raw, data = b"", {}
        values = _values(data)
        for key, amount in increments.items():
            values[key] = values.get(key, 0.0) + amount
        out: dict[str, Any] = {"values": values}
        latest = _last(data)
        for client, entry in (last or {}).items():
            latest.setdefault(client, {}).update(entry)
        if latest:
            out["last"] = latest
        if errors:
            sink, error = next(iter(errors.items()))
            out["last_error"] = {"ts": time.time(), "sink": sink, "error": error}
        elif isinstance(data.get("last_error"), dict):
            out["last_error"] = data["last_error"]
        text = jsontext.dumps(out).encode() + b"\n"
        size = len(raw)
        if len(text) > size:
            size = -(-len(text) // BLOCK) * BLOCK
            os.posix_fallocate(fd, 0, size)  # ENOSPC here leaves the file as it was
        return os.pwrite(fd, text.ljust(size), 0) == size
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the flock
