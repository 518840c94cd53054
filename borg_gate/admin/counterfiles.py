"""Root's reading of the counters files that members write: parsed, checked, bounded, rebuilt.

Every unix user that runs the gate writes its own ``counters-<uid>.json`` in the shared state
dir (borg_gate.base.counters). Each of those users is a possible attacker of the others and of
root's monitoring, so nothing in such a file is copied through to ``metrics``, ``status`` or
``repos``:

- each series key is parsed into a metric name and a label set; only the families the gate
  defines (FAMILIES), each with exactly the label it writes, once, with a value from the set
  the gate writes (a client name as patterns.client_name checks it), are taken; the key is
  then rendered anew by counters.series, so what reaches the exposition is always valid
  Prometheus text, whatever the file held;
- values must be finite and non-negative numbers; times in ``last`` entries must fall
  between EPOCH (before the gate existed) and now + SKEW;
- a client's facts come only from users who serve that client (``served``: from the
  authorized_keys sshd reads for them, borg_gate.admin.served). A user whose keys could not be
  read has her client series published with her ``user`` label, never merged into anyone
  else's; a known user's series for a client she does not serve is dropped. root's own file
  (a gate run as root) is believed for every client.
- everything dropped is counted by reason (REASONS), and each file with something dropped is
  named with its unix user, for ``status`` and ``check``.
"""

from __future__ import annotations

import fcntl
import math
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from borg_gate.admin import safeopen
from borg_gate.base import counters, patterns
from borg_gate.base.errors import Kind

REJECTED: Final = "borg_gate_counters_rejected_total"
REJECTED_HELP: Final = (
    "Series and latest-session entries dropped from members' counters files, by reason;"
    " a file not read at all counts once as reason file."
)
# name: not a family the gate writes, or not a series at all; label: a label set or value the
# gate never writes; value: not a finite non-negative number; time: a time outside
# [EPOCH, now + SKEW]; client: a client the writing user does not serve; file: a whole file
# not read (not the user's own regular file, locked, too big, not JSON).
REASONS: Final = ("name", "label", "value", "time", "client", "file")

EPOCH: Final = 1793491200.0  # 2026-11-01T00:00:00Z: no gate wrote a time before it existed
SKEW: Final = 300.0  # seconds a writer's clock may run ahead of root's
MAX_BYTES_VALUE: Final = float(1 << 63)  # bytes moved by one session: an off_t
USER_LABEL: Final = "user"


def _allowed_reasons() -> frozenset[str]:
    return frozenset({k.label for k in Kind.ALL} | {"unknown"})


def _client(value: str) -> bool:
    return value == "" or patterns.client_name(value)


# family -> (its one label, the check of that label's value); None: a family without labels
FAMILIES: Final[Mapping[str, tuple[str, Callable[[str], bool]] | None]] = {
    counters.STARTED: ("client", _client),
    counters.ENDED: ("client", _client),
    counters.CPU: ("client", _client),
    counters.READ: ("client", _client),
    counters.WRITTEN: ("client", _client),
    counters.WAITED: ("client", _client),
    counters.REFUSALS: ("reason", _allowed_reasons().__contains__),
    counters.QUEUED: ("budget", frozenset({"host", "client", "repo", "unknown"}).__contains__),
    counters.SINK_FAILURES: ("sink", frozenset(counters.SINKS).__contains__),
    counters.CONFIG_ERRORS: None,
}
TIME_FIELDS: Final = ("start", "end", "success")


# --------------------------------------------------------------------------- parsing (pure)


def _name_char(ch: str, first: bool) -> bool:
    return ch.isascii() and (ch.isalpha() or ch in "_:" or (not first and ch.isdigit()))


