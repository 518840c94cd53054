"""Storms of real gate processes against small budgets: never over a limit, everyone served, nothing left held."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

from borg_gate.base.errors import Kind
from tests.slots_support import Site, assert_all_free

HOST_LIMIT = 4
CLIENT_LIMIT = 2


def check_limits(site: Site) -> None:
    """From the recorders' own flock'd counter: the most that ever ran at once."""
    counted = site.counter()
    assert counted["max"]["host"] <= HOST_LIMIT, counted
    for client, most in counted["max"].items():
        assert most <= (HOST_LIMIT if client == "host" else CLIENT_LIMIT), (client, counted)
    assert all(n == 0 for n in counted["running"].values()), counted


def check_slots_held(site: Site) -> None:
    """Each borg serve held exactly one host slot and one slot of its own client."""
    for what, _pid, client, _ts, held in site.records():
        if what == "start":
            assert len(held) == 2, held
            assert any(s.startswith("slot.host.") for s in held), held
            assert any(s.startswith(f"slot.client.{client}.") for s in held), held


def test_a_storm_of_120_connections_from_6_clients(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=HOST_LIMIT, per_client=CLIENT_LIMIT)
    clients = [f"client{n}" for n in range(6)]
    for n in range(120):
        site.spawn(clients[n % 6], env={"LC_SLOTS_SECONDS": "0.05"})
    codes = site.wait_all(300)
    assert codes == [0] * 120
    assert len(site.started()) == 120
    assert {pid for pid in site.started()} == {g.pid for g in site.gates}
    check_limits(site)
    assert site.counter()["max"]["host"] == HOST_LIMIT  # the storm did fill the budget
    check_slots_held(site)
    assert_all_free(site)


def test_a_storm_with_kills_hang_ups_and_impatient_clients(tmp_path: Path) -> None:
    """Waiters and sessions die at random (kill -9), clients hang up, some keys never wait."""
    site = Site(tmp_path / "host", max_sessions=HOST_LIMIT, per_client=CLIENT_LIMIT)
    rnd = random.Random(1234)
    fates: dict[int, str] = {}
    seen: list[list[str]] = []
    done = threading.Event()

    def sample() -> None:  # exact even for killed sessions, which the counter cannot see end
        while not done.is_set():
            seen.append(site.running_now())

    sampler = threading.Thread(target=sample)
    sampler.start()
    for n in range(100):
        fate = rnd.choice(["serve"] * 6 + ["kill", "hang-up", "no-wait"])
        env = {"LC_SLOTS_SECONDS": "0.1", **({"LC_SLOTS_UNCOUNTED": "1"} if fate == "kill" else {})}
        gate = site.spawn(f"client{n % 5}", *(["--wait", "0"] if fate == "no-wait" else []), env=env)
        fates[gate.pid] = fate
        if n % 10 == 9:  # strike some of those still around, whether queued or serving
            for g in site.gates:
                if g.proc.poll() is None and fates[g.pid] == "kill":
                    os.kill(g.pid, signal.SIGKILL)
                elif fates[g.pid] == "hang-up":
                    g.hang_up()
    for g in site.gates:
        if fates[g.pid] == "kill" and g.proc.poll() is None:
            os.kill(g.pid, signal.SIGKILL)
        elif fates[g.pid] == "hang-up":
            g.hang_up()
    try:
        codes = {g.pid: g.wait(300) for g in site.gates}
    finally:
        done.set()
        sampler.join()
    for running in seen:
        assert len(running) <= HOST_LIMIT, running
        assert all(running.count(c) <= CLIENT_LIMIT for c in running), running
    assert len(seen) > 10 and max(len(r) for r in seen) == HOST_LIMIT  # it looked, while the budget was full
    for pid, rc in codes.items():
        expected = {
            "serve": {0},
            "kill": {0, -signal.SIGKILL},
            "hang-up": {0, Kind.CLIENT_GONE},
            "no-wait": {0, Kind.BUSY},
        }
        assert rc in expected[fates[pid]], (fates[pid], rc)
        if rc == 0:
            assert pid in site.started()
    assert sum(rc == 0 for rc in codes.values()) >= sum(f == "serve" for f in fates.values())
    check_limits(site)  # the counter, kept by every recorder that was not to be killed
    check_slots_held(site)
    assert_all_free(site)
