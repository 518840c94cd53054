"""``borg-gate hold`` and ``release``: root places, lifts and drains maintenance holds (conn.holds reads them)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Final

from borg_gate.admin import slotstatus
from borg_gate.base import config, connection, jsontext, patterns, statedir
from borg_gate.base.config import Config
from borg_gate.base.errors import Refusal
from borg_gate.base.events import EventLog
from borg_gate.conn.holds import file_name, read

MAX_REASON: Final = 200


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
    lines = []
    for usage in slotstatus.snapshot(state_dir, *cfg_limits):
        if (client is None and usage.kind == "host") or (usage.kind == "client" and usage.name == client):
            for h in usage.holders:
                if h.state != "queued":
                    lines.append(f"pid {h.pid or '?'} client {h.client or '?'} {h.slot}")
    return lines


def main(argv: list[str], *, release: bool = False) -> int:
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
