"""Structured JSON events, one line each, for monitoring.

A line is a JSON object: ``ts`` (ISO 8601 UTC), ``event``, ``conn`` (one id for all of a
connection's events), ``user``, ``remote_ip``, ``remote_port``, ``key`` (SHA256 fingerprint,
when sshd has ExposeAuthInfo), ``command`` (SSH_ORIGINAL_COMMAND), ``pid``, then what the
connection has bound (``client``, ``binary``, ``restrictions``, …) and the event's own fields.

Rendered with the standard library, not structlog: measured here (bench/logging_cost.py),
``import structlog`` costs 45-150 ms (idle to loaded host) against a whole connection of
~30 ms, while the standard library's C encoder costs nothing to load (jsontext); one event through
every sink costs 0.1-0.2 ms, and the gate's spawn-to-exec with the file and syslog sinks on
is within noise (under 1%) of the same with them off. A long-lived process that prefers
structlog gets the same line from :func:`structlog_renderer`, a structlog processor built on
:func:`render` (tests/test_events.py checks they agree), so the format has one definition.

Sinks, each tried once per event, none able to block or break a backup, none touching stdout:
- the file: one ``write`` on a descriptor opened with O_APPEND, so concurrent gates never
  interleave or lose lines; opened by path per event so logrotate's ``create`` works;
- syslog/journald (``[gate] syslog = true``): one non-blocking datagram to /dev/log (glibc's
  syslog(3) would block if journald stalls);
- counters in the state dir (borg_gate.base.counters), which also count the other sinks' failures.
"""

from __future__ import annotations

import os
import stat
import time

from borg_gate.base import counters, jsontext, statedir
from borg_gate.base.connection import Connection

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from typing import Any, Final

SYSLOG_SOCKET: Final = "/dev/log"
SYSLOG_FACILITY: Final = 3  # LOG_DAEMON
SYSLOG_SEVERITY: Final = {"connection.refused": 4, "config.error": 3, "gate.error": 3}  # else 6, info
LOG_MODE: Final = 0o660  # gates of several unix users append to one file (group-shared)
LOG_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
HEAD: Final = ("ts", "event", "conn")  # these keys lead every line, whoever renders it
# Client input is kept to its first COMMAND_CHARS characters (and at most COMMAND_BYTES once
# JSON-escaped: U+10FFFF takes 12 bytes as \udbff\udfff), with its full length beside it; no
# line ever exceeds MAX_LINE bytes, whatever any field holds (a traceback, a reason, a path).
COMMAND_CHARS: Final = 1000
COMMAND_BYTES: Final = 2048
MAX_LINE: Final = 8192  # with its newline


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def render(record: Mapping[str, Any]) -> str:
    """The one definition of a log line (without its newline).

    ensure_ascii escapes every control and line-separator character, so a line stays one
    line whatever a client smuggles into its command.
    """
    ordered = {k: record[k] for k in HEAD if k in record}
    ordered.update((k, v) for k, v in record.items() if k not in ordered)
    try:
        return jsontext.dumps(ordered, default=str)
    except ValueError:  # NaN or infinity, which strict JSON readers (jq) reject: null instead
        import json  # only such a line pays for it

        lenient = json.loads(json.dumps(ordered, default=str), parse_constant=lambda _: None)
        return jsontext.dumps(lenient)


def _escaped(ch: str) -> int:
    """Bytes json.dumps(ensure_ascii=True) spends on ch."""
    code = ord(ch)
    if 0x20 <= code < 0x7F:
        return 2 if ch in '"\\' else 1
    if code < 0x20:
        return 2 if ch in "\n\r\t\b\f" else 6
    return 6 if code < 0x10000 else 12


def clip(text: str, chars: int, budget: int) -> str:
    """The longest prefix of text of at most ``chars`` characters and ``budget`` escaped bytes."""
    if len(text) <= chars and len(text) * 12 <= budget:
        return text  # fits whatever it holds
    size = 0
    for i, ch in enumerate(text[:chars]):
        size += _escaped(ch)
        if size > budget:
            return text[:i]
    return text[:chars]


def _clip_all(value: Any, budget: int) -> Any:
    if isinstance(value, str):
        return clip(value, budget, budget)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k)[:64]: _clip_all(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clip_all(v, budget) for v in value[:64]]
    return clip(str(value), budget, budget)


def bounded(record: Mapping[str, Any]) -> str:
    """render(record), cut down until it fits MAX_LINE: every text field shorter, at worst the head alone."""
    line = render(record)
    budget = COMMAND_BYTES
    while len(line) >= MAX_LINE and budget >= 32:
        line = render({**_clip_all(record, budget), "truncated": True})
        budget //= 2
    if len(line) >= MAX_LINE:
        line = render({**{k: _clip_all(record[k], 64) for k in HEAD if k in record}, "truncated": True})
    return line


