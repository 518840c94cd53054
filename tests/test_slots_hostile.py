"""A member of the shared state dir's group against the slot budget: the sticky bit keeps the count.

Without the sticky bit any member could unlink a slot file held by a running session; the next
gate created a fresh file under that name, locked it and served over the host limit. The state
dir must now be sticky (3770) when group-writable; then only a file's owner can unlink it, and
the queue must cope with tickets of dead waiters that their successor (another user) cannot remove.

Real users (tests/test_slots_users.py creates them) run real gates through setpriv.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from borg_gate import statedir
from borg_gate.errors import Kind, Refusal
from tests import test_slots_users
from tests.slots_support import Hold, Site, assert_all_free
from tests.test_slots_users import GROUP, USERS, as_user, shared_site

shared_root = test_slots_users.shared_root  # the fixture: the two users exist, and a /tmp dir they can reach

STICKY = 0o3770


def sites(root: Path, mode: int) -> tuple[Site, Site]:
    """One host with a budget of one session, seen by each of the two users; the state dir in ``mode``."""
    return shared_site(root, mode, max_sessions=1)


def unlink_as(user: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_user(user), sys.executable, "-c", "import os, sys; os.unlink(sys.argv[1])", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def host_waiters(site: Site) -> int:
    return site.usage()[0].waiters


# --------------------------------------------------------------------------- the state dir's mode


@pytest.mark.parametrize("mode", [0o770, 0o2770, 0o2775, 0o2730])
def test_a_group_writable_state_dir_without_the_sticky_bit_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    group = grp.getgrgid(state.stat().st_gid).gr_name
    with pytest.raises(Refusal) as refused:
        statedir.open_dir(str(state))
    assert refused.value.kind is Kind.MISCONFIGURED
    assert refused.value.reason == (
        f"state dir {state}: group-writable without the sticky bit (any member could unlink the others'"
        f" slot files); fix: install -d -o root -g {group} -m 3770 {state}"
    )


@pytest.mark.parametrize("mode", [0o3770, 0o1770, 0o2750, 0o700, 0o1777])
def test_sticky_or_not_group_writable_state_dirs_are_accepted(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    os.close(statedir.open_dir(str(state)))


def test_the_fix_in_the_message_works(shared_root: Path) -> None:
    """What the refusal tells the admin to run turns the refusal into a served connection."""
    site_a, _ = sites(shared_root, 0o2770)
    refused = site_a.spawn("alice")
    assert refused.wait(60) == Kind.MISCONFIGURED
    fix = refused.stderr().removesuffix("\n").rpartition("fix: ")[2]
    assert fix == f"install -d -o root -g {GROUP} -m 3770 {site_a.state_dir}"
    subprocess.run(fix.split(), check=True)
    assert site_a.spawn("alice", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0
    assert_all_free(site_a)


# --------------------------------------------------------------------------- the review's bypass


def test_a_member_cannot_unlink_a_held_slot_to_run_over_the_limit(shared_root: Path) -> None:
    site_a, site_b = sites(shared_root, STICKY)
    hold = Hold(shared_root / "hold")
    first = site_a.spawn("alice", hold=hold)
    site_a.wait_for(lambda: site_a.started(), "the first session to start")
    held = sorted(site_a.state_dir.glob("slot.*"))
    assert [p.name for p in held] == ["slot.client.alice.0", "slot.host.0"]
    for path in held:
        attempt = unlink_as(USERS[1], path)
        assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt
        assert path.exists()
    second = site_b.spawn("bob", "--wait", "0")
    assert second.wait(60) == Kind.BUSY, second.stderr()
    hold.release()
    assert first.wait(60) == 0
    assert site_a.counter()["max"]["host"] == 1
    assert_all_free(site_a)


# --------------------------------------------------------------------------- dead waiters' tickets


def test_a_dead_waiters_ticket_another_user_cannot_remove_keeps_the_queue_in_order(shared_root: Path) -> None:
    """W0 (user a) <- T1 (user b, killed) <- G2 (user a): G2 cannot unlink T1's ticket (sticky dir).

    G2 must still wait for W0, whom T1 was waiting for, not take T1's leftover file as the
    end of the line (it would then block on the slot beside W0, and could overtake it), and
    later arrivals must queue as usual past the leftover.
    """
    site_a, site_b = sites(shared_root, STICKY)
    hold = Hold(shared_root / "hold")
    holder = site_a.spawn("alice", hold=hold)
    site_a.wait_for(lambda: site_a.started(), "the first session to start")
    w0 = site_a.spawn("dave", env={"LC_SLOTS_SECONDS": "0.3"})
    site_a.wait_for(lambda: host_waiters(site_a) == 1, "W0 to queue")
    t1 = site_b.spawn("bob")
    site_a.wait_for(lambda: host_waiters(site_a) == 2, "T1 to queue behind W0")
    (t1_ticket,) = [
        p for p in site_a.state_dir.glob("ticket.host.*") if p.stat().st_uid == pwd.getpwnam(USERS[1]).pw_uid
    ]
    g2 = site_a.spawn("carol", env={"LC_SLOTS_SECONDS": "0"})
    site_a.wait_for(lambda: host_waiters(site_a) == 3, "G2 to queue behind T1")
    os.kill(t1.pid, signal.SIGKILL)
    assert t1.wait(60) == -signal.SIGKILL
    site_a.wait_for(lambda: host_waiters(site_a) == 2, "T1's ticket lock to go with it")

    hold.release()
    assert [holder.wait(60), w0.wait(60), g2.wait(60)] == [0, 0, 0], [g.stderr() for g in (holder, w0, g2)]
    assert site_a.started_at(w0.pid) < site_a.started_at(g2.pid)  # host limit 1: no overlap, so grant order
    assert t1_ticket.exists()  # G2 met EPERM unlinking it: the path this test is about was taken

    late = site_b.spawn("erin", env={"LC_SLOTS_SECONDS": "0"})
    assert late.wait(60) == 0, late.stderr()
    assert site_a.counter()["max"]["host"] == 1
    assert set(site_a.started()) == {holder.pid, w0.pid, g2.pid, late.pid}
    assert_all_free(site_a)
