"""The packaged logrotate entry, run by real logrotate while gates write: no line lost, the new file writable."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from pathlib import Path

from tests.recorder import GATE, SSHD_ENV, Host
from tests.waiting import wait_for

ENTRY = Path(__file__).resolve().parents[1] / "packaging" / "logrotate"
WAVES, PER_WAVE = 6, 10


def entry_for(log_file: Path) -> str:
    """The packaged entry, pointed at a test log; root's group stands in for borg-gate."""
    text = ENTRY.read_text()
    assert "/var/log/borg-gate/gate.jsonl {" in text and "create 0660 root borg-gate" in text
    return text.replace("/var/log/borg-gate/gate.jsonl", str(log_file)).replace("borg-gate\n", "root\n")


def all_lines(directory: Path, stem: str) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(directory.glob(stem + "*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), path
        lines += data.splitlines()
    return lines


def coarse_now() -> float:
    """The clock logrotate names files by: glibc's time() reads CLOCK_REALTIME_COARSE, up to a tick
    (4 ms here) behind time.time(); just after a second's boundary the two disagree on the second."""
    return time.clock_gettime(getattr(time, "CLOCK_REALTIME_COARSE", 5))  # 5: Linux's id for it


def test_rotation_while_gates_write(tmp_path: Path) -> None:
    host = Host(tmp_path, limits={"max_sessions": 100, "max_sessions_per_client": 100})
    conf = tmp_path / "logrotate.conf"
    conf.write_text(entry_for(host.log_file))
    state = tmp_path / "logrotate.state"
    env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": "borg serve"}
    rotations = 0
    last_rotation = 0
    pids = []
    for wave in range(WAVES):
        procs = [
            subprocess.Popen(
                [*GATE, "--config", str(host.config_path), "--client", f"c{wave}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            for _ in range(PER_WAVE)
        ]
        if wave % 2 == 1:  # rotate while this wave is writing
            # rotated names carry the second (dateformat %s): the next rotation waits for a new one
            wait_for(lambda: int(coarse_now()) > last_rotation, f"the second after {last_rotation}", timeout=5)
            out = subprocess.run(
                ["logrotate", "--force", "--state", str(state), str(conf)], capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            last_rotation = int(coarse_now())  # at or after the second logrotate named the file by
            rotations += 1
        assert [p.wait(timeout=120) for p in procs] == [0] * PER_WAVE
        pids += [p.pid for p in procs]
    rotated = sorted(p.name for p in host.log_file.parent.glob("gate.jsonl-*"))
    assert len(rotated) == rotations and any(name.endswith(".gz") for name in rotated)  # delaycompress, then gzip
    assert host.log_file.stat().st_mode & 0o777 == 0o660  # re-created for every backup user to append
    records = [json.loads(line) for line in all_lines(host.log_file.parent, "gate.jsonl")]
    started = [r for r in records if r["event"] == "session.started"]
    assert sorted(r["pid"] for r in started) == sorted(pids)  # every connection's line, in one file or another
