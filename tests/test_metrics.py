"""``borg-gate metrics``: Prometheus exposition checked with prometheus_client's parser, live and after the fact."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from borg_gate.admin import metrics
from tests.observability_support import admin, busy_host, end_session, events, hold_host, start_gate, stop, wait_ready
from tests.recorder import Host

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run_metrics(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return admin(host, "metrics", *args)


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Every family's type and every sample, as Prometheus would read them (raises on bad syntax)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return types, samples


def sample(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_live_gauges_and_counters(tmp_path: Path) -> None:
    with busy_host(tmp_path) as (host, gates):
        out = run_metrics(host)
        assert out.returncode == 0 and out.stderr == ""
        types, samples = parse(out.stdout)
        assert types["borg_gate_sessions_in_use"] == "gauge" and types["borg_gate_sessions_started"] == "counter"
        host_budget = {"budget": "host"}
        assert sample(samples, "borg_gate_sessions_in_use", **host_budget) == 2
        assert sample(samples, "borg_gate_sessions_limit", **host_budget) == 2
        assert sample(samples, "borg_gate_waiters", **host_budget) == 1
        alice = {"budget": "client", "client": "alice"}
        assert sample(samples, "borg_gate_sessions_in_use", **alice) == 1
        assert sample(samples, "borg_gate_sessions_limit", **alice) == 1
        assert sample(samples, "borg_gate_waiters", **alice) == 1
        assert sample(samples, "borg_gate_waiters", budget="client", client="bob") == 0
        assert sample(samples, "borg_gate_sessions_started_total", client="alice") == 1
        assert sample(samples, "borg_gate_sessions_started_total", client="bob") == 1
        assert sample(samples, "borg_gate_queued_total", budget="host") == 1
        assert sample(samples, "borg_gate_queued_total", budget="client") == 1
        for reason in ("bad-command", "busy", "misconfigured", "not-allowed", "client-gone", "internal"):
            assert sample(samples, "borg_gate_refusals_total", reason=reason) == 0
        assert sample(samples, "borg_gate_sink_failures_total", sink="file") == 0

        end_session(gates["alice"])
        wait_ready(gates["carol"])
        end_session(gates["bob"], b"write=1000\n")  # supervised: session.ended adds to the byte counters
        wait_ready(gates["alice-2"])
        assert host.run("rm -rf /", ["--client", "alice"]).returncode == 210
        _, samples = parse(run_metrics(host).stdout)
        assert sample(samples, "borg_gate_sessions_started_total", client="alice") == 2
        assert sample(samples, "borg_gate_sessions_started_total", client="carol") == 1
        assert sample(samples, "borg_gate_wait_seconds_total", client="carol") > 0
        assert sample(samples, "borg_gate_wait_seconds_total", client="alice") > 0
        assert sample(samples, "borg_gate_refusals_total", reason="bad-command") == 1
        assert sample(samples, "borg_gate_sessions_ended_total", client="bob") == 1
        (ended,) = events(host, "session.ended")
        assert sample(samples, "borg_gate_session_written_bytes_total", client="bob") == ended["bytes_written"]
        assert sample(samples, "borg_gate_session_cpu_seconds_total", client="bob") == ended["cpu_seconds"]
        assert sample(samples, "borg_gate_sessions_in_use", budget="host") == 2
        assert sample(samples, "borg_gate_waiters", budget="host") == 0


def test_busy_refusal_and_sink_failure_counted(tmp_path: Path) -> None:
    host = hold_host(tmp_path, gate={"log_file": "/dev/full"}, limits={"max_sessions": 1, "wait": 0})
    holder = start_gate(host, ["--client", "alice"])
    try:
        wait_ready(holder)
        refused = start_gate(host, ["--client", "bob"])
        _, err = refused.communicate(b"", timeout=60)
        assert refused.returncode == 213 and b"server busy" in err
    finally:
        stop(holder)
    _, samples = parse(run_metrics(host).stdout)
    assert sample(samples, "borg_gate_refusals_total", reason="busy") == 1
    assert sample(samples, "borg_gate_sink_failures_total", sink="file") == 2  # started, refused


def test_output_file_replaced_atomically(tmp_path: Path) -> None:
    host = Host(tmp_path)
    assert host.run("borg serve", ["--client", "alice"]).returncode == 0
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "borg-gate.prom"
    target.write_text("old\n")
    old_inode = target.stat().st_ino
    hard_link = out_dir / "reader-still-has-this"
    os.link(target, hard_link)  # a reader holding the old file keeps seeing it whole
    result = run_metrics(host, "--output", str(target))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert target.stat().st_ino != old_inode and hard_link.read_text() == "old\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["borg-gate.prom", "reader-still-has-this"]  # no temp left
    assert target.stat().st_mode & 0o777 == 0o644
    _, samples = parse(target.read_text())
    assert sample(samples, "borg_gate_sessions_started_total", client="alice") == 1


def test_output_failure_leaves_no_trace(tmp_path: Path) -> None:
    host = Host(tmp_path)
    result = run_metrics(host, "--output", str(tmp_path / "missing-dir" / "x.prom"))
    assert result.returncode == 1 and "No such file or directory" in result.stderr and result.stdout == ""
    out_dir = tmp_path / "out"
    (out_dir / "x.prom").mkdir(parents=True)  # the rename cannot replace a directory
    result = run_metrics(host, "--output", str(out_dir / "x.prom"))
    assert result.returncode == 1 and "Is a directory" in result.stderr
    assert [p.name for p in out_dir.iterdir()] == ["x.prom"]  # the temp file was removed


def test_exposition_of_an_empty_host_parses() -> None:
    types, samples = parse(metrics.exposition([], {}))
    assert types["borg_gate_refusals"] == "counter"
    assert sample(samples, "borg_gate_config_errors_total") == 0
