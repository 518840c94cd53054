"""hypothesis interleaves root's holds and releases (of the host, or of one client) with real
connections, releases, kills and hang-ups.

After every step: never more sessions than the limits (the queue's own invariant), and never a
session starting in a held scope: while a hold lasts, the sessions of its scope are a subset of
those that had started by the time the hold was placed (and every connection had settled). At
the end every hold is released and every connection neither killed nor abandoned is served.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.test_queue_hypothesis import Connections

SCOPES = (None, "a")  # the host, or client a


class HoldsAndConnections(Connections):
    def __init__(self) -> None:
        super().__init__()
        self.allowed: dict[str | None, set[int]] = {}  # scope held -> pids that had started by then

    def started_in(self, scope: str | None) -> set[int]:
        return {pid for what, pid, client, *_ in self.site.records() if what == "start" and scope in (None, client)}

    @rule(scope=st.sampled_from(SCOPES))
    def hold(self, scope: str | None) -> None:
        if scope in self.allowed:
            return
        args = ["hold", "--reason", "test"] + (["--client", scope] if scope else [])
        assert self.site.admin(*args).returncode == 0
        for gate in self.site.gates:
            if self.fate[gate.pid] in ("live", "released"):
                self.settle(gate)
        self.allowed[scope] = self.started_in(scope)

    @rule(scope=st.sampled_from(SCOPES))
    def lift(self, scope: str | None) -> None:
        if scope not in self.allowed:
            return
        assert self.site.admin("release", *(["--client", scope] if scope else [])).returncode == 0
        del self.allowed[scope]

    @invariant()
    def nothing_starts_in_a_held_scope(self) -> None:
        for scope, allowed in self.allowed.items():
            assert self.started_in(scope) <= allowed, (scope, self.started_in(scope) - allowed)

    def teardown(self) -> None:
        for scope in list(self.allowed):
            self.lift(scope)
        super().teardown()


TestHoldsAndConnections = HoldsAndConnections.TestCase
TestHoldsAndConnections.settings = settings(
    max_examples=8,
    stateful_step_count=16,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
