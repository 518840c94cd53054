"""``borg-gate metrics [--output FILE] [--config FILE]``: Prometheus text exposition.

Meant for node_exporter's textfile collector (run it from cron or a systemd timer with
``--output /var/lib/prometheus/node-exporter/borg-gate.prom``) or any scraper that runs a
command. Gauges come from a read-only slot snapshot; counters from the state dir's counter
files (borg_gate.base.counters), summed over every unix user that ran the gate. ``--output`` is
replaced atomically: a temp file in the same directory, not ending in .prom so the
collector never reads it half written, then a rename.

The repository gauges (last change, size, archives; each client's latest session and last
success) come from ``borg-gate repos`` (borg_gate.admin.repos): one series per repository and
per client. ``--no-repos`` leaves them out, ``--authorized-keys`` searches the keys'
confinements too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from borg_gate.admin import counterfiles, repos, slotstatus
from borg_gate.admin.status import admin_parser, budgets, current_holds, guarded, load_config
from borg_gate.base import counters, statedir
from borg_gate.base.errors import Kind

GAUGES = {
    "borg_gate_sessions_in_use": "Sessions holding a slot of this budget now.",
    "borg_gate_sessions_limit": "Slots in this budget (the configured limit).",
    "borg_gate_waiters": "Connections waiting for a slot of this budget now.",
    "borg_gate_sessions_reserved": "Slots of this budget only --priority keys may take.",
    "borg_gate_sessions_reserved_in_use": "Reserved slots of this budget in use now.",
}


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def exposition(
    usage: Sequence[slotstatus.BudgetUsage],
    values: Mapping[str, float],
    extra: Iterable[str] = (),
    holds: Sequence[Mapping[str, Any]] = (),
) -> str:
    lines: list[str] = []
    table = budgets(usage)
    for name, help_text in GAUGES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for b in table:
            if name.startswith("borg_gate_sessions_reserved") and b.kind != "host":
                continue
            value = {
                "borg_gate_sessions_in_use": b.in_use,
                "borg_gate_sessions_limit": b.limit,
                "borg_gate_sessions_reserved": b.reserved,
                "borg_gate_sessions_reserved_in_use": b.reserved_in_use,
            }.get(name, b.waiters)
            labels = {"budget": "host"} if b.kind == "host" else {"budget": b.kind, b.kind: b.name}
            lines.append(f"{counters.series(name, **labels)} {value}")
    lines += ["# HELP borg_gate_hold A maintenance hold of root's: 1 while it lasts.", "# TYPE borg_gate_hold gauge"]
    lines += [f"{counters.series('borg_gate_hold', scope=str(h['scope']))} 1" for h in holds]
    lines += [
        "# HELP borg_gate_hold_since_timestamp_seconds When the hold was placed.",
        "# TYPE borg_gate_hold_since_timestamp_seconds gauge",
    ]
    lines += [
        f"{counters.series('borg_gate_hold_since_timestamp_seconds', scope=str(h['scope']))} {_value(h['since'])}"
        for h in holds
        if h.get("since") is not None
    ]
    # Fixed label sets start at 0, so a dashboard has a series before the first event.
    totals: dict[str, float] = {counters.series(counters.REFUSALS, reason=k.label): 0.0 for k in Kind}
    totals.update({counters.series(counters.SINK_FAILURES, sink=s): 0.0 for s in ("file", "syslog")})
    totals[counters.CONFIG_ERRORS] = 0.0
    totals.update(values)
    for name, help_text in counters.HELP.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f"{key} {_value(v)}" for key, v in sorted(totals.items()) if counters.family(key) == name]
    lines += extra
    return "\n".join(lines) + "\n"


def write_atomically(path: str, data: str) -> None:
    """Replace the .prom file (statedir.replace_file: its temp name ends in .tmp, never read as .prom)."""
    directory, base = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        statedir.replace_file(dir_fd, base, data.encode("utf-8"), 0o644)  # 0644: node_exporter runs as its own user
    finally:
        os.close(dir_fd)


def main(argv: list[str]) -> int:
    parser = admin_parser("metrics", __doc__ or "")
    parser.add_argument("--output", metavar="FILE", help="replace FILE atomically instead of printing")
    parser.add_argument("--no-repos", action="store_true", help="leave out the repository and client gauges")
    repos.keys_argument(parser)
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = load_config(args.config)
        usage = slotstatus.snapshot(cfg.state_dir, cfg.max_sessions, cfg.max_sessions_per_client, cfg.reserved_sessions)
        # Rebuilt from checked series, never copied (counterfiles): whatever a member's file holds,
        # this text parses, so node_exporter never drops the whole file.
        totals = counterfiles.load(cfg.state_dir, args.authorized_keys)
        extra = list(counterfiles.rejected_lines(totals))
        if not args.no_repos:
            extra += repos.metric_lines(repos.report(cfg, args.authorized_keys, totals))
        text = exposition(usage, totals.values, extra, current_holds(cfg.state_dir))
        if args.output:
            write_atomically(args.output, text)
        else:
            sys.stdout.write(text)

    return guarded("metrics", work)
