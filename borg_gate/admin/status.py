"""``borg-gate status [--json] [--config FILE]``: what runs now, who waits, what failed.

Read-only: the slot snapshot reads the state dir without taking or touching a lock, the
counters are read without their lock (each file is replaced atomically), and the process
figures come from /proc through psutil. Works for any user who can read the state dir;
a process the user may not inspect (another user's borg serve) shows its I/O as unknown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from borg_gate.admin import counterfiles, slotstatus
from borg_gate.base import config, counters
from borg_gate.base.errors import Refusal
from borg_gate.base.events import iso
from borg_gate.base.printable import printable


@dataclass(frozen=True)
class BudgetRow:
    kind: str  # "host", "client" or "repo"
    name: str
    limit: int
    in_use: int
    free: int
    waiters: int
    reserved: int = 0  # host: slots for --priority keys only
    reserved_in_use: int = 0
    priority_waiters: int = 0


@dataclass(frozen=True)
class SessionRow:
    client: str | None
    user: str | None
    conn: str | None
    pid: int | None  # the slot holder: borg serve itself, or its supervisor
    serve_pid: int | None  # the borg serve process measured (None: gone or unknown)
    started: str | None
    duration: float | None
    waited: float | None
    binary: str | None
    restrictions: list[str]
    rss: int | None
    cpu_seconds: float | None
    bytes_read: int | None
    bytes_written: int | None


@dataclass(frozen=True)
class StatusReport:
    state_dir: str
    config: str
    budgets: list[BudgetRow]
    sessions: list[SessionRow]
    sink_failures: dict[str, float]
    last_sink_errors: list[dict[str, Any]]
    holds: list[dict[str, Any]]  # scope, reason, since: root's maintenance holds
    # counters files with series or entries the gate never writes: file, unix user, count per reason
    rejected: list[dict[str, Any]] = field(default_factory=list)


def load_config(path: str | None) -> config.Config:
    """The config an admin command reads: --config, else $BORG_GATE_CONFIG, else the default."""
    where, required = config.config_path(path, os.environ)
    return config.load_config(where, required)


def budgets(usage: Sequence[slotstatus.BudgetUsage]) -> list[BudgetRow]:
    return [
        BudgetRow(
            u.kind,
            u.name,
            u.limit,
            len(u.holders),
            max(u.limit - len(u.holders), 0),
            u.waiters,
            u.reserved,
            u.reserved_in_use,
            u.priority_waiters,
        )
        for u in usage
    ]


def current_holds(state_dir: str) -> list[dict[str, Any]]:
    from borg_gate.admin import hold
    from borg_gate.base import statedir

    try:
        dir_fd = statedir.open_dir(state_dir, create=False)
    except FileNotFoundError:
        return []
    try:
        return hold.all_holds(dir_fd)
    finally:
        os.close(dir_fd)


def serving_process(pid: int, binary: str | None) -> psutil.Process | None:
    """The borg serve behind a slot: the holder itself (exec mode) or its child (supervise mode).

    borg is usually a script: its path is argv[0] or follows the interpreter's, so look for it anywhere.
    """
    try:
        proc = psutil.Process(pid)
        if binary is None or binary in proc.cmdline():
            return proc
        for child in proc.children():
            with contextlib.suppress(psutil.Error):
                if binary in child.cmdline():
                    return child
        return proc
    except psutil.Error:
        return None


def measure(holder: slotstatus.Holder, now: float) -> SessionRow:
    proc = serving_process(holder.pid, holder.binary) if holder.pid else None
    rss = cpu = read = written = None
    if proc is not None:
        try:
            with proc.oneshot():
                rss = proc.memory_info().rss
                times = proc.cpu_times()
                cpu = round(times.user + times.system, 2)
                try:
                    io = proc.io_counters()
                    read, written = io.read_chars, io.write_chars
                except psutil.AccessDenied:
                    pass  # /proc/<pid>/io is for the owner and root only
        except psutil.Error:
            proc = None
    started = holder.started
    return SessionRow(
        client=holder.client,
        user=holder.user,
        conn=holder.conn,
        pid=holder.pid,
        serve_pid=proc.pid if proc is not None else None,
        started=iso(started) if started is not None else None,
        duration=round(max(now - started, 0.0), 1) if started is not None else None,
        waited=holder.waited,
        binary=holder.binary,
        restrictions=list(holder.restrictions),
        rss=rss,
        cpu_seconds=cpu,
        bytes_read=read,
        bytes_written=written,
    )


def report(cfg: config.Config) -> StatusReport:
    usage = slotstatus.snapshot(cfg.state_dir, cfg.max_sessions, cfg.max_sessions_per_client, cfg.reserved_sessions)
    now = time.time()
    seen: dict[tuple[int | None, str | None, str], slotstatus.Holder] = {}
    for u in usage:
        for h in u.holders:
            if h.state != "queued":  # a client slot held while queued for a host slot: a waiter, not a session
                # one session holds a client slot and a host slot
                seen.setdefault((h.pid, h.conn, h.slot if h.conn is None else ""), h)
    sessions = sorted((measure(h, now) for h in seen.values()), key=lambda s: (s.client or "", s.started or ""))
    totals = counterfiles.load(cfg.state_dir)
    failures = {"file": 0.0, "syslog": 0.0, **counterfiles.by_label(totals.values, counters.SINK_FAILURES, "sink")}
    return StatusReport(
        cfg.state_dir,
        cfg.source,
        budgets(usage),
        sessions,
        failures,
        totals.last_errors[-3:],
        current_holds(cfg.state_dir),
        [{"file": name, "user": user, "rejected": reasons} for name, user, reasons in totals.rejected_files],
    )


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(raw: list[list[str]]) -> list[str]:
    rows = [[printable(c) for c in r] for r in raw]  # slot files are written by group members
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _row(s: SessionRow) -> list[str]:
    pid = "-" if s.pid is None else str(s.pid)
    if s.serve_pid is None:
        pid += " (gone)"
    elif s.serve_pid != s.pid:
        pid += f">{s.serve_pid}"  # a supervisor and its borg serve
    return [
        s.client or "?",
        pid,
        s.started[:19] + "Z" if s.started else "-",
        "-" if s.duration is None else _duration(s.duration),
        "-" if s.waited is None else f"{s.waited:.1f}s",
        s.binary or "-",
        " ".join(s.restrictions) or "-",
        _size(s.rss),
        "-" if s.cpu_seconds is None else f"{s.cpu_seconds:.1f}s",
        _size(s.bytes_read),
        _size(s.bytes_written),
    ]


def _when(ts: object) -> str:
    """A counters file's timestamp, whatever a member wrote there instead of a number."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return "?"
    try:
        return iso(float(ts))
    except (ValueError, OverflowError, OSError):
        return "?"


