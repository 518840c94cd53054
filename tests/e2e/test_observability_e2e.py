"""Issue 4 end to end: status and metrics during a real borg session, supervise mode with real borg clients."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import harness
from tests.e2e.harness import Site
from tests.waiting import wait_for


def admin(site: Site, command: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed gate's admin command, as root or as another unix user (setpriv, with its groups)."""
    as_user = ["setpriv", f"--reuid={user}", f"--regid={harness.uid_gid(user)[1]}", "--init-groups"] if user else []
    return subprocess.run(
        [*as_user, str(site.gate), command, "--config", str(site.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def status(site: Site, user: str | None = None) -> dict[str, Any]:
    out = admin(site, "status", "--json", user=user)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def serve_processes(site: Site) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and harness.BORG1 in cmd and any(str(site.repos) in arg for arg in cmd):
            found.append(proc)
    return found


def alice_repo(site: Site, options: str) -> tuple[harness.ClientKey, Path, str]:
    """alice's key on bgate-a with these key options, her repos dir, and a new repository in it."""
    alice = site.key("alice")
    repos = site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, options))
    repo = site.repo_url("bgate-a", repos / "main")
    site.borg(["init", "--encryption=none", repo], alice).check()
    return alice, repos, repo


def holding_client(
    site: Site, key: harness.ClientKey, repo: str, tmp_path: Path
) -> tuple[Path, threading.Thread, list[harness.Result]]:
    """A real client session that stays open: `borg with-lock` runs a local command until ``go`` exists."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    hold = f"touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done"  # runs once borg serve has locked the repo
    results: list[harness.Result] = []
    client = threading.Thread(target=lambda: results.append(site.borg(["with-lock", repo, "sh", "-c", hold], key)))
    client.start()
    wait_for(ready.exists, "the client holding the repository lock")
    return go, client, results


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_status_and_metrics_during_a_real_borg_session(site: Site, tmp_path: Path) -> None:
    alice, repos, repo = alice_repo(site, "--client alice")

    go, client, results = holding_client(site, alice, repo, tmp_path)
    try:
        (session,) = status(site)["sessions"]
        (serve,) = serve_processes(site)
        assert session["client"] == "alice" and session["user"] == "bgate-a"
        assert session["pid"] == session["serve_pid"] == serve.pid  # exec mode: the gate became borg serve
        assert session["binary"] == harness.BORG1 and session["restrictions"] == [f"--restrict-to-path={repos}"]
        assert session["rss"] > 10 << 20 and session["cpu_seconds"] > 0
        assert session["bytes_read"] > 0 and session["bytes_written"] > 0  # root may read /proc/<pid>/io

        # another gate user, in the state dir's group but not the session's owner: everything but the I/O
        other = status(site, user="bgate-c")
        (seen,) = other["sessions"]
        assert seen["pid"] == serve.pid and seen["rss"] > 0 and seen["cpu_seconds"] is not None
        assert seen["bytes_read"] is None and seen["bytes_written"] is None
        budgets = {b["name"]: b for b in other["budgets"]}
        assert budgets["host"]["in_use"] == 1 and budgets["host"]["limit"] == 8 and budgets["host"]["free"] == 7
        assert budgets["alice"]["in_use"] == 1 and budgets["alice"]["limit"] == 4

        out = admin(site, "metrics", user="bgate-c")
        assert out.returncode == 0, out.stderr
        samples = samples_of(out.stdout)
        assert samples[("borg_gate_sessions_in_use", (("budget", "host"),))] == 1
        assert samples[("borg_gate_sessions_in_use", (("budget", "client"), ("client", "alice")))] == 1
        # each user's counters are its own (0600: a file others can open is one they can hold locked)
        assert ("borg_gate_sessions_started_total", (("client", "alice"),)) not in samples
        out = admin(site, "metrics", *site.key_files())  # root, as node_exporter's textfile timer runs it
        assert out.returncode == 0, out.stderr
        samples = samples_of(out.stdout)
        assert samples[("borg_gate_sessions_started_total", (("client", "alice"),))] == 2  # init, with-lock
    finally:
        go.touch()
        client.join(timeout=300)
    results[0].check()
    assert status(site)["sessions"] == []


def test_supervise_mode_with_a_real_borg_client(site: Site, tmp_path: Path) -> None:
    alice, _repos, repo = alice_repo(site, "--client alice --supervise")
    empty = tmp_path / "empty"
    empty.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    size = 24 << 20
    (data / "random.bin").write_bytes(os.urandom(size))  # incompressible, nothing to deduplicate

    site.borg(["create", "--compression=none", f"{repo}::empty", str(empty)], alice).check()
    created = site.borg(["create", "--json", "--compression=none", f"{repo}::data", str(data)], alice).check()
    stats = json.loads(created.stdout)["archive"]["stats"]

    ended = site.events("session.ended")
    assert len(ended) == 3 and [e["exit_code"] for e in ended] == [0, 0, 0]
    started = site.events("session.started")
    assert [e["conn"] for e in ended] == [e["conn"] for e in started]
    baseline, full = ended[1], ended[2]
    for e in ended:
        assert e["client"] == "alice" and e["user"] == "bgate-a" and e["signal"] is None
        assert e["serve_pid"] != e["pid"] and e["cpu_seconds"] > 0 and e["max_rss"] > 10 << 20
    # what the client sent went in through stdin and out to the repository's segment files
    sent = stats["deduplicated_size"]
    assert sent >= size
    extra_read = full["bytes_read"] - baseline["bytes_read"]
    extra_written = full["bytes_written"] - baseline["bytes_written"]
    # seen: +0.2% read (the RPC framing, the repository's index and hints), +0.01% written
    assert sent <= extra_read <= sent * 1.02 + (1 << 20)
    assert sent <= extra_written <= sent * 1.02 + (1 << 20)
    assert full["disk_written"] >= sent or full["disk_written"] == 0  # 0 where the fs does not count (tmpfs)


def ended_events(site: Site) -> int | None:
    """How many session.ended so far; None while a line is caught half copied (polling a live log)."""
    try:
        return len(site.events("session.ended"))
    except ValueError:
        return None


def test_supervised_session_of_a_killed_client_ends_and_frees_its_slots(site: Site, tmp_path: Path) -> None:
    alice, _repos, repo = alice_repo(site, "--client alice --supervise")
    go, client, results = holding_client(site, alice, repo, tmp_path)
    try:
        (session,) = status(site)["sessions"]
        (serve,) = serve_processes(site)
        assert session["serve_pid"] == serve.pid != session["pid"]  # the supervisor holds, its child serves
        borg_client = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "with-lock" in (p.info["cmdline"] or []) and p.pid != serve.pid
        ]
        for p in borg_client:
            p.kill()  # the client dies mid-session: its ssh sends EOF, borg serve ends
        wait_for(lambda: ended_events(site) == 2, "session.ended of the killed client's session")
    finally:
        go.touch()
        client.join(timeout=300)
    assert results[0].returncode == -9
    ended = site.events("session.ended")[-1]
    assert ended["serve_pid"] == serve.pid and isinstance(ended["exit_code"], int) and ended["duration"] > 0
    assert status(site)["sessions"] == [] and status(site)["budgets"][0]["in_use"] == 0
