"""hypothesis drives real gate processes through random connects, releases, kills and hang-ups.

Safety is checked after every step from what the kernel and the recorders say (never more
borg serve alive than either limit); liveness at the end: once every session is released,
every connection that was neither killed nor abandoned is served and every slot is free.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from borg_gate.base.errors import Kind
from tests.slots_support import Gate, Hold, Site, assert_all_free, ticket_holders
from tests.waiting import wait_for

HOST, PER_CLIENT = 2, 1


def waiting_pids(site: Site) -> set[int]:
    """Pids holding a ticket: queued for a client or a host slot."""
    return ticket_holders(site)


class Connections(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="slots-hyp-", dir="/tmp"))
        self.site = self.make_site()
        self.holds: dict[int, Hold] = {}
        self.fate: dict[int, str] = {}  # pid -> "live", "released", "killed", "hung-up"

    def make_site(self) -> Site:
        return Site(self.root / "host", max_sessions=HOST, per_client=PER_CLIENT)

    def pick(self, index: int) -> Gate | None:
        """The index-th connection still in play (draws never depend on process timing: replays stay valid)."""
        live = [g for g in self.site.gates if self.fate[g.pid] == "live"]
        return live[index % len(live)] if live else None

    def settle(self, gate: Gate) -> None:
        """Until it runs, waits in a queue, or is gone: where the next rule can find it."""
        wait_for(
            lambda: (
                gate.proc.poll() is not None or gate.pid in self.site.started() or gate.pid in waiting_pids(self.site)
            ),
            "the new connection to settle",
        )

    @rule(client=st.sampled_from(["a", "b", "c"]))
    def connect(self, client: str) -> None:
        hold = Hold(self.root / f"hold{len(self.holds)}")
        gate = self.site.spawn(client, hold=hold)
        self.holds[gate.pid] = hold
        self.fate[gate.pid] = "live"
        self.settle(gate)

    @rule(index=st.integers(0, 50))
    def release(self, index: int) -> None:
        """A session ends; a connection still queued will end as soon as it is served."""
        gate = self.pick(index)
        if gate is None:
            return
        self.holds[gate.pid].release()
        self.fate[gate.pid] = "released"
        if gate.pid in self.site.started():
            assert gate.wait(60) == 0

    @rule(index=st.integers(0, 50))
    def kill_9(self, index: int) -> None:
        """Of a session or of a waiter, whichever it is by now."""
        gate = self.pick(index)
        if gate is None:
            return
        os.kill(gate.pid, signal.SIGKILL)
        self.fate[gate.pid] = "killed"
        assert gate.wait(60) == -signal.SIGKILL

    @rule(index=st.integers(0, 50))
    def hang_up(self, index: int) -> None:
        gate = self.pick(index)
        if gate is None or gate.pid in self.site.started():
            return  # a running borg serve notices by itself; nothing of ours to check
        gate.hang_up()
        wait_for(lambda: gate.proc.poll() is not None or gate.pid in self.site.started(), "it to leave")
        if gate.proc.poll() is not None:
            self.fate[gate.pid] = "hung-up"
            assert gate.wait() == Kind.CLIENT_GONE
        # else it was admitted just before: a session now, released like any other

    @invariant()
    def never_over_a_limit(self) -> None:
        running = self.site.running_now()
        assert len(running) <= HOST, running
        assert all(running.count(c) <= PER_CLIENT for c in set(running)), running

    def teardown(self) -> None:
        try:
            for hold in self.holds.values():
                hold.release()
            for gate in self.site.gates:
                rc = gate.wait(120)
                if self.fate[gate.pid] in ("live", "released"):
                    assert rc == 0, (self.fate[gate.pid], rc, gate.stderr())
                    assert gate.pid in self.site.started()
            assert_all_free(self.site)
        finally:
            self.site.kill_all()
            shutil.rmtree(self.root)


TestConnections = Connections.TestCase
TestConnections.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
