"""Maintenance holds: root stops new sessions of the host or of one client, and may drain them.

A hold is a file in the state dir, ``hold.host`` or ``hold.client.<name>``, holding its reason
and since when as JSON. Only root's count: the gate believes a hold file only when it is a
regular file owned by root with one name and writable by nobody else, so a member of the
group cannot hold the host (her file under that name is ignored, and root's ``hold`` replaces
it). A hold lasts until ``borg-gate release`` or the next boot (the state dir is on tmpfs).

What a held connection does is the queue's business (slots): it waits at the head of its
queue as if the budget were full, re-reading the hold every HOLD_RECHECK seconds, so a
release lets the queue go on, in arrival order, within a second. ``active`` is all the
connection path needs; the commands below it are admin code, imported only when asked for.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from borg_gate import jsontext, statedir

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    import argparse
    from typing import Any, Final

    from borg_gate.config import Config
    from borg_gate.events import EventLog

HOLD_RECHECK: Final = 0.25
MAX_REASON: Final = 200
_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def file_name(client: str | None) -> str:
    return "hold.host" if client is None else f"hold.client.{client}"


def read(dir_fd: int, name: str) -> dict[str, Any] | None:
    """The hold recorded under ``name``, if root placed it; None otherwise."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1 and not st.st_mode & 0o022):
            return None
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        hold = jsontext.loads(data)
    except ValueError:
        hold = None
    # root's file is the hold, whatever became of its content
    return hold if isinstance(hold, dict) else {"reason": "maintenance", "since": st.st_mtime}


def active(dir_fd: int, client: str | None) -> str | None:
    """The reason of root's hold on ``client`` (None: on the host), or None when there is none."""
    hold = read(dir_fd, file_name(client))
    if hold is None:
        return None
    reason = hold.get("reason")
    return reason if isinstance(reason, str) and reason else "maintenance"


def any_active(dir_fd: int, client: str) -> str | None:
    """The reason new sessions of ``client`` must wait (a host hold first), or None."""
    return active(dir_fd, None) or active(dir_fd, client)


# --- admin: hold, release, drain -------------------------------------------------------------


def clean(reason: str) -> str:
    """One printable line of at most MAX_REASON characters: it reaches every client and the log."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in reason).split())
    return text[:MAX_REASON] or "maintenance"


def place(dir_fd: int, client: str | None, reason: str) -> dict[str, Any]:
    """Write the hold atomically (a temp name, then rename over whatever a member put there)."""
    hold = {"scope": "host" if client is None else f"client:{client}", "reason": clean(reason), "since": time.time()}
    # 0644 whatever the state dir's umask or setgid bit: a member must not rewrite root's hold
    statedir.replace_file(dir_fd, file_name(client), (jsontext.dumps(hold) + "\n").encode(), 0o644)
    return hold


def lift(dir_fd: int, client: str | None) -> dict[str, Any] | None:
    """Remove the hold; what it was, or None when there was none of root's."""
    hold = read(dir_fd, file_name(client))
    try:
        os.unlink(file_name(client), dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    return hold


def all_holds(dir_fd: int) -> list[dict[str, Any]]:
    """Every hold root placed, for status and metrics: scope, reason, since."""
    out = []
    for name in sorted(os.listdir(dir_fd)):
        if name == "hold.host" or name.startswith("hold.client."):
            hold = read(dir_fd, name)
            if hold is not None:
                scope = "host" if name == "hold.host" else "client:" + name.removeprefix("hold.client.")
                since = hold.get("since")
                out.append(
                    {
                        "scope": scope,
                        "reason": clean(str(hold.get("reason", "maintenance"))),
                        "since": float(since) if isinstance(since, int | float) else None,
                    }
                )
    return out


def running(state_dir: str, client: str | None, cfg_limits: tuple[int, int]) -> list[str]:
    """What still runs in the scope: one line per session (pid, client, since)."""
    from borg_gate import slotstatus

    lines = []
    for usage in slotstatus.snapshot(state_dir, *cfg_limits):
        if (client is None and usage.kind == "host") or (usage.kind == "client" and usage.name == client):
            for h in usage.holders:
                if h.state != "queued":
                    lines.append(f"pid {h.pid or '?'} client {h.client or '?'} {h.slot}")
    return lines


def main(argv: list[str], *, release: bool = False) -> int:
    import argparse

    from borg_gate import config, statedir
    from borg_gate.errors import Refusal

    command = "release" if release else "hold"
    p = argparse.ArgumentParser(
        prog=f"borg-gate {command}",
        description="Release a maintenance hold." if release else "Stop new sessions of the host or one client.",
    )
    p.add_argument("--client", metavar="NAME", help="only this client (default: the whole host)")
    p.add_argument("--config", metavar="FILE", help="config file (default: /etc/borg-gate/config.toml)")
    if not release:
        p.add_argument("--reason", metavar="TEXT", default="maintenance", help="shown to every waiting client")
        p.add_argument("--drain", action="store_true", help="then wait until no session in the scope runs")
        p.add_argument("--timeout", metavar="SECONDS", type=float, default=3600.0, help="how long --drain waits")
    ns = p.parse_args(argv)
    if os.geteuid() != 0:
        print(f"borg-gate {command}: only root's holds count: run it as root", file=sys.stderr)
        return 2
    from borg_gate import patterns

    if ns.client is not None and not patterns.client_name(ns.client):
        print(f"borg-gate {command}: {ns.client!r} is not a client name", file=sys.stderr)
        return 2
    try:
        path, required = config.config_path(ns.config, os.environ)
        cfg = config.load_config(path, required)
        dir_fd = statedir.open_dir(cfg.state_dir)
    except Refusal as exc:
        print(f"borg-gate {command}: {exc.reason}", file=sys.stderr)
        return 2
    from borg_gate import connection
    from borg_gate.events import EventLog

    log = EventLog(connection.current(os.environ), cfg.log_file, syslog=cfg.syslog, state_dir=cfg.state_dir)
    scope = "host" if ns.client is None else f"client {ns.client}"
    try:
        return _run(ns, cfg, dir_fd, log, scope, release=release)
    except OSError as exc:
        print(f"borg-gate {command}: {cfg.state_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    finally:
        os.close(dir_fd)


def _run(ns: argparse.Namespace, cfg: Config, dir_fd: int, log: EventLog, scope: str, *, release: bool) -> int:
    """The command itself, on the open state dir: place or lift the hold, then drain."""
    if release:
        was = lift(dir_fd, ns.client)
        if was is None:
            print(f"no hold on {scope}")
            return 0
        log.emit("hold.released", scope=was.get("scope", scope), reason=was.get("reason"), since=was.get("since"))
        print(f"released {scope}")
        return 0
    hold = place(dir_fd, ns.client, ns.reason)
    log.emit("hold.set", scope=hold["scope"], reason=hold["reason"], drain=ns.drain)
    print(f"holding {scope}: {hold['reason']}")
    if not ns.drain:
        return 0
    deadline = time.monotonic() + ns.timeout
    while True:
        left = running(cfg.state_dir, ns.client, (cfg.max_sessions, cfg.max_sessions_per_client))
        if not left:
            print(f"drained {scope}")
            return 0
        if time.monotonic() >= deadline:
            print(f"not drained after {ns.timeout:g} s; still running:", *left, sep="\n  ")
            return 1
        time.sleep(0.2)