def parse_series(key: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``name{a="x",b="y"}`` as Prometheus' text format writes it: (name, labels in order), or None.

    Label values take the escapes ``\\\\``, ``\\"`` and ``\\n``; anything else is no series.
    Label names are kept as written (duplicates and reserved ``__`` names included): the
    caller decides what to accept.
    """
    end = len(key)
    i = 0
    while i < end and key[i] not in "{":
        if not _name_char(key[i], i == 0):
            return None
        i += 1
    name = key[:i]
    if not name:
        return None
    labels: list[tuple[str, str]] = []
    if i == end:
        return name, labels
    i += 1  # past "{"
    while True:
        start = i
        while i < end and _name_char(key[i], i == start) and key[i] != ":":
            i += 1
        label = key[start:i]
        if not label or key[i : i + 2] != '="':
            return None
        i += 2
        value: list[str] = []
        while i < end and key[i] != '"':
            if key[i] == "\\":
                nxt = key[i + 1 : i + 2]
                if nxt not in ("\\", '"', "n"):
                    return None
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif key[i] == "\n":
                return None
            else:
                value.append(key[i])
                i += 1
        if i >= end:
            return None
        labels.append((label, "".join(value)))
        i += 1  # past the closing quote
        if key[i : i + 1] == ",":
            i += 1
            continue
        if key[i:] == "}":
            return name, labels
        return None


def _finite(value: object) -> float | None:
    """A finite non-negative number as float, or None (bools, strings, NaN, infinities, negatives)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past a float's range: no counter of ours
        return None
    return number if math.isfinite(number) and number >= 0 else None


def check_series(key: object, value: object) -> tuple[str, str | None, float] | str:
    """One counter: (family, its label's value or None, value) when the gate could have written it, else the reason."""
    parsed = parse_series(key) if isinstance(key, str) else None
    if parsed is None or parsed[0] not in FAMILIES:
        return "name"
    family, labels = parsed
    shape = FAMILIES[family]
    if shape is None:
        if labels:
            return "label"
        label_value = None
    else:
        if len(labels) != 1 or labels[0][0] != shape[0] or not shape[1](labels[0][1]):
            return "label"
        label_value = labels[0][1]
    number = _finite(value)
    if number is None:
        return "value"
    return family, label_value, number


def check_last(client: object, entry: object, now: float) -> dict[str, float] | str:
    """One ``last`` entry, checked field by field; the reason when any field is not as the gate writes it."""
    if not isinstance(client, str) or not client or not patterns.client_name(client):
        return "label"
    if not isinstance(entry, dict) or not entry or not set(entry) <= set(counters.LAST_FIELDS):
        return "label"
    out: dict[str, float] = {}
    for name, raw in entry.items():
        if name == "exit_code":  # -1: ended by a signal
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw not in range(-1, 256):
                return "value"
            out[name] = float(raw)
            continue
        number = _finite(raw)
        if number is None:
            return "value"
        if name in TIME_FIELDS and not EPOCH <= number <= now + SKEW:
            return "time"
        if name not in TIME_FIELDS and number > MAX_BYTES_VALUE:
            return "value"
        out[name] = number
    return out


# --------------------------------------------------------------------------- one file


@dataclass
class UserFile:
    """What one user's counters file holds, checked: counters by (family, label value), latest sessions by client."""

    name: str
    uid: int | None
    user: str
    counts: dict[tuple[str, str | None], float] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    last_error: dict[str, Any] | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    unreadable: bool = False

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n


def check_file(name: str, uid: int | None, data: Mapping[str, Any] | None, now: float) -> UserFile:
    """A parsed file's content, every series and entry checked (pure: no I/O but the user's name)."""
    out = UserFile(name, uid, "?" if uid is None else safeopen.owner_name(uid))
    if data is None:
        out.unreadable = True
        out.reject("file")
        return out
    values = data.get("values")
    if isinstance(values, dict):
        for key, value in values.items():
            checked = check_series(key, value)
            if isinstance(checked, str):
                out.reject(checked)
            else:
                family, label, number = checked
                out.counts[(family, label)] = out.counts.get((family, label), 0.0) + number
    elif values is not None:
        out.reject("name")
    last = data.get("last")
    if isinstance(last, dict):
        for client, entry in last.items():
            checked_last = check_last(client, entry, now)
            if isinstance(checked_last, str):
                out.reject(checked_last)
            else:
                out.last[client] = checked_last
    elif last is not None:
        out.reject("label")
    error = data.get("last_error")
    if isinstance(error, dict):
        ts = _finite(error.get("ts"))
        out.last_error = {
            "ts": ts if ts is not None and ts <= now + SKEW else None,
            "sink": str(error.get("sink", ""))[:40],
            "error": str(error.get("error", ""))[:400],
        }
    return out


# --------------------------------------------------------------------------- reading the state dir


def _trusted(st: os.stat_result, owners: tuple[int, ...]) -> bool:
    """A counters file as the gate writes it: regular, one link, writable by its owner alone."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_uid in owners
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _try_lock(fd: int) -> bool:
    """A reader's shared lock: a few non-blocking tries, never a wait on someone else's file."""
    for attempt in range(counters.READ_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < counters.READ_TRIES:
                time.sleep(counters.READ_PAUSE)
    return False


def _file_uid(name: str) -> int | None:
    uid = name[len(counters.PREFIX) : -len(".json")]
    return int(uid) if uid.isdigit() and uid.isascii() and len(uid) <= 10 else None


def read_files(state_dir: str, now: float | None = None) -> list[UserFile]:
    """Every user's counters file, read under a shared lock and checked; never raises for a file."""
    now = time.time() if now is None else now
    dir_fd = counters.open_state_dir(state_dir)
    if dir_fd is None:
        return []
    out = []
    try:
        for name in sorted(os.listdir(dir_fd)):
            if not (name.startswith(counters.PREFIX) and name.endswith(".json")):
                continue
            uid = _file_uid(name)
            data = None
            try:
                fd = os.open(name, os.O_RDONLY | counters.FLAGS, dir_fd=dir_fd)
            except OSError:
                out.append(check_file(name, uid, None, now))
                continue
            try:
                owners = (0,) if uid is None else (0, uid)
                if _trusted(os.fstat(fd), owners) and _try_lock(fd):
                    raw = counters.read_bounded(fd)
                    data = None if raw is None else counters.parse(raw)
            except OSError:
                data = None
            finally:
                os.close(fd)
            out.append(check_file(name, uid, data, now))
    finally:
        os.close(dir_fd)
    return out


# --------------------------------------------------------------------------- attribution and totals


ALL: Final = None  # served[uid] is ALL: this user's file speaks for every client (root)


class Totals:
    """Counters and latest sessions over every user's file, attributed, with what was dropped and why."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        # (client, user): latest session; user is None when the client's facts come from the users
        # that serve it, else the writing user whose service of the client is unknown or disputed.
        self.last: dict[tuple[str, str | None], dict[str, float]] = {}
        self.last_errors: list[dict[str, Any]] = []
        self.unreadable: list[str] = []
        self.rejected: dict[str, float] = dict.fromkeys(REASONS, 0.0)
        self.rejected_files: list[tuple[str, str, dict[str, int]]] = []  # file, user, reasons
        self.disputed: dict[str, list[str]] = {}  # client -> users whose latest sessions differ

    def latest(self, client: str) -> dict[str, float]:
        """A client's attributed latest session ({} when it has none, or only labelled ones)."""
        return self.last.get((client, None), {})


def _speaks_for(served: Mapping[int, frozenset[str] | None], uid: int | None, client: str) -> bool | None:
    """True/False when it is known whether uid serves client, None when it is not known."""
    if uid == 0:
        return True
    if uid is None or uid not in served:
        return None
    clients = served[uid]
    return True if clients is ALL else client in clients


def combine(files: list[UserFile], served: Mapping[int, frozenset[str] | None]) -> Totals:
    """Totals from checked files: attributed series summed, unknown ones labelled with their user."""
    totals = Totals()
    attributed: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for f in files:
        if f.unreadable:
            totals.unreadable.append(f.name)
        for (family, label), number in f.counts.items():
            shape = FAMILIES[family]
            if shape is None or label is None:
                labels = {}
            elif shape[0] != "client" or label == "":
                labels = {shape[0]: label}
            else:
                known = _speaks_for(served, f.uid, label)
                if known is False:
                    f.reject("client")
                    continue
                labels = {"client": label} if known else {"client": label, USER_LABEL: f.user}
            key = counters.series(family, **labels)
            totals.values[key] = totals.values.get(key, 0.0) + number
        for client, entry in f.last.items():
            known = _speaks_for(served, f.uid, client)
            if known is False:
                f.reject("client")
            elif known:
                attributed.setdefault(client, []).append((f.user, entry))
            else:
                totals.last[(client, f.user)] = entry
        if f.last_error is not None:
            totals.last_errors.append({"file": f.name, "user": f.user, **f.last_error})
        for reason, n in f.rejected.items():
            totals.rejected[reason] += n
        if f.rejected:
            totals.rejected_files.append((f.name, f.user, dict(f.rejected)))
    for client, entries in attributed.items():
        if len({tuple(sorted(e.items())) for _, e in entries}) == 1:
            totals.last[(client, None)] = entries[0][1]
        else:  # never pick the newer: a forged "just now" would win every time
            totals.disputed[client] = sorted(user for user, _ in entries)
            for user, entry in entries:
                totals.last[(client, user)] = entry
    totals.last_errors.sort(key=lambda e: e.get("ts") or 0.0)
    return totals


def load(
    state_dir: str,
    authorized_keys: Sequence[str] = (),
    *,
    served: Mapping[int, frozenset[str] | None] | None = None,
    now: float | None = None,
) -> Totals:
    """Read, check and attribute every user's counters.

    Who serves which client comes from ``served`` when given (tests), else from the users'
    own authorized_keys and the ``authorized_keys`` files root names (borg_gate.admin.served).
    """
    files = read_files(state_dir, now)
    if served is None:
        from borg_gate.admin import served as served_module  # reads users' key files: admin commands only

        served = served_module.discover([f.uid for f in files if f.uid is not None], authorized_keys)
    return combine(files, served)


def by_label(values: Mapping[str, float], name: str, label: str) -> dict[str, float]:
    """The series of family ``name`` summed per value of ``label`` (for status' tables)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        parsed = parse_series(key)
        if parsed is not None and parsed[0] == name:
            text = dict(parsed[1]).get(label, "")
            out[text] = out.get(text, 0.0) + value
    return out


def rejected_lines(totals: Totals) -> Iterator[str]:
    """The rejected-series counter as exposition lines, every reason present (0 too)."""
    yield f"# HELP {REJECTED} {REJECTED_HELP}"
    yield f"# TYPE {REJECTED} counter"
    for reason in REASONS:
        yield f"{counters.series(REJECTED, reason=reason)} {int(totals.rejected[reason])}"
