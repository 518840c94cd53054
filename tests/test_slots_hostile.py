"""A member of the shared state dir's group against the slot budget: whatever she does there, the limit holds.

The state dir is what the packaged tmpfiles entry makes at boot (``apply_tmpfiles``): 3770
root:group, with the root-owned lock file whose bytes are every slot and ticket. Real users
(tests/test_slots_users.py creates them) run real gates through setpriv; the member acts as
her own unix user too, so the kernel applies to her exactly the permissions it would.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from borg_gate.base import statedir
from borg_gate.base.errors import Kind, Refusal
from tests import test_slots_users
from tests.slots_support import Hold, Site, apply_tmpfiles, assert_all_free
from tests.test_slots_users import GROUP, USERS, as_user, shared_site
from tests.waiting import wait_for

shared_root = test_slots_users.shared_root  # the fixture: the two users exist, and a /tmp dir they can reach

STICKY = 0o3770
VICTIM, MEMBER = USERS

# The member's hands: a process of her own that takes one action per line on stdin (JSON) and
# answers "ok" or the error, so that a test or a state machine can interleave her with gates.
MEMBER_SCRIPT = r"""
import fcntl, json, os, struct, sys
os.umask(0)
held = []
for line in sys.stdin:
    act = json.loads(line)
    op, d = act["op"], act["dir"]
    try:
        name = os.path.join(d, act["name"])
        if op == "create":
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, act.get("mode", 0o600))
            os.close(fd)
        elif op == "write":
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            os.pwrite(fd, bytes.fromhex(act["data"]), act.get("offset", 0))
            os.close(fd)
        elif op == "truncate":
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            os.ftruncate(fd, act.get("size", 0))
            os.close(fd)
        elif op == "link":
            os.link(os.path.join(d, act["src"]), name)
        elif op == "symlink":
            os.symlink(act["target"], name)
        elif op == "fifo":
            os.mkfifo(name, 0o666)
        elif op == "mkdir":
            os.mkdir(name, 0o700)
        elif op == "unlink":
            os.unlink(name)
        elif op == "rename":
            os.rename(os.path.join(d, act["src"]), name)
        elif op == "lock":  # as any gate can: an OFD lock on a byte range, kept while she runs
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW)
            kind = fcntl.F_RDLCK if act.get("shared") else fcntl.F_WRLCK
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", kind, 0, act["start"], act["length"], 0))
            held.append(fd)
        print("ok", flush=True)
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc.strerror}", flush=True)
"""


class Member:
    """Another unix user of the gate's group, acting in the shared state dir."""

    def __init__(self, user: str, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.uid = pwd.getpwnam(user).pw_uid
        self.proc = subprocess.Popen(
            [*as_user(user), sys.executable, "-I", "-c", MEMBER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, op: str, name: str, **args: object) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "dir": str(self.state_dir), "name": name, **args}) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


@pytest.fixture
def pair(shared_root: Path) -> Iterator[tuple[Site, Member]]:
    """A host with a budget of one session, the victim's view of it, and the member's hands."""
    site, _ = shared_site(shared_root, STICKY, max_sessions=1)
    member = Member(MEMBER, site.state_dir)
    try:
        yield site, member
    finally:
        member.close()


def victim_names(site: Site) -> list[str]:
    """Every name the victim's gate would use or once used: a squatter's shopping list."""
    uid = pwd.getpwnam(VICTIM).pw_uid
    names = [f"slot.host.{i}" for i in range(2)] + [f"slot.client.alice.{i}" for i in range(2)]
    names += ["queue.host", "queue.client.alice", f"ticket.host.{1:012d}.00000000"]
    names += [f"rec.host.0.{uid}", f"rec.client.alice.0.{uid}", f"counters-{uid}.json", f"borg-versions-{uid}.json"]
    return names


# --------------------------------------------------------------------------- the state dir's mode


@pytest.mark.parametrize("mode", [0o770, 0o2770, 0o2775, 0o2730])
def test_a_group_writable_state_dir_without_the_sticky_bit_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    import grp

    group = grp.getgrgid(state.stat().st_gid).gr_name
    with pytest.raises(Refusal) as refused:
        statedir.open_dir(str(state))
    assert refused.value.kind is Kind.MISCONFIGURED
    assert refused.value.reason == (
        f"state dir {state}: group-writable without the sticky bit (any member could unlink the others'"
        f" slot files); fix: install -d -o root -g {group} -m 3770 {state}"
    )