def text(r: StatusReport) -> str:
    """The tables for a terminal: every text that came from a file goes through printable()."""
    lines = [printable(f"borg-gate status: state dir {r.state_dir} (config {r.config})"), "", "budgets:"]
    rows = [["BUDGET", "IN USE", "FREE", "WAITING"]]
    for b in r.budgets:
        label = "host" if b.kind == "host" else f"{b.kind} {b.name}"
        waiting = f"{b.waiters} ({b.priority_waiters} priority)" if b.priority_waiters else str(b.waiters)
        rows.append([label, f"{b.in_use}/{b.limit}", str(b.free), waiting])
        if b.reserved:
            rows.append(["  reserved for --priority", f"{b.reserved_in_use}/{b.reserved}", "", ""])
    lines += _table(rows)
    for h in r.holds:
        since = iso(h["since"])[:19] + "Z" if h["since"] is not None else "?"
        lines.append(printable(f"on hold: {h['scope']} since {since}: {h['reason']}"))
    lines += ["", f"sessions: {len(r.sessions)}"]
    if r.sessions:
        rows = [
            [
                "CLIENT",
                "PID",
                "STARTED",
                "DURATION",
                "WAITED",
                "BINARY",
                "RESTRICTIONS",
                "RSS",
                "CPU",
                "READ",
                "WRITTEN",
            ]
        ]
        rows += [_row(s) for s in r.sessions]
        lines += _table(rows)
    failures = ", ".join(f"{sink} {value:.0f}" for sink, value in sorted(r.sink_failures.items()))
    lines += ["", printable(f"log sink failures: {failures}")]
    lines += [printable(f"  last: {_when(e.get('ts'))} {e.get('sink')}: {e.get('error')}") for e in r.last_sink_errors]
    if r.rejected:
        lines += ["", "counters files holding what the gate never writes (left out of metrics):"]
        lines += [printable(f"  {rejected_line(e)}") for e in r.rejected]
    return "\n".join(lines) + "\n"


def rejected_line(e: Mapping[str, Any]) -> str:
    """One counters file's dropped series, for status and check: file, unix user, count per reason."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(e["rejected"].items()))
    return f"{e['file']} (unix user {e['user']}): dropped {reasons}"


def admin_parser(command: str, doc: str) -> argparse.ArgumentParser:
    """status' and metrics' command line: the first paragraph of the module's doc, and --config."""
    parser = argparse.ArgumentParser(prog=f"borg-gate {command}", description=doc.split("\n\n")[0])
    parser.add_argument("--config", metavar="FILE", help="config file (default: $BORG_GATE_CONFIG, else the default)")
    return parser


def guarded(command: str, work: Callable[[], None]) -> int:
    """Run an admin command's work; a broken config or unreadable state dir is one stderr line and exit 1."""
    try:
        work()
    except (Refusal, OSError) as exc:
        print(f"borg-gate {command}: {printable(str(exc))}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = admin_parser("status", __doc__ or "")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = parser.parse_args(argv)

    def work() -> None:
        r = report(load_config(args.config))
        sys.stdout.write(json.dumps(asdict(r), indent=2, ensure_ascii=True) + "\n" if args.json else text(r))

    return guarded("status", work)