def structlog_renderer(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog's last processor, for the gate's exact line.

    Pair it with ``TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True, key="ts")``
    (``fmt="iso"`` drops the microseconds when they are zero).
    """
    return render(event_dict)


def log_dir_problem(log_file: str | None) -> str | None:
    """Why the log file's dir must not be used (the state dir's rule, statedir.unsafe), or None.

    A missing dir (or a file in its place) is no reason to refuse a connection: its events
    fail, counted as sink failures.
    """
    if not log_file:
        return None
    directory = os.path.dirname(log_file) or "/"
    try:
        st = os.stat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return statedir.unsafe(directory, st, (0, os.geteuid()), "log dir")


def unusable(st: os.stat_result) -> str | None:
    """Why an opened log file is not one to append to, or None.

    Only root (tmpfiles, logrotate's ``create``) or this user may own it: a member who made it
    in logrotate's rename-to-create window would own everyone's events. One link only: a second
    name of another file (a member's hard link of one of this user's own files) is not the log.
    """
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not by root or this user"
    if st.st_nlink != 1:
        return f"{st.st_nlink} links, not 1"
    if st.st_mode & stat.S_IWOTH:
        return "world-writable"
    return None


def append_line(path: str, data: bytes) -> str | None:
    """One O_APPEND write to a checked regular file; the error text on failure, None on success.

    The log dir may be shared, so anyone who can create files there can plant something under
    the log's name: O_NONBLOCK keeps a FIFO from hanging the open (ENXIO without a reader), and
    a file that fails :func:`unusable` is refused once open. On a regular file O_NONBLOCK changes
    nothing.
    """
    try:
        fd = os.open(path, LOG_FLAGS)
    except FileNotFoundError:
        try:
            fd = os.open(path, LOG_FLAGS | os.O_CREAT, LOG_MODE)
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        try:
            os.fchmod(fd, LOG_MODE)  # sshd's umask 022 would leave the other users unable to append
        except OSError:
            pass
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    try:
        problem = unusable(os.fstat(fd))
        if problem is not None:
            return f"{path}: {problem}"
        written = os.write(fd, data)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    finally:
        os.close(fd)
    return None if written == len(data) else f"{path}: short write ({written} of {len(data)} bytes)"


def send_syslog(line: str, severity: int, pid: int) -> str | None:
    """One datagram to the local syslog socket (journald reads it too); never blocks."""
    import _socket  # C module: socket.py would add ~3 ms for nothing used here

    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
    message = f"<{SYSLOG_FACILITY * 8 + severity}>{stamp} borg-gate[{pid}]: {line}".encode()
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK)
    except OSError as exc:
        return f"syslog: {exc.strerror}"
    try:
        sock.sendto(message, SYSLOG_SOCKET)
    except OSError as exc:
        return f"{SYSLOG_SOCKET}: {exc.strerror}"
    finally:
        sock.close()
    return None


class EventLog:
    """A connection's events: common fields, bound context, and the sinks chosen by the config."""

    def __init__(
        self, conn: Connection, log_file: str | None, *, syslog: bool = False, state_dir: str | None = None
    ) -> None:
        self.conn = conn
        self.log_file = log_file or None
        self.syslog = syslog
        self.state_dir = state_dir or None
        self.context: dict[str, Any] = {}
        self.failures = 0

    def bind(self, **fields: Any) -> None:
        """Fields carried by every later event of this connection (client, binary, …)."""
        self.context.update(fields)

    def record(self, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        c = self.conn
        record: dict[str, Any] = {
            "ts": iso(time.time()),
            "event": event,
            "conn": c.id,
            "user": c.unix_user,
            "remote_ip": c.remote_ip,
            "remote_port": c.remote_port,
            "key": c.fingerprint,
            "command": c.command,
            "pid": os.getpid(),
        }
        if c.command is not None:
            cut = clip(c.command, COMMAND_CHARS, COMMAND_BYTES)
            if cut != c.command:  # a client can send ~128 KiB, several times a second
                record["command"] = cut
                record["command_length"] = len(c.command)
        record.update(self.context)
        record.update(fields)
        return record

    def emit(self, event: str, **fields: Any) -> None:
        """Send one event to every sink; never raises, never blocks for long, never writes stdout."""
        errors: dict[str, str] = {}
        if statedir.failed_writes:  # logged and counted once, by the first event after the failure
            failed = list(statedir.failed_writes)
            del statedir.failed_writes[:]
            fields = {**fields, "write_failed": failed}
            errors["cache"] = failed[0]
        try:
            record = self.record(event, fields)
            line = bounded(record)
        except Exception as exc:  # a field that cannot be rendered loses its event, not the backup
            record = {"event": event}
            line = ""
            errors["render"] = repr(exc)
        # Every sink is fenced: an error escaping here would escape the gate's own error handler
        # too (it emits gate.error), and the client would get a traceback instead of a refusal.
        if line and self.log_file is not None:
            try:
                error = append_line(self.log_file, (line + "\n").encode())
            except Exception as exc:
                error = repr(exc)
            if error:
                errors["file"] = error
        if line and self.syslog:
            try:
                error = send_syslog(line, SYSLOG_SEVERITY.get(event, 6), os.getpid())
            except Exception as exc:
                error = repr(exc)
            if error:
                errors["syslog"] = error
        self.failures += len(errors)
        if self.state_dir is not None:
            try:
                increments = counters.from_event(record, errors)
                counted = counters.add(self.state_dir, increments, errors, counters.latest(record, time.time()))
            except Exception:
                counted = False
            self.failures += not counted
