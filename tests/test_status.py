"""``borg-gate status`` against live sessions and waiters (real gates, real locks, a stand-in borg that waits)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psutil

from borg_gate.admin import counterfiles
from borg_gate.base import counters
from tests.observability_support import admin, busy_host, end_session, events, wait_ready, waiting
from tests.recorder import Host


def status(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return admin(host, "status", *args)


def status_json(host: Host) -> dict[str, Any]:
    out = status(host, "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_live_sessions_and_waiters(tmp_path: Path) -> None:
    with busy_host(tmp_path) as (host, gates):
        report = status_json(host)
        budgets = {b["name"]: b for b in report["budgets"]}
        no_lane = {"reserved": 0, "reserved_in_use": 0, "priority_waiters": 0}
        host_budget = {"kind": "host", "name": "host", "limit": 2, "in_use": 2, "free": 0, "waiters": 1}
        assert budgets["host"] == {**host_budget, **no_lane}
        alice_budget = {"kind": "client", "name": "alice", "limit": 1, "in_use": 1, "free": 0, "waiters": 1}
        assert budgets["alice"] == {**alice_budget, **no_lane}
        assert budgets["bob"]["in_use"] == 1 and budgets["bob"]["waiters"] == 0
        assert [s["client"] for s in report["sessions"]] == ["alice", "bob"]  # the waiters are not sessions
        alice, bob = report["sessions"]
        assert alice["pid"] == alice["serve_pid"] == gates["alice"].pid  # exec: the gate became borg serve
        (bob_serve,) = psutil.Process(gates["bob"].pid).children()
        assert bob["pid"] == gates["bob"].pid and bob["serve_pid"] == bob_serve.pid  # supervised: its child
        for s in (alice, bob):
            assert s["binary"] == str(host.binary("borg")) and s["user"]
            assert s["restrictions"] == [f"--restrict-to-path={host.repos}/{s['client']}"]
            assert s["rss"] > 1 << 20 and s["cpu_seconds"] >= 0 and s["duration"] >= 0
            assert s["bytes_read"] is not None and s["bytes_written"] >= len(b"ready\n")
            assert s["started"].endswith("Z") and s["waited"] >= 0
        assert report["sink_failures"] == {"file": 0, "syslog": 0}

        text = status(host).stdout
        assert "client alice  1/1" in text and "host          2/2     0     1" in text
        assert f"{gates['bob'].pid}>{bob_serve.pid}" in text and "sessions: 2" in text

        # read-only: the sessions and the queue carry on exactly as before
        assert waiting(host) == {"host": 1, "alice": 1}
        out, _ = end_session(gates["alice"])
        assert gates["alice"].returncode == 0 and out.endswith(b"read 0\n")
        wait_ready(gates["carol"])  # first in the host's queue: alice's host slot goes to carol
        report = status_json(host)
        assert [s["client"] for s in report["sessions"]] == ["bob", "carol"]
        assert report["sessions"][1]["pid"] == gates["carol"].pid and report["sessions"][1]["waited"] > 0
        budgets = {b["name"]: b for b in report["budgets"]}
        # alice's second connection now holds her client slot while it queues for a host slot
        assert budgets["alice"]["in_use"] == 1 and budgets["alice"]["waiters"] == 0
        assert budgets["host"]["in_use"] == 2 and budgets["host"]["waiters"] == 1


def test_sessions_bytes_follow_the_traffic(tmp_path: Path) -> None:
    with busy_host(tmp_path) as (host, gates):
        before = {s["client"]: s for s in status_json(host)["sessions"]}
        end_session(gates["bob"], b"write=2000000\n")  # bob's borg answers with 2 MB; bob's session ends
        wait_ready(gates["carol"])
        after = {s["client"]: s for s in status_json(host)["sessions"]}
        assert set(after) == {"alice", "carol"}
        changing = ("duration", "cpu_seconds", "rss")
        assert {k: v for k, v in after["alice"].items() if k not in changing} == {
            k: v for k, v in before["alice"].items() if k not in changing
        }
        (ended,) = events(host, "session.ended")
        assert ended["client"] == "bob" and ended["bytes_written"] >= 2_000_000


def test_sink_failures_shown(tmp_path: Path) -> None:
    host = Host(tmp_path, gate={"log_file": "/dev/full"})
    for _ in range(3):
        assert host.run("borg serve", ["--client", "alice"]).returncode == 0
    report = status_json(host)
    assert report["sink_failures"] == {"file": 3, "syslog": 0}
    assert report["last_sink_errors"][-1]["error"] == "/dev/full: not a regular file"
    assert report["sessions"] == [] and report["budgets"][0]["in_use"] == 0
    text = status(host).stdout
    assert "log sink failures: file 3, syslog 0" in text and "not a regular file" in text


def test_broken_config_or_state_dir(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.config_path.write_text("[gate]\nnonsense = 1\n")
    out = status(host)
    assert out.returncode == 1 and out.stdout == "" and "nonsense" in out.stderr
    host = Host(tmp_path / "h2")
    os.chmod(host.state_dir, 0o777)  # world-writable without the sticky bit: unsafe, not shown as empty
    out = status(host)
    assert out.returncode == 1 and "world-writable" in out.stderr


def test_queued_counted(tmp_path: Path) -> None:
    with busy_host(tmp_path) as (host, _gates):
        values = counterfiles.load(str(host.state_dir)).values
        assert values[counters.series(counters.QUEUED, budget="host")] == 1
        assert values[counters.series(counters.QUEUED, budget="client")] == 1
        queued = {e["client"]: e for e in events(host, "session.queued")}
        assert queued["carol"]["budget"] == "host" and queued["alice"]["budget"] == "client"
        assert queued["carol"]["in_use"] == queued["carol"]["limit"] == 2 and queued["carol"]["position"] == 1
