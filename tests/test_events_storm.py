"""100 concurrent gates writing one log: every line valid JSON, none lost, none torn; counters exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from borg_gate.admin import counterfiles
from borg_gate.base import counters, events
from tests.recorder import GATE, SSHD_ENV, Host

GATES = 100


def test_hundred_concurrent_gates(tmp_path: Path) -> None:
    host = Host(tmp_path, limits={"max_sessions": 200, "max_sessions_per_client": 200})
    junk = 'ü\n\u2028\x1b\t"\\' * 400  # hostile: newlines, separators, escapes, quotes; ~10 KB of JSON
    procs = []
    for i in range(GATES):
        accepted = i % 2 == 0
        env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": "borg serve" if accepted else f"borg {junk} {i}"}
        procs.append(
            subprocess.Popen(
                [*GATE, "--config", str(host.config_path), "--client", f"c{i % 7}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=tmp_path,
            )
        )
    codes = [p.wait(timeout=300) for p in procs]
    assert codes.count(0) == GATES // 2 and codes.count(210) == GATES // 2

    raw = host.log_file.read_bytes()
    assert raw.endswith(b"\n")
    everything = [json.loads(line) for line in raw.split(b"\n")[:-1]]  # any torn line fails here
    # under contention for the slot files a connection may also queue briefly: session.queued
    records = [r for r in everything if r["event"] != "session.queued"]
    queued = [r for r in everything if r["event"] == "session.queued"]
    assert len(records) == GATES
    assert {r["pid"] for r in records} == {p.pid for p in procs}
    assert {r["conn"] for r in queued} <= {r["conn"] for r in records if r["event"] == "session.started"}
    assert sorted(r["event"] for r in records) == ["connection.refused"] * 50 + ["session.started"] * 50
    refused = sorted((r["command"], r["command_length"]) for r in records if r["event"] == "connection.refused")
    sent = [f"borg {junk} {i}" for i in range(1, GATES, 2)]  # each cut to its bounded start, full length kept
    assert refused == sorted((events.clip(c, events.COMMAND_CHARS, events.COMMAND_BYTES), len(c)) for c in sent)

    values = counterfiles.load(str(host.state_dir)).values
    assert sum(v for k, v in values.items() if counters.family(k) == counters.STARTED) == GATES // 2
    assert values[counters.series(counters.REFUSALS, reason="bad-command")] == GATES // 2


WRITER = """
import sys
from borg_gate.base import connection, events
log = events.EventLog(connection.current({}), sys.argv[1], state_dir=sys.argv[2])
n = int(sys.argv[3])
for seq in range(50):
    log.emit("session.queued", writer=n, seq=seq, budget="host", pad="p" * (n * 75))
"""


def test_large_lines_from_many_writers_never_interleave(tmp_path: Path) -> None:
    """Lines from 0.3 KB to 7.7 KB (past PIPE_BUF, within MAX_LINE): O_APPEND writes to a file stay whole."""
    log = tmp_path / "gate.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(tmp_path), str(n)]) for n in range(GATES)]
    assert [p.wait(timeout=300) for p in procs] == [0] * GATES
    lines = log.read_bytes().split(b"\n")[:-1]
    assert max(len(line) for line in lines) > 4096 and all(len(line) < events.MAX_LINE for line in lines)
    records = [json.loads(line) for line in lines]
    assert sorted((r["writer"], r["seq"]) for r in records) == [(n, s) for n in range(GATES) for s in range(50)]
    assert all(len(r["pad"]) == r["writer"] * 75 for r in records)
    values = counterfiles.load(str(tmp_path)).values
    assert values[counters.series(counters.QUEUED, budget="host")] == GATES * 50  # no increment lost
