"""Several unix users, one per client, sharing one host budget through a setgid, sticky group dir.

Real users (created here if missing, as root) run real gates through setpriv, exactly as
sshd would run each client's forced command as that client's user.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from borg_gate.base.errors import Kind
from tests.hostile_users import as_user, make_users
from tests.slots_support import Hold, Site, apply_tmpfiles, assert_all_free
from tests.waiting import wait_for

GROUP = "bgslot"
USERS = ("bgslot-a", "bgslot-b")


def ensure_users() -> None:
    make_users(GROUP, USERS)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: this test creates unix users and runs gates as them (CI runs as root)")
    ensure_users()
    root = Path(tempfile.mkdtemp(prefix="bgslot-", dir="/tmp"))  # pytest's tmp_path is root-only
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def shared_site(root: Path, mode: int, max_sessions: int = 2) -> tuple[Site, Site]:
    """One host (config, state dir, recorder) as seen by each of the two users.

    The state dir is what the packaged tmpfiles entry makes at boot (the root-owned lock file
    in it included), then set to ``mode``.
    """
    state = apply_tmpfiles(root / "sys", GROUP)
    state.chmod(mode)
    site_a = Site(root, max_sessions=max_sessions, per_client=1, run_as=as_user(USERS[0]), state=state)
    site_b = Site(root, max_sessions=max_sessions, per_client=1, run_as=as_user(USERS[1]), state=state)
    for path in (root / "bin" / "counter.json", root / "bin" / "events.log"):
        path.touch()
        path.chmod(0o666)  # the recorders write these as either user
    site_a.log_file.touch()  # root's, the group's to append to: as the tmpfiles entry makes gate.jsonl
    os.chown(site_a.log_file, 0, grp.getgrnam(GROUP).gr_gid)
    site_a.log_file.chmod(0o660)
    return site_a, site_b


def test_two_users_share_one_host_budget_through_a_setgid_group_dir(shared_root: Path) -> None:
    site_a, site_b = shared_site(shared_root, 0o3770)
    for n in range(15):
        site_a.spawn("alice", env={"LC_SLOTS_SECONDS": "0.05"})
        site_b.spawn("bob", env={"LC_SLOTS_SECONDS": "0.05"})
    gates = site_a.gates + site_b.gates
    assert [g.wait(300) for g in gates] == [0] * 30, [g.stderr() for g in gates]
    started = site_a.started()
    assert set(started) == {g.pid for g in gates}
    counted = site_a.counter()
    assert counted["max"]["host"] == 2 and counted["max"]["alice"] == 1 and counted["max"]["bob"] == 1, counted

    gid = grp.getgrnam(GROUP).gr_gid
    locks = (site_a.state_dir / "locks").lstat()  # both users' sessions locked root's one file
    assert (locks.st_uid, locks.st_gid, stat.S_IMODE(locks.st_mode)) == (0, gid, 0o660)
    owners = set()
    for path in site_a.state_dir.glob("rec.*"):
        st = path.lstat()
        owners.add(pwd.getpwuid(st.st_uid).pw_name)
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o640, path  # only its owner can write it
    assert owners == set(USERS)  # each described its own sessions
    assert_all_free(site_a)


def test_without_the_setgid_bit_the_budget_is_still_one(shared_root: Path) -> None:
    """The lock file is root's, made with the group: the budget never depends on who created what."""
    site_a, site_b = shared_site(shared_root, 0o1770, max_sessions=1)  # sticky (else refused outright), no setgid
    hold = Hold(shared_root / "hold")
    first = site_a.spawn("alice", hold=hold)
    wait_for(lambda: first.pid in site_a.started(), "alice's session")
    refused = site_b.spawn("bob", "--wait", "0")
    assert refused.wait(60) == Kind.BUSY, refused.stderr()
    hold.release()
    assert first.wait(60) == 0
    assert site_b.spawn("bob", "--wait", "0", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0
    assert site_a.counter()["max"]["host"] == 1


def test_a_state_dir_owned_by_another_gate_user_is_refused(shared_root: Path) -> None:
    site_a, site_b = shared_site(shared_root, 0o3770)
    os.chown(site_a.state_dir, pwd.getpwnam(USERS[0]).pw_uid, grp.getgrnam(GROUP).gr_gid)
    assert site_a.spawn("alice", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0
    refused = site_b.spawn("bob")
    assert refused.wait(60) == Kind.MISCONFIGURED
    uid = pwd.getpwnam(USERS[0]).pw_uid
    assert (
        refused.stderr() == f"borg-gate: state dir {site_b.state_dir}: owned by uid {uid}, not by root or this user\n"
    )
