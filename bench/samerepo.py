#!/usr/bin/env python3
"""Eight hosts, one repository: plain borg serve against the gate's repository queue.

    .venv/bin/python bench/samerepo.py [--side baseline|gate|both] [--rounds N] [--clients N]
    .venv/bin/python bench/samerepo.py trace

Needs root (a private sshd on 127.0.0.1 and the e2e test users, tests/e2e/harness.py).

Counts: N borg clients, each its own host (own key, own BORG_BASE_DIR), ``borg create`` into
ONE repository at once, with borg's default lock wait (no --lock-wait), through
  - baseline: a forced plain ``borg serve --restrict-to-repository REPO`` per key;
  - gate: the gate with a ``--restrict-to-repository REPO`` key (the repository queue);
first with Debian's borg 1.x over ssh://, then with 2.0.0b22 over rest:// (built by
tests/borgs/build; its forced baseline is ``borg serve --rest --restrict-to-repository REPO``:
borg pins the serve mode from the forced command, not from the client), and once more with
2.0.0b22 where the last client runs ``borg check`` (exclusive lock) among the creates (shared
locks in borg 2). Prints successes, failures and the error lines, baseline and gate side by side.

trace: runs a 2.0.0b22 client's commands (and borg 1.x's) through bench/connlog, a forced
command that logs each ssh connection's start and end, and prints per command how many
connections it made and how many were open at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import busy, harness  # noqa: E402
from tests.e2e.busy import Client, Outcome  # noqa: E402
from tests.e2e.harness import Site  # noqa: E402

CONNLOG = ROOT / "bench" / "connlog"


@contextlib.contextmanager
def host() -> Iterator[Site]:
    harness.require_root()
    for user in harness.USERS:
        harness.ensure_user(user)
    with harness.e2e_base() as base:
        sshd = harness.Sshd(base / "sshd")
        sshd.start()
        try:
            site = Site(sshd=sshd, gate=harness.install_gate(harness.CACHE), root=base / "site")
            site.setup()
            yield site
        finally:
            sshd.stop()


def repo_path(site: Site, name: str) -> Path:
    return site.repo_dir("shared", owner=busy.USER) / name


# ------------------------------------------------------------------------------------------ counts


def clients(site: Site, n: int, borg: str, rest: bool) -> list[Client]:
    return [Client(site, site.key(f"host{i}"), borg, rest) for i in range(n)]


def round_of(site: Site, side: str, family: str, borg: str, n: int, number: int, src: Path) -> tuple[Outcome, str]:
    """One round's outcome, and a note naming failed creates whose archive is in the repository."""
    rest = family.startswith("rest")
    mixed = family.endswith("mixed")
    repo = repo_path(site, f"{family}-{side}-{number}")
    hosts = clients(site, n, borg, rest)
    admin = Client(site, site.key("admin"), borg, rest)
    if side == "baseline":
        busy.serve_plainly(site, [admin, *hosts], repo)
    else:
        busy.serve_through_gate(site, [admin, *hosts], repo)
    admin.init(repo).check()
    outcome = busy.creates_and_a_check(hosts, repo, src) if mixed else busy.same_repo_creates(hosts, repo, src)
    made = {f"host{i}" for i, r in enumerate(outcome.results[: len(hosts) - mixed]) if r.returncode == 0}
    archives = set(admin.names(repo))
    assert made <= archives, (archives, outcome.summary())  # every success is in the repository
    late = sorted(archives - made)
    return outcome, f"\n    in the repository although their create failed: {', '.join(late)}" if late else ""


def counts(site: Site, sides: list[str], rounds: int, n: int) -> None:
    src = busy.source(site.root / "src")
    borg1 = harness.BORG1
    families = {
        "ssh": (borg1, f"borg {busy.borg_version(borg1)} over ssh://"),
        "rest": (busy.built_borg(busy.B22), f"borg {busy.B22} over rest://"),
        "rest-mixed": (busy.built_borg(busy.B22), f"borg {busy.B22} over rest://, the last client runs check"),
    }
    for family, (borg, label) in families.items():
        print(f"\n{n} clients, one repository, no --lock-wait: {label}")
        per_side: dict[str, list[Outcome]] = {}
        for side in sides:
            per_side[side] = []
            for number in range(rounds):
                began = time.monotonic()
                outcome, note = round_of(site, side, family, borg, n, number, src)
                took = time.monotonic() - began
                per_side[side].append(outcome)
                print(
                    f"  {side:8} round {number + 1} ({took:.1f} s with init and list): {outcome.summary()}{note}",
                    flush=True,
                )
        totals = "   ".join(
            f"{side}: {sum(o.ok for o in got)}/{sum(len(o.results) for o in got)} succeeded"
            for side, got in per_side.items()
        )
        print(f"  total    {totals}")


# ------------------------------------------------------------------------------------------- trace


