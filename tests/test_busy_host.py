"""A busy host's controls with real gate processes: maintenance holds and drains, the priority lane,
and a queue per repository (issue 11). End-to-end runs with real borg are in tests/e2e."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from borg_gate.base.errors import Kind
from tests.slots_support import Hold, Site, assert_all_free, hold_slot
from tests.waiting import wait_for


def started_order(site: Site) -> list[int]:
    return [pid for what, pid, *_ in site.records() if what == "start"]


# --------------------------------------------------------------------------- holds


def test_a_hold_lets_running_sessions_go_on_and_queues_new_ones_until_the_release(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=4, per_client=4)
    hold = Hold(tmp_path / "hold")
    running = site.spawn("alice", hold=hold)
    wait_for(lambda: running.pid in site.started(), "the running session")
    done = site.admin("hold", "--reason", "disk swap")
    assert done.returncode == 0 and done.stdout == "holding host: disk swap\n", done
    waiters = [site.spawn(c, env={"LC_SLOTS_SECONDS": "0"}) for c in ("bob", "carol", "dave")]
    for g in waiters:
        wait_for(lambda g=g: "on hold" in g.stderr(), "the hold line")  # type: ignore[misc]
    refused = site.spawn("erin", "--wait", "0")
    assert refused.wait(60) == Kind.BUSY
    assert refused.stderr() == "borg-gate: server busy: on hold: disk swap; waited 0.0 s\n"
    hold.release()
    assert running.wait(60) == 0  # the running one was never disturbed
    assert all(g.proc.poll() is None for g in waiters)  # nobody started in the held scope
    assert set(site.started()) == {running.pid}
    assert site.admin("release").stdout == "released host\n"
    assert [g.wait(60) for g in waiters] == [0, 0, 0]
    for g in waiters:
        assert g.stderr() == "borg-gate: on hold: disk swap; waiting…\n"
    events = {e["event"] for e in site.events()}
    assert {"hold.set", "hold.released", "session.held"} <= events
    assert_all_free(site)


def test_release_lets_the_queue_go_on_in_arrival_order(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=1, per_client=4)
    assert site.admin("hold", "--reason", "offsite sync").returncode == 0
    gates = []
    for n, client in enumerate(["a", "b", "c", "a", "b"]):
        gates.append(site.spawn(client, env={"LC_SLOTS_SECONDS": "0"}))
        wait_for(lambda n=n: site.usage()[0].waiters == n + 1, "it to queue")  # type: ignore[misc]
    assert site.admin("release").returncode == 0
    assert [g.wait(60) for g in gates] == [0] * 5
    assert started_order(site) == [g.pid for g in gates]


def test_a_client_hold_holds_that_client_only(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=4, per_client=4)
    assert site.admin("hold", "--client", "alice", "--reason", "restore test").returncode == 0
    alice = site.spawn("alice", env={"LC_SLOTS_SECONDS": "0"})
    bob = site.spawn("bob", env={"LC_SLOTS_SECONDS": "0"})
    assert bob.wait(60) == 0
    wait_for(lambda: "on hold" in alice.stderr(), "alice's hold line")
    assert alice.proc.poll() is None
    assert site.admin("release", "--client", "alice").returncode == 0
    assert alice.wait(60) == 0


def test_a_held_connection_keeps_its_deadline(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=2, per_client=2)
    assert site.admin("hold", "--reason", "borg upgrade").returncode == 0
    gate = site.spawn("alice", "--wait", "0.5")
    assert gate.wait(60) == Kind.BUSY
    said = gate.stderr().splitlines()
    assert said[0] == "borg-gate: on hold: borg upgrade; waiting…"
    assert said[1].startswith("borg-gate: server busy: on hold: borg upgrade; waited 0.")


def test_only_roots_hold_counts(tmp_path: Path) -> None:
    """A member's file under the hold's name is ignored; root's hold replaces it."""
    site = Site(tmp_path / "host", max_sessions=2, per_client=2)
    assert site.spawn("alice", "--wait", "0").wait(60) == 0  # the state dir exists
    planted = site.state_dir / "hold.host"
    planted.write_text(json.dumps({"reason": "a member says so"}))
    os.chown(planted, 65534, 65534)
    assert site.spawn("alice", "--wait", "0").wait(60) == 0
    assert site.admin("hold", "--reason", "root says so").returncode == 0
    assert planted.stat().st_uid == 0
    refused = site.spawn("alice", "--wait", "0")
    assert refused.wait(60) == Kind.BUSY and "root says so" in refused.stderr()


