#!/usr/bin/env python3
"""Session budget under storms: the gate against the seed's pgrep wrapper, in the same run.

    .venv/bin/python bench/storm.py [--quick]

Prints, each with what it is compared with:
  1. admission latency: a recorder's last record before exit -> the next gate's session.started
     (just before exec), with a limit of 1 and a queue of waiters (p50, p99);
  2. fairness in a staggered-arrival storm: share of grants (made while others waited) that went
     to the longest waiter, against the share a random pick would give;
  3. CPU of 200 waiters over a window, per minute and as a share of one core; how fast they all
     leave once their clients hang up;
  4. time from spawn to exec with 1 slot vs 64 slots (63 held), gate against wrapper;
  5. time from spawn to exec with the host's processes as they are vs ~2,000, gate against wrapper;
  6. the same storm through the gate and through the wrapper: most running at once, limit
     violations, connections served / refused;
  7. real borg clients (1.2.4, BORG_RSH playing sshd) in parallel against gate and wrapper:
     refusals and how many refusal lines the client showed.
Absolute times depend on the machine and its load; read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from borg_gate.conn import slots  # noqa: E402
from borg_gate.conn.policy import Budget  # noqa: E402
from tests.slots_support import Site, hold_slot  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

WRAPPER = ROOT / "bench" / "pgrep_wrapper"
FAKESSH = ROOT / "bench" / "storm_fakessh"
GATE = ROOT / ".venv" / "bin" / "borg-gate"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def hold_slots(site: Site, names: list[str]) -> list[int]:
    return [hold_slot(site, name) for name in names]


def queue_up(site: Site, n: int, clients: int, env: Mapping[str, str]) -> None:
    for i in range(n):
        site.spawn(f"c{i % clients}", env=env)
        wait_for(lambda i=i: site.usage()[0].waiters == i + 1, "the queue to grow", timeout=120)  # type: ignore[misc]


# 1 ------------------------------------------------------------------------------------------------


def admission_latency(base: Path, n: int) -> None:
    site = Site(base / "latency", max_sessions=1, per_client=n)
    (fd,) = hold_slots(site, ["slot.host.0"])
    queue_up(site, n, 4, {"LC_SLOTS_SECONDS": "0.05"})
    os.close(fd)
    site.wait_all()
    ends = sorted(t for what, _, _, t, _ in site.records() if what == "end")
    starts = sorted(ts(e["ts"]) for e in site.events("session.started"))
    gaps = [s - e for e, s in zip(ends, starts[1:], strict=False)]
    print(f"1. admission latency, slot freed -> next exec ({len(gaps)} hand-overs, limit 1, {n} queued)")
    print(f"   p50 {ms(pct(gaps, 0.5))}   p99 {ms(pct(gaps, 0.99))}   max {ms(max(gaps))}")
    fresh = statistics.median(time_to_exec_gate(Site(base / "latency-fresh", max_sessions=1, per_client=1), 5))
    print(
        f"   a new connection takes {ms(fresh)} from spawn to exec: a waiter is in {pct(gaps, 0.5) / fresh:.3f}x that"
    )


# 2 ------------------------------------------------------------------------------------------------


def fairness(base: Path, n: int) -> None:
    site = Site(base / "fair", max_sessions=2, per_client=n)
    for i in range(n):
        site.spawn(f"c{i % 8}", env={"LC_SLOTS_SECONDS": "0.1"})
        time.sleep(0.03)  # staggered arrivals
    site.wait_all()
    # Every connection's place in the host queue, from its session.started event.
    host = [e["queues"]["host"] for e in site.events("session.started")]
    contested = to_longest = 0
    random_share = 0.0
    for x in host:
        waiting = [y for y in host if y is not x and y["joined"] < x["granted"] < y["granted"]]
        if not waiting:
            continue
        contested += 1
        random_share += 1 / (len(waiting) + 1)
        to_longest += all(x["ticket"] < y["ticket"] for y in waiting)
    share = to_longest / contested if contested else float("nan")
    rnd = random_share / contested if contested else float("nan")
    print(f"2. fairness, {n} connections arriving 30 ms apart, limit 2: {contested} grants made while others waited")
    print(f"   to the longest waiter: {share:.1%}   a random pick would give {rnd:.1%}   ratio {share / rnd:.2f}x")


# 3 ------------------------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def waiters_cpu(base: Path, n: int, window: float) -> None:
    site = Site(base / "cpu", max_sessions=1, per_client=n)
    (fd,) = hold_slots(site, ["slot.host.0"])
    for i in range(n):
        site.spawn(f"c{i % 10}", env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: site.usage()[0].waiters == n, f"{n} waiters", timeout=300)
    time.sleep(1)  # let the last ones finish announcing
    pids = [g.pid for g in site.gates]
    before = sum(cpu_ns(p) for p in pids)
    time.sleep(window)
    used = (sum(cpu_ns(p) for p in pids) - before) / 1e9
    rss = sum(rss_kb(p) for p in pids) / 1024
    print(f"3. {n} waiters for {window:.0f} s: {used * 1000:.1f} ms of CPU in all")
    print(
        f"   = {used * 60 / window * 1000:.1f} ms CPU per minute, {used / window:.4%} of one core "
        f"({used / window / 0.01:.3f}x the 1% allowance); RSS {rss:.0f} MiB in all"
    )
    t0 = time.monotonic()
    for g in site.gates:
        g.hang_up()
    codes = site.wait_all()
    print(
        f"   all {n} clients hang up: every waiter gone after {time.monotonic() - t0:.2f} s "
        f"(exit 214: {codes.count(214)}/{n})"
    )
    os.close(fd)


# 4, 5 ---------------------------------------------------------------------------------------------


def time_to_exec_gate(site: Site, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.time()
        gate = site.spawn("solo", env={"LC_SLOTS_SECONDS": "0"})
        gate.wait(60)
        out.append(site.started_at(gate.pid) - t0)
    return out


def time_to_exec_wrapper(site: Site, runs: int, limit: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.time()
        proc = wrapper(site, "solo", limit)
        proc.wait(60)
        out.append(site.started_at(proc.pid) - t0)
    return out


def wrapper(site: Site, client: str, limit: int) -> subprocess.Popen[bytes]:
    env = {
        "PATH": "/usr/bin:/bin",
        "LIMIT": str(limit),
        "BORG": str(site.recorder),
        "REPOS": str(site.root / "repos"),
        "CLIENT": client,
        "LC_SLOTS_SECONDS": "0",
    }
    return subprocess.Popen(
        [str(WRAPPER)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


def slots_1_vs_64(base: Path, runs: int) -> None:
    one = Site(base / "one", max_sessions=1, per_client=1)
    many = Site(base / "many", max_sessions=64, per_client=1)
    fds = hold_slots(many, [f"slot.host.{i}" for i in range(63)])
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):  # interleaved, so the host's load drifts over both alike
        a += time_to_exec_gate(one, 1)
        b += time_to_exec_gate(many, 1)
    for fd in fds:
        os.close(fd)
    w = statistics.median(time_to_exec_wrapper(Site(base / "w1"), runs, 1000))
    ma, mb = statistics.median(a), statistics.median(b)
    print(
        f"4. spawn -> exec, median of {runs}: gate with 1 slot {ms(ma)}, "
        f"with 64 slots (63 held) {ms(mb)}: {mb / ma:.2f}x"
    )
    print(f"   the wrapper, for reference: {ms(w)} (gate/wrapper {ma / w:.2f}x: the gate is Python, the wrapper sh)")


def mechanism(state_dir: Path, runs: int) -> tuple[float, float]:
    """Median cost of the budget check alone: slots.acquire + release in this process, vs `pgrep borg | wc -l`."""
    budget = Budget(max_sessions=8, max_sessions_per_client=8, wait=600)
    session = slots.Session("solo", "bench", "/usr/bin/borg")
    ours, theirs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        held = slots.acquire(str(state_dir), "solo", budget, session, say=print, emit=lambda *a, **k: None)
        ours.append(time.perf_counter() - t0)
        for fd in held.fds:
            os.close(fd)
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", "pgrep borg | wc -l"], capture_output=True, check=True)
        theirs.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(theirs)


def host_processes(base: Path, runs: int, target: int) -> None:
    site_g, site_w = Site(base / "pg", max_sessions=8, per_client=8), Site(base / "pw")
    few = sum(p.isdigit() for p in os.listdir("/proc"))
    g_few = statistics.median(time_to_exec_gate(site_g, runs))
    w_few = statistics.median(time_to_exec_wrapper(site_w, runs, 1000))
    m_few = mechanism(base / "mech", runs * 4)
    sleepers = [
        subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for _ in range(max(0, target - few))
    ]
    try:
        many = sum(p.isdigit() for p in os.listdir("/proc"))
        g_many = statistics.median(time_to_exec_gate(site_g, runs))
        w_many = statistics.median(time_to_exec_wrapper(site_w, runs, 1000))
        m_many = mechanism(base / "mech", runs * 4)
    finally:
        for p in sleepers:
            p.kill()
        for p in sleepers:
            p.wait()
    print(f"5. with {few} vs {many} processes on the host, medians")
    print(f"   gate spawn -> exec      {ms(g_few)} -> {ms(g_many)}: {g_many / g_few:.2f}x")
    print(f"   wrapper spawn -> exec   {ms(w_few)} -> {ms(w_many)}: {w_many / w_few:.2f}x")
    print(f"   slots.acquire alone     {ms(m_few[0])} -> {ms(m_many[0])}: {m_many[0] / m_few[0]:.2f}x")
    print(f"   pgrep borg | wc -l      {ms(m_few[1])} -> {ms(m_many[1])}: {m_many[1] / m_few[1]:.2f}x")


# 6 ------------------------------------------------------------------------------------------------


def violations(site: Site, limit: int) -> tuple[int, int]:
    """(most running at once, starts that made it more than the limit), from the recorders' own log."""
    running = most = over = 0
    for what, *_ in site.records():
        running += 1 if what == "start" else -1
        most = max(most, running)
        over += what == "start" and running > limit
    return most, over


