#!/usr/bin/env python3
"""What observability costs a connection: the gate's spawn-to-exec with logging off, on, and with syslog too.

    .venv/bin/python bench/logging_cost.py [--runs N]

Prints, all measured in this run on this machine:
  1. spawn -> exit of a real gate exec'ing /bin/true (so: time to exec), median and p90 over N
     interleaved rounds, for: no log sinks; the JSON file; the file and syslog (a datagram
     socket this script drains). The event counters in the state dir run in all three. Ratios
     against "no log sinks" (of medians and of minima) and the median of per-round differences.
  2. per-event cost inside one process: render only, file append, counters update, syslog
     datagram, all together (microseconds, median of many).
  3. import cost of what the renderer could use (python -X importtime, cumulative, median):
     json and _socket (used) against structlog and socket (not used), and whether a connection
     imports any of structlog / psutil / filelock.
Absolute times depend on the machine and its load; read the ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from borg_gate.base import connection, counters, events  # noqa: E402

VENV_PY = str(ROOT / ".venv" / "bin" / "python")
SYSTEM_PY = "/usr/bin/python3"
# The same entry for every variant; only the syslog socket path is set first (no /dev/log is needed).
ENTRY = (
    "import sys\nfrom borg_gate.base import events\nfrom borg_gate.conn import gate\n"
    "events.SYSLOG_SOCKET = sys.argv[1]\ngate.main(sys.argv[2:])\n"
)
HEAVY = ("structlog", "psutil", "filelock")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def write_config(base: Path, name: str, log_file: str, syslog: bool) -> Path:
    true = base / "bin" / "borg"
    if not true.exists():
        true.parent.mkdir(parents=True)
        true.write_bytes(Path("/bin/true").read_bytes())
        true.chmod(0o755)
    state = base / f"state-{name}"
    state.mkdir()
    cfg = base / f"{name}.toml"
    cfg.write_text(
        "[gate]\n"
        f'state_dir = "{state}"\nlog_file = "{log_file}"\nsyslog = {"true" if syslog else "false"}\n'
        "[limits]\nmax_sessions = 4\nwait = 0\n"
        f'[repos]\nroot = "{base}/repos/{{client}}"\n'
        f'[borg]\ndefault = "borg"\n[borg.binaries]\nborg = {{ path = "{true}", version = "1.2.4" }}\n'
    )
    return cfg


class Drain(threading.Thread):
    """A syslog stand-in that reads every datagram, so no send is dropped for a full queue."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.count = 0

    def run(self) -> None:
        while True:
            try:
                self.sock.recv(1 << 16)
            except OSError:
                return
            self.count += 1