def test_hold_needs_root(tmp_path: Path) -> None:
    site = Site(tmp_path / "host")
    site.root.chmod(0o755)
    result = site.admin("hold")  # as root: fine
    assert result.returncode == 0
    import subprocess
    import sys

    as_nobody = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            sys.executable,
            "-m",
            "borg_gate",
            "release",
            "--config",
            str(site.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"},
    )
    assert as_nobody.returncode == 2
    assert as_nobody.stderr == "borg-gate release: only root's holds count: run it as root\n"


def test_drain_waits_for_the_last_session_and_times_out_naming_what_runs(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=4, per_client=4)
    hold = Hold(tmp_path / "hold")
    running = site.spawn("alice", hold=hold)
    wait_for(lambda: running.pid in site.started(), "the running session")
    timed_out = site.admin("hold", "--drain", "--timeout", "0.5", "--reason", "snapshot")
    assert timed_out.returncode == 1
    assert f"pid {running.pid} client alice slot.host." in timed_out.stdout
    import subprocess

    command = [*site.admin_command("hold", "--drain", "--timeout", "60")]
    drain = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=site.root)
    hold.release()
    out, _ = drain.communicate(timeout=120)
    assert drain.returncode == 0 and out.endswith("drained host\n")
    assert running.wait(60) == 0
    assert site.usage()[0].holders == ()


def test_status_and_metrics_show_the_hold(tmp_path: Path) -> None:
    site = Site(tmp_path / "host")
    assert site.admin("hold", "--client", "alice", "--reason", "moving disks").returncode == 0
    status = json.loads(site.admin("status", "--json").stdout)
    (held,) = status["holds"]
    assert (held["scope"], held["reason"]) == ("client:alice", "moving disks")
    assert "on hold" in site.admin("status").stdout
    metrics = site.admin("metrics").stdout
    assert 'borg_gate_hold{scope="client:alice"} 1' in metrics


# --------------------------------------------------------------------------- priority lane


def test_priority_takes_a_reserved_slot_while_normal_keys_queue(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=2, per_client=4, reserved=1)
    hold = Hold(tmp_path / "hold")
    normal = site.spawn("a", hold=hold)
    wait_for(lambda: normal.pid in site.started(), "the normal session")
    queued = site.spawn("b", env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: site.usage()[0].waiters == 1, "a normal waiter (slot 1 is reserved)")
    restore = site.spawn("c", "--priority", hold=hold)
    wait_for(lambda: restore.pid in site.started(), "the priority session")
    assert "slot.host.1" in site.started()[restore.pid]
    host = site.usage()[0]
    assert (host.reserved, host.reserved_in_use) == (1, 1)
    assert queued.proc.poll() is None
    hold.release()
    assert [g.wait(60) for g in (normal, queued, restore)] == [0, 0, 0]
    assert "slot.host.0" in site.started()[queued.pid]  # never a reserved slot


def test_priority_waiters_go_before_earlier_normal_ones(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=1, per_client=8)
    fd = hold_slot(site, "slot.host.0")
    normal = [site.spawn(f"n{i}", env={"LC_SLOTS_SECONDS": "0"}) for i in range(2)]
    wait_for(lambda: site.usage()[0].waiters == 2, "two normal waiters")
    prio = [site.spawn(f"p{i}", "--priority", env={"LC_SLOTS_SECONDS": "0"}) for i in range(2)]
    wait_for(lambda: site.usage()[0].priority_waiters == 2, "two priority waiters")
    os.close(fd)
    assert [g.wait(60) for g in normal + prio] == [0] * 4
    order = started_order(site)
    assert set(order[:2]) == {g.pid for g in prio}, order