def connections(log: Path, since: float) -> list[dict[str, object]]:
    starts: dict[int, dict[str, object]] = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r["t"] < since:
            continue
        if r["event"] == "start":
            starts[r["pid"]] = {"start": r["t"], "command": r["command"]}
        elif r["pid"] in starts:
            starts[r["pid"]].update(end=r["t"], rc=r["rc"])
    return sorted(starts.values(), key=lambda c: float(str(c["start"])))


def most_at_once(conns: list[dict[str, object]]) -> int:
    edges = sorted([(float(str(c["start"])), 1) for c in conns] + [(float(str(c["end"])), -1) for c in conns])
    now = top = 0
    for _, step in edges:
        now += step
        top = max(top, now)
    return top


def traced(site: Site, log: Path, client: Client, label: str, args: list[str]) -> None:
    since = time.time()
    result = client.run(args)
    conns = connections(log, since)
    print(f"\n{label}: rc {result.returncode}, {len(conns)} connections, at most {most_at_once(conns)} at once")
    for c in conns:
        start, end = float(str(c["start"])) - since, float(str(c.get("end", since))) - since
        print(f"    +{start:6.2f}s .. +{end:6.2f}s  rc {c.get('rc')}  {c['command']}")
    if result.returncode != 0:
        print("    client: " + busy.error_line(result))


def trace(site: Site) -> None:
    b22 = busy.built_borg(busy.B22)
    log = site.root / "connlog.jsonl"
    log.touch()
    os.chown(log, *harness.uid_gid(busy.USER))
    where = site.repo_dir("shared", owner=busy.USER)
    src = harness.make_tree(site.root / "src")
    key = site.key("tracer")

    def forced(borg: str) -> None:
        argv = [harness.SYSTEM_PYTHON, str(CONNLOG), str(log), borg, f"--restrict-to-path={where}"]
        site.sshd.write_keys(busy.USER, [busy.forced_line(key, argv)])

    forced(harness.BORG1)
    old = Client(site, key, harness.BORG1)
    v1 = old.url(where / "v1")
    print(f"borg {busy.borg_version(harness.BORG1)} (ssh://), forced bench/connlog around borg serve:")
    traced(site, log, old, "init", ["init", "--encryption=none", v1])
    traced(site, log, old, "create", ["create", f"{v1}::a1", str(src)])
    old.create(where / "v1", "a2", src).check()
    traced(site, log, old, "list", ["list", v1])
    traced(site, log, old, "check", ["check", v1])
    traced(site, log, old, "prune", ["prune", "--keep-last=1", v1])
    traced(site, log, old, "delete", ["delete", f"{v1}::a2"])
    traced(site, log, old, "compact", ["compact", v1])
    old.create(where / "v1", "from-1", src).check()

    forced(b22)
    new = Client(site, key, b22, rest=True)
    r1, r2, r3 = (new.url(where / n) for n in ("r1", "r2", "r3"))
    legacy = f"ssh://{busy.USER}@127.0.0.1:{site.sshd.port}/{where / 'v1'}"  # b22: "//" for an absolute path
    print(f"\nborg {busy.B22} (rest://, and ssh:// for the borg 1 repository), forced bench/connlog:")
    traced(site, log, new, "repo-create", ["-r", r1, "repo-create", "--encryption=none"])
    traced(site, log, new, "create", ["-r", r1, "create", "a1", str(src)])
    new.run(["-r", r1, "create", "a2", str(src)]).check()
    traced(site, log, new, "repo-list", ["-r", r1, "repo-list"])
    traced(site, log, new, "list", ["-r", r1, "list", "a1"])
    traced(site, log, new, "check", ["-r", r1, "check"])
    traced(site, log, new, "prune", ["-r", r1, "prune", "--keep=1"])
    traced(site, log, new, "delete", ["-r", r1, "delete", "a2"])
    traced(site, log, new, "compact", ["-r", r1, "compact"])
    traced(
        site, log, new, "repo-create --other-repo", ["-r", r2, "repo-create", "--encryption=none", "--other-repo", r1]
    )
    traced(site, log, new, "transfer --other-repo", ["-r", r2, "transfer", "--other-repo", r1])
    traced(site, log, new, "transfer --other-repo (same repository)", ["-r", r1, "transfer", "--other-repo", r1])
    traced(
        site,
        log,
        new,
        "repo-create --other-repo --from-borg1",
        ["-r", r3, "repo-create", "--encryption=none", "--other-repo", legacy, "--from-borg1"],
    )
    traced(site, log, new, "transfer --from-borg1", ["-r", r3, "transfer", "--other-repo", legacy, "--from-borg1"])
    traced(site, log, new, "repo-delete", ["-r", r2, "repo-delete"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=["counts", "trace"], default="counts")
    parser.add_argument("--side", choices=["baseline", "gate", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with host() as site:
        print(f"bench/samerepo on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        if args.what == "trace":
            trace(site)
        else:
            sides = ["baseline", "gate"] if args.side == "both" else [args.side]
            counts(site, sides, args.rounds, args.clients)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