def one_run(cfg: Path, sock: str) -> float:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
        "SSH_ORIGINAL_COMMAND": "borg serve --info",
    }
    t0 = time.perf_counter()
    rc = subprocess.run(
        [VENV_PY, "-c", ENTRY, sock, "--config", str(cfg), "--client", "bench"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if rc.returncode != 0:
        raise SystemExit(f"gate failed with {rc.returncode} for {cfg}: {rc.stderr.decode(errors='replace')}")
    return elapsed


def gate_runs(base: Path, runs: int) -> None:
    sock = str(base / "syslog.sock")
    drain = Drain(sock)
    drain.start()
    log = str(base / "gate.jsonl")
    variants = {
        "no log sinks": write_config(base, "off", "", False),
        "JSON file": write_config(base, "file", log, False),
        "JSON file + syslog": write_config(base, "both", log, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for cfg in variants.values():  # warm the page cache and the version cache
        one_run(cfg, sock)
    for _ in range(runs):
        for name, cfg in variants.items():
            times[name].append(one_run(cfg, sock))
    off = times["no log sinks"]
    base_median, base_min = statistics.median(off), min(off)
    print(f"1. gate spawn -> exec of /bin/true, {runs} interleaved rounds (python: {VENV_PY})")
    for name, values in times.items():
        med = statistics.median(values)
        paired = statistics.median(v - o for v, o in zip(values, off, strict=True))  # same round: same load
        print(
            f"   {name:<20} median {ms(med)}  p90 {ms(pct(values, 0.9))}  min {ms(min(values))}  "
            f"ratio of medians {med / base_median:.3f}, of minima {min(values) / base_min:.3f}, "
            f"paired difference {paired * 1000:+.2f} ms"
        )
    lines = Path(log).read_text().count("\n")
    print(f"   log lines written: {lines}, datagrams received: {drain.count} (expected {runs + 1} each)")
    drain.sock.close()


def per_event(base: Path, n: int) -> None:
    conn = connection.current({"SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22", "SSH_ORIGINAL_COMMAND": "borg serve"})
    state = base / "micro-state"
    state.mkdir()
    sock = str(base / "micro.sock")
    drain = Drain(sock)
    drain.start()
    events.SYSLOG_SOCKET = sock
    fields = {"waited": 0.5, "slots": ["slot.client.bench.0", "slot.host.0"], "argv": ["/usr/bin/borg", "serve"]}

    def timed(fn: object) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    def log(**kw: object) -> events.EventLog:
        el = events.EventLog(conn, **kw)  # type: ignore[arg-type]
        el.bind(client="bench", binary="/usr/bin/borg", restrictions=["--restrict-to-path=/srv/bench"])
        return el

    render = log(log_file=None)
    file_only = log(log_file=str(base / "micro.jsonl"))
    counters_only = log(log_file=None, state_dir=str(state))
    syslog_only = log(log_file=None, syslog=True)
    everything = log(log_file=str(base / "micro.jsonl"), syslog=True, state_dir=str(state))
    print(f"2. per event, median of {n} (microseconds)")
    print(f"   render only          {timed(lambda: events.render(render.record('session.started', fields))):8.1f}")
    print(f"   + file append        {timed(lambda: file_only.emit('session.started', **fields)):8.1f}")
    print(f"   + counters (flock)   {timed(lambda: counters_only.emit('session.started', **fields)):8.1f}")
    print(f"   + syslog datagram    {timed(lambda: syslog_only.emit('session.started', **fields)):8.1f}")
    print(f"   all sinks            {timed(lambda: everything.emit('session.started', **fields)):8.1f}")
    size = (state / f"{counters.PREFIX}{os.getuid()}.json").stat().st_size
    print(f"   (counters file: {size} bytes; it grows with the number of clients)")
    drain.sock.close()


def import_cost(python: str, module: str, runs: int) -> float | None:
    samples = []
    for _ in range(runs):
        out = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        for line in out.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                samples.append(int(parts[1]) / 1000)
    return statistics.median(samples) if samples else None


def imports(runs: int) -> None:
    print(f"3. import cost, cumulative, median of {runs} (ms)")
    for module in ("json", "_socket", "fcntl", "socket", "structlog", "filelock", "psutil"):
        cells = []
        for python in (SYSTEM_PY, VENV_PY):
            cost = import_cost(python, module, runs)
            cells.append("   n/a" if cost is None else f"{cost:6.1f}")
        print(f"   {module:<10} {SYSTEM_PY}: {cells[0]}   .venv: {cells[1]}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = write_config(base, "imp", str(base / "gate.jsonl"), True)
        env = {
            "PATH": "/usr/bin:/bin",
            "SSH_ORIGINAL_COMMAND": "borg serve",
            "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22",
        }
        out = subprocess.run(
            [VENV_PY, "-X", "importtime", "-c", ENTRY, str(base / "none.sock"), "--config", str(cfg), "--client", "x"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        names = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
        print(
            f"   a connection (file + syslog on) imports {len(names)} modules; of {', '.join(HEAVY)}: {heavy or 'none'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="interleaved gate rounds (default 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gate_runs(Path(tmp), args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        per_event(Path(tmp), 2000)
    imports(7)


if __name__ == "__main__":
    main()