def test_reserved_sessions_that_leave_no_normal_slot_refuse_normal_keys(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=2, reserved=2)
    gate = site.spawn("a")
    assert gate.wait(60) == Kind.MISCONFIGURED
    assert gate.stderr() == "borg-gate: reserved_sessions = 2 leaves no session of 2 to normal keys\n"
    assert site.spawn("a", "--priority", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0


# --------------------------------------------------------------------------- a queue per repository


def test_sessions_of_one_repository_queue_however_it_is_spelt(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=8, per_client=8)
    repo = site.root / "repos" / "shared"
    repo.mkdir(parents=True)
    (site.root / "alias").symlink_to(repo)
    hold = Hold(tmp_path / "hold")
    first = site.spawn("a", "--restrict-to-repository", str(repo), hold=hold)
    wait_for(lambda: first.pid in site.started(), "the first session of the repository")
    second = site.spawn("b", "--restrict-to-repository", str(site.root / "alias"), env={"LC_SLOTS_SECONDS": "0"})
    other = site.spawn(
        "c", "--restrict-to-repository", str(site.root / "repos" / "other"), env={"LC_SLOTS_SECONDS": "0"}
    )
    assert other.wait(60) == 0  # another repository: not in that queue
    wait_for(lambda: "waiting" in second.stderr(), "the second session of the repository to wait")
    assert second.stderr() == f"borg-gate: waiting for a session slot ({repo} 1/1 in use)…\n"
    (queued,) = site.events("session.queued")
    assert (queued["budget"], queued["in_use"], queued["limit"]) == ("repo", 1, 1)
    repos = [u for u in site.usage() if u.kind == "repo"]
    assert [(u.name, len(u.holders), u.waiters) for u in repos] == [(str(repo), 1, 1)]
    hold.release()
    assert [first.wait(60), second.wait(60)] == [0, 0]
    assert started_order(site).index(first.pid) < started_order(site).index(second.pid)


def test_a_key_may_allow_more_sessions_per_repository(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=8, per_client=8)
    repo = site.root / "repos" / "r"
    hold = Hold(tmp_path / "hold")
    gates = [
        site.spawn(c, "--restrict-to-repository", str(repo), "--max-sessions-per-repo", "2", hold=hold) for c in "ab"
    ]
    wait_for(lambda: len(site.started()) == 2, "both sessions")
    hold.release()
    assert [g.wait(60) for g in gates] == [0, 0]


@pytest.mark.parametrize("key", [["--restrict-to-path", "/srv"], []])
def test_no_repository_queue_where_the_gate_cannot_know_the_repository(tmp_path: Path, key: list[str]) -> None:
    site = Site(tmp_path / "host", max_sessions=8, per_client=8)
    hold = Hold(tmp_path / "hold")
    gates = [site.spawn(c, *key, hold=hold) for c in "ab"]
    wait_for(lambda: len(site.started()) == 2, "both sessions")
    assert [u for u in site.usage() if u.kind == "repo"] == []
    hold.release()
    assert [g.wait(60) for g in gates] == [0, 0]


def test_check_reports_reserved_sessions_that_leave_no_normal_slot(tmp_path: Path) -> None:
    from borg_gate.admin import check
    from borg_gate.base.config import Config

    report = check.CheckReport()
    check.check_limits(report, Config(source="cfg", max_sessions=3, reserved_sessions=3))
    (finding,) = report.findings
    assert (finding.severity, finding.code) == (check.ERROR, "limits")
    assert "reserved_sessions = 3 leaves no session of max_sessions = 3" in finding.message
    report = check.CheckReport()
    check.check_limits(report, Config(source="cfg", max_sessions=3, reserved_sessions=2))
    assert report.findings == []
