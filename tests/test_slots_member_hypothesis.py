"""hypothesis interleaves a hostile member's file operations in the shared state dir with real
connections, releases, kills and hang-ups of another unix user's gates.

The member may create, link, unlink, replace or write any name there (the victim's own names
included) and scribble on or truncate the lock file's content; she does not take locks (holding
slots is the denial of service every lock-based budget admits, see budgetfile). After every step
no more borg serve run than either limit and the lock file is still root's same inode; at the
end every connection neither killed nor abandoned was served, so none waited on her files.
"""

from __future__ import annotations

import pwd
import shutil

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.slots_support import Site
from tests.test_queue_hypothesis import HOST, PER_CLIENT, Connections
from tests.test_slots_hostile import MEMBER, STICKY, VICTIM, Member
from tests.test_slots_users import ensure_users, shared_site

CLIENTS = ("a", "b", "c")


def names() -> list[str]:
    """What the victim's gates use, or used to use: every name worth squatting.

    ``{uid}`` stands for the victim's uid: her user is made when the test runs, after collection.
    """
    uid = "{uid}"
    keys = ["host"] + [f"client.{c}" for c in CLIENTS]
    out = [f"slot.{k}.{i}" for k in keys for i in range(2)] + [f"queue.{k}" for k in keys]
    out += [f"rec.{k}.{i}.{uid}" for k in keys for i in range(2)]
    out += [f"counters-{uid}.json", f"borg-versions-{uid}.json", "locks", "mine"]
    return out


class MemberAndConnections(Connections):
    def make_site(self) -> Site:
        ensure_users()
        self.root.chmod(0o755)
        site, _ = shared_site(self.root, STICKY, max_sessions=HOST)
        site.per_client = PER_CLIENT
        site.write_config()
        self.member = Member(MEMBER, site.state_dir)
        self.locks = (site.state_dir / "locks").stat().st_ino
        return site

    @rule(
        op=st.sampled_from(["create", "fifo", "symlink", "mkdir", "link", "unlink", "rename"]),
        name=st.sampled_from(names()),
        other=st.sampled_from(names()),
        mode=st.sampled_from([0o600, 0o644, 0o666]),
    )
    def plant(self, op: str, name: str, other: str, mode: int) -> None:
        # Her attempts on root's or the victim's files fail with EPERM: that is the point, not an error.
        uid = pwd.getpwnam(VICTIM).pw_uid
        name, other = name.format(uid=uid), other.format(uid=uid)
        self.member.do(op, name, mode=mode, src=other, target=str(self.site.state_dir / other))

    @rule(offset=st.integers(0, 4096 * 8), data=st.binary(min_size=1, max_size=64))
    def scribble(self, offset: int, data: bytes) -> None:
        """The ticket counters are the one part of the lock file she may write."""
        assert self.member.do("write", "locks", offset=offset, data=data.hex()) == "ok"

    @rule(size=st.sampled_from([0, 7, 1 << 20]))
    def truncate(self, size: int) -> None:
        assert self.member.do("truncate", "locks", size=size) == "ok"

    @invariant()
    def the_lock_file_is_roots_own(self) -> None:
        st_ = (self.site.state_dir / "locks").lstat()
        assert (st_.st_ino, st_.st_uid) == (self.locks, 0)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.member.close()
            shutil.rmtree(self.root, ignore_errors=True)


TestMemberAndConnections = MemberAndConnections.TestCase
TestMemberAndConnections.settings = settings(
    max_examples=8,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