SPAWN_WRAPPERS = """
import json, subprocess, sys
n, limit, wrapper, borg, repos = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
procs = []
for i in range(n):
    env = {"PATH": "/usr/bin:/bin", "LIMIT": limit, "BORG": borg, "REPOS": repos, "CLIENT": f"c{i % 6}",
           "LC_SLOTS_SECONDS": "0.2"}
    procs.append(subprocess.Popen([wrapper], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env))
print(json.dumps([p.wait() for p in procs]))
"""


def wrapper_storm(site: Site, n: int, limit: int, own_namespace: bool) -> list[int]:
    """n wrappers at once; in their own PID namespace, pgrep sees only their own borg processes."""
    prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--"] if own_namespace else []
    args = [str(n), str(limit), str(WRAPPER), str(site.recorder), str(site.root / "repos")]
    out = subprocess.run([*prefix, sys.executable, "-c", SPAWN_WRAPPERS, *args], capture_output=True, check=True)
    codes: list[int] = json.loads(out.stdout)
    return codes


def storm_side_by_side(base: Path, n: int, limit: int) -> None:
    gate = Site(base / "storm-gate", max_sessions=limit, per_client=n)
    for i in range(n):
        gate.spawn(f"c{i % 6}", env={"LC_SLOTS_SECONDS": "0.2"})
    rows = [("gate", gate, gate.wait_all(), 213)]
    for label, own in (("wrapper, own PID namespace", True), ("wrapper, this host as is", False)):
        site = Site(base / f"storm-wrapper-{own}")
        rows.append((label, site, wrapper_storm(site, n, limit, own), 5))
    print(f"6. {n} connections at once from 6 clients, limit {limit}, each session 0.2 s")
    print(f"   {'':28} {'most at once':>12} {'starts over limit':>18} {'served':>7} {'refused':>8}")
    for label, site, codes, refusal in rows:
        most, over = violations(site, limit)
        print(f"   {label:28} {most:>12} {over:>18} {codes.count(0):>7} {codes.count(refusal):>8}")