@pytest.mark.parametrize("mode", [0o3770, 0o1770, 0o2750, 0o700])
def test_sticky_or_not_group_writable_state_dirs_are_accepted(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    os.close(statedir.open_dir(str(state)))


def test_the_fix_in_the_message_works(shared_root: Path) -> None:
    """What the refusal tells the admin to run turns the refusal into a served connection."""
    site_a, _ = shared_site(shared_root, 0o2770, max_sessions=1)
    refused = site_a.spawn("alice")
    assert refused.wait(60) == Kind.MISCONFIGURED
    fix = refused.stderr().removesuffix("\n").rpartition("fix: ")[2]
    assert fix == f"install -d -o root -g {GROUP} -m 3770 {site_a.state_dir}"
    subprocess.run(fix.split(), check=True)
    assert site_a.spawn("alice", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0
    assert_all_free(site_a)


# --------------------------------------------------------------------------- 1. the limit


def test_the_review_bypass_a_planted_unlinked_slot_name_no_longer_admits_anyone(pair: tuple[Site, Member]) -> None:
    """Issue 10, 1: she created ``slot.host.0``, waited for a gate to lock it, unlinked it: 4 ran under 1.

    Slots are bytes of root's lock file now: her files under the old names are never opened,
    and the lock file itself is out of her reach (root's, in a sticky dir).
    """
    site, member = pair
    for name in victim_names(site)[:4]:
        assert member.do("create", name, mode=0o666) == "ok"
    hold = Hold(site.root / "hold")
    first = site.spawn("alice", hold=hold)
    wait_for(lambda: first.pid in site.started(), "the first session")
    for name in victim_names(site)[:4]:
        assert member.do("unlink", name) == "ok"  # hers: allowed, and meaningless
    assert member.do("create", "mine", mode=0o666) == "ok"
    assert member.do("unlink", "locks").startswith("PermissionError")  # root's, in a sticky dir
    assert member.do("rename", "elsewhere", src="locks").startswith("PermissionError")
    assert member.do("rename", "locks", src="mine").startswith("PermissionError")  # nor replaced by hers
    assert member.do("symlink", "locks", target="/tmp").startswith("FileExistsError")
    others = [site.spawn(c, "--wait", "0") for c in ("bob", "carol", "dave")]
    assert [g.wait(60) for g in others] == [Kind.BUSY] * 3, [g.stderr() for g in others]
    hold.release()
    assert first.wait(60) == 0
    assert site.counter()["max"]["host"] == 1


def test_a_lock_file_a_member_planted_is_never_counted_on(shared_root: Path) -> None:
    """Before root made it (a state dir set up by hand, not by the tmpfiles entry): refused, not used."""
    site, _ = shared_site(shared_root, STICKY, max_sessions=1)
    (site.state_dir / "locks").unlink()
    member = Member(MEMBER, site.state_dir)
    try:
        assert member.do("create", "locks", mode=0o666) == "ok"
    finally:
        member.close()
    refused = site.spawn("alice")
    assert refused.wait(60) == Kind.MISCONFIGURED
    uid = pwd.getpwnam(MEMBER).pw_uid
    assert refused.stderr() == (
        f"borg-gate: state dir {site.state_dir}: lock file locks: owned by uid {uid}, not by root (a member"
        f" could remove it and double the budget); create it as root: install -m 0660 -o root -g {GROUP}"
        f" /dev/null {site.state_dir}/locks\n"
    )
    assert site.started() == {}


def test_a_missing_lock_file_is_refused_with_the_fix_and_a_boot_makes_it(shared_root: Path) -> None:
    site, _ = shared_site(shared_root, STICKY, max_sessions=1)
    (site.state_dir / "locks").unlink()
    refused = site.spawn("alice")
    assert refused.wait(60) == Kind.MISCONFIGURED
    assert refused.stderr().startswith(f"borg-gate: state dir {site.state_dir}: no lock file locks; create it as root")
    apply_tmpfiles(shared_root / "sys", GROUP)  # what the next boot (or postinst) does
    assert site.spawn("alice", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0


# --------------------------------------------------------------------------- 2. service


def test_names_squatted_with_mode_0600_shut_nobody_out(pair: tuple[Site, Member]) -> None:
    """Issue 10, 2: the same pre-created names, 0600, used to refuse every other user (212)."""
    site, member = pair
    for name in victim_names(site):
        assert member.do("create", name, mode=0o600) == "ok", name
    gate = site.spawn("alice", env={"LC_SLOTS_SECONDS": "0"})
    assert gate.wait(60) == 0, gate.stderr()
    assert gate.stderr() == ""
    queued = [site.spawn("alice", env={"LC_SLOTS_SECONDS": "0.2"}) for _ in range(3)]  # and through the queue
    assert [g.wait(60) for g in queued] == [0, 0, 0], [g.stderr() for g in queued]


@pytest.mark.parametrize("plant", ["fifo", "symlink", "mkdir", "link-to-locks"])
def test_planted_records_of_the_victim_change_nothing_and_are_not_believed(
    pair: tuple[Site, Member], plant: str
) -> None:
    site, member = pair
    uid = pwd.getpwnam(VICTIM).pw_uid
    for name in (f"rec.host.0.{uid}", f"rec.client.alice.0.{uid}"):
        if plant == "fifo":
            assert member.do("fifo", name) == "ok"
        elif plant == "symlink":
            assert member.do("symlink", name, target=str(site.log_file)) == "ok"
        elif plant == "mkdir":
            assert member.do("mkdir", name) == "ok"
        else:
            assert member.do("link", name, src="locks") == "ok"
    hold = Hold(site.root / "hold")
    gate = site.spawn("alice", hold=hold)
    wait_for(lambda: gate.pid in site.started(), "the session")
    host = site.usage()[0]
    assert len(host.holders) == 1 and host.holders[0].client is None  # no record of the victim's to show
    assert host.holders[0].pid == gate.pid  # as root, status traced the lock to its process
    assert b"alice" not in (site.state_dir / "locks").read_bytes()  # no record was written through her link
    hold.release()
    assert gate.wait(60) == 0


def test_a_forged_record_is_not_believed(pair: tuple[Site, Member]) -> None:
    """She writes a record claiming the victim's session is hers (or anyone's): status checks the pid's uid."""
    site, member = pair
    hold = Hold(site.root / "hold")
    gate = site.spawn("alice", hold=hold)
    wait_for(lambda: gate.pid in site.started(), "the session")
    forged = {"pid": gate.pid, "client": "mallory", "conn": "forged", "started": 9e9, "limit": 1}
    name = f"rec.host.0.{member.uid}"
    assert member.do("create", name, mode=0o644) == "ok"
    assert member.do("write", name, data=json.dumps(forged).encode().hex()) == "ok"
    (holder,) = site.usage()[0].holders
    assert holder.client == "alice" and holder.conn != "forged"
    hold.release()
    assert gate.wait(60) == 0


def test_garbage_in_the_ticket_counters_costs_order_never_a_slot(pair: tuple[Site, Member]) -> None:
    """The counters at the start of the lock file are the one thing she can write: rewinding or
    filling them with garbage can reorder the queue, never admit more than the limit or hang it."""
    site, member = pair
    hold = Hold(site.root / "hold")
    first = site.spawn("alice", hold=hold)
    wait_for(lambda: first.pid in site.started(), "the first session")
    waiters = []
    for n in range(4):
        data = (b"\xff" * 8 if n % 2 else b"\x00" * 8) * 4096  # all counters: to the top, then back to zero
        assert member.do("write", "locks", data=data.hex()) == "ok"
        waiters.append(site.spawn(f"c{n}", env={"LC_SLOTS_SECONDS": "0.1"}))
        wait_for(lambda n=n: site.usage()[0].waiters == n + 1, f"{n + 1} waiters")  # type: ignore[misc]
    assert member.do("truncate", "locks", size=0) == "ok"
    hold.release()
    assert first.wait(60) == 0
    assert [g.wait(60) for g in waiters] == [0] * 4, [g.stderr() for g in waiters]
    assert site.counter()["max"]["host"] == 1
    assert_all_free(site)


def test_a_member_holding_locks_costs_slots_never_the_deadline(pair: tuple[Site, Member]) -> None:
    """What she can do as any gate can: lock bytes. Every slot, or every ticket of the queue, taken by
    her: connections wait until their deadline and are refused as busy; none hangs or spins."""
    from borg_gate.conn import budgetfile

    site, member = pair
    host = budgetfile.region("host")
    assert (
        member.do("lock", "locks", start=host + budgetfile.TICKETS, length=budgetfile.TICKET_SPACE, shared=True) == "ok"
    )
    blocked = site.spawn("alice", "--wait", "1")
    assert blocked.wait(60) == Kind.BUSY, blocked.stderr()
    assert blocked.stderr().startswith("borg-gate: server busy:")
    assert member.do("lock", "locks", start=host, length=1) == "ok"  # and the only host slot
    refused = site.spawn("bob", "--wait", "0")
    assert refused.wait(60) == Kind.BUSY
    holder = site.usage()[0].holders[0]
    assert (holder.pid, holder.client) == (member.proc.pid, None)  # root's status names her process
    member.close()  # her locks go with her process
    assert site.spawn("alice", "--wait", "1", env={"LC_SLOTS_SECONDS": "0"}).wait(60) == 0