# 7 ------------------------------------------------------------------------------------------------


def real_clients(base: Path, n: int, limit: int) -> None:
    root = base / "real"
    (root / "home").mkdir(parents=True)
    repos = root / "repos"
    rows = []
    for label, wait in (("gate, wait 600", 600), ("gate, wait 0", 0), ("wrapper", None)):
        if wait is None:
            forced = str(WRAPPER)
            extra = {"LIMIT": str(limit), "BORG": "/usr/bin/borg", "REPOS": str(repos)}
        else:
            site = Site(root / f"w{wait}", max_sessions=limit, per_client=n, wait=wait)
            site.write_config(
                gate={"state_dir": str(root / "state"), "log_file": str(root / "gate.jsonl")},
                repos={"root": f"{repos}/{{client}}"},
                borg__binaries={"borg": {"path": "/usr/bin/borg", "version": "1.2.4"}},
            )
            forced = f"{GATE} --config {site.config_path}"
            extra = {}
        procs = []
        for i in range(n):
            client = f"c{i}"
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(root / "home"),
                "BORG_RSH": str(FAKESSH),
                "STORM_FORCED": f"{forced} --client {client}" if wait is not None else forced,
                "CLIENT": client,
                **extra,
            }
            procs.append(
                subprocess.Popen(
                    ["borg", "list", f"ssh://storm{repos}/{client}/none"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        served = refused = shown = 0
        for p in procs:
            _, err = p.communicate(timeout=300)
            text = err.decode(errors="replace")
            if "does not exist" in text:
                served += 1
            else:
                refused += 1
                shown += "Remote: borg-gate: " in text or "Remote: Too many borg" in text
        rows.append((label, served, refused, shown))
    print(f"7. {n} real borg 1.2.4 clients at once (borg list; BORG_RSH plays sshd), limit {limit}")
    print(f"   {'':16} {'served':>7} {'refused':>8} {'refusal shown':>14}")
    for label, served, refused, shown in rows:
        print(f"   {label:16} {served:>7} {refused:>8} {shown:>9}/{refused}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller storms (a smoke run)")
    parser.add_argument("--only", metavar="N,M", help="run only these sections (1-7)")
    args = parser.parse_args()
    q = args.quick
    only = {int(n) for n in args.only.split(",")} if args.only else set(range(1, 8))
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        base = Path(tmp)
        print(f"bench/storm on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; pid {os.getpid()}")
        sections = {
            1: lambda: admission_latency(base, 10 if q else 40),
            2: lambda: fairness(base, 16 if q else 48),
            3: lambda: waiters_cpu(base, 20 if q else 200, 5 if q else 30),
            4: lambda: slots_1_vs_64(base, 5 if q else 15),
            5: lambda: host_processes(base, 5 if q else 15, 300 if q else 2000),
            6: lambda: storm_side_by_side(base, 20 if q else 60, 4),
            7: lambda: real_clients(base, 8 if q else 20, 3),
        }
        for n in sorted(only):
            sections[n]()
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
