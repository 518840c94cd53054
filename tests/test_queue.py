"""The wait queue with real gate processes: arrival order, dead and abandoned waiters, budgets apart."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from borg_gate.base.errors import Kind
from borg_gate.conn import slots
from borg_gate.conn.policy import Budget
from tests.slots_support import Gate, Hold, Site, assert_all_free, hold_slot
from tests.waiting import wait_for


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "host", max_sessions=1, per_client=4)


def block_host(site: Site, limit: int = 1) -> list[int]:
    """The test holds every host slot, as long-running sessions would."""
    return [hold_slot(site, f"slot.host.{i}") for i in range(limit)]


def queue_up(site: Site, clients: list[str], **kwargs: object) -> list[Gate]:
    """Start gates one at a time, each only once the previous one is in the host queue."""
    gates = []
    for n, client in enumerate(clients, start=1):
        gates.append(site.spawn(client, **kwargs))  # type: ignore[arg-type]
        wait_for(lambda n=n: site.usage()[0].waiters == n, f"{n} waiters")  # type: ignore[misc]
    return gates


def start_order(site: Site) -> list[int]:
    return [pid for what, pid, *_ in site.records() if what == "start"]


def test_grants_follow_arrival_order_across_clients(site: Site) -> None:
    (fd,) = block_host(site)
    gates = queue_up(site, ["a", "b", "a", "c", "b", "a", "c", "d"], env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: len(site.events("session.queued")) == 8, "every waiter to say so")
    positions = {e["pid"]: e["position"] for e in site.events("session.queued")}
    assert [positions[g.pid] for g in gates] == list(range(1, 9))
    os.close(fd)
    assert [g.wait(120) for g in gates] == [0] * 8
    assert start_order(site) == [g.pid for g in gates]
    assert_all_free(site)


def test_kill_9_of_waiters_leaves_the_queue_intact(site: Site) -> None:
    (fd,) = block_host(site)
    gates = queue_up(site, ["a", "b", "c", "d", "e", "f"], env={"LC_SLOTS_SECONDS": "0"})
    doomed = [gates[0], gates[2], gates[3], gates[5]]  # the head, two in a row, the tail
    for g in doomed:
        os.kill(g.pid, signal.SIGKILL)
        assert g.wait(60) == -signal.SIGKILL
    survivors = [g for g in gates if g not in doomed]
    assert site.usage()[0].waiters == len(survivors)
    late = site.spawn("g", env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: site.usage()[0].waiters == len(survivors) + 1, "the late one to queue")
    os.close(fd)
    assert [g.wait(120) for g in [*survivors, late]] == [0, 0, 0]
    assert start_order(site) == [g.pid for g in [*survivors, late]]
    assert_all_free(site)  # the dead ones' tickets went with their processes


@pytest.mark.parametrize("who", [0, 2], ids=["head", "behind-others"])
def test_a_client_that_hangs_up_while_queued_leaves_within_a_second(site: Site, who: int) -> None:
    (fd,) = block_host(site)
    gates = queue_up(site, ["a", "b", "c", "d"], env={"LC_SLOTS_SECONDS": "0"})
    gone = gates[who]
    gone.hang_up()  # sshd closes the session's pipes when the client goes
    try:
        rc = gone.proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pytest.fail("a waiter whose client hung up was still there after 1 s")
    assert rc == Kind.CLIENT_GONE
    assert gone.stderr().endswith("borg-gate: the client went away while queued for a session slot\n")
    (refused,) = site.events("connection.refused")
    assert refused["kind"] == "client-gone"
    os.close(fd)
    others = [g for g in gates if g is not gone]
    assert [g.wait(120) for g in others] == [0, 0, 0]
    assert start_order(site) == [g.pid for g in others]  # it never took a slot; the rest kept their order
    assert_all_free(site)


def test_a_client_at_its_limit_waits_while_others_are_served(tmp_path: Path) -> None:
    site = Site(tmp_path / "host", max_sessions=3, per_client=1)
    hold = Hold(tmp_path / "hold")
    alice = site.spawn("alice", hold=hold)
    wait_for(lambda: alice.pid in site.started(), "alice's session")
    alice_again = site.spawn("alice", env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: site.usage()[1].waiters == 1, "alice's second connection to queue")
    # Bob is served while alice's second connection waits for her own slot, holding no host slot.
    bob = site.spawn("bob", env={"LC_SLOTS_SECONDS": "0"})
    assert bob.wait(60) == 0
    assert alice_again.proc.poll() is None
    (queued,) = [e for e in site.events("session.queued") if e["client"] == "alice"]
    assert (queued["budget"], queued["in_use"], queued["limit"]) == ("client", 1, 1)
    assert alice_again.stderr() == "borg-gate: waiting for a session slot (alice 1/1 in use)…\n"
    hold.release()
    assert alice.wait(60) == 0 and alice_again.wait(60) == 0
    assert_all_free(site)


def quiet(*_: object, **__: object) -> None:
    return None


def test_a_budget_bigger_than_the_thread_cap_still_admits_on_its_last_slot(tmp_path: Path) -> None:
    limit = slots.MAX_THREADS + 2
    site = Site(tmp_path / "host", max_sessions=limit, per_client=1)
    fds = block_host(site, limit)
    gate = site.spawn("alice", env={"LC_SLOTS_SECONDS": "0"})
    wait_for(lambda: site.usage()[0].waiters == 1, "the gate to queue")
    os.close(fds.pop())  # the one slot no thread blocks on: found by the re-check
    assert gate.wait(60) == 0
    assert site.started()[gate.pid] == ["slot.client.alice.0", f"slot.host.{limit - 1}"]
    for fd in fds:
        os.close(fd)


def test_in_process_waiter_gets_the_slot_its_predecessor_leaves(tmp_path: Path) -> None:
    """acquire() in a forked process: the thread-blocking path, with no fd 1 to watch."""
    state = str(tmp_path / "s")
    session = slots.Session("alice", "c1", "/usr/bin/borg")
    first = slots.acquire(state, "alice", Budget(1, 2, 0), session, say=quiet, emit=quiet, watch_fd=-1)
    said_r, said_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        os.close(said_r)
        for fd in first.fds:  # the fork's copies share the parent's lock: an OFD lock belongs to the open file
            os.close(fd)
        try:
            say = lambda line: os.write(said_w, line.encode()) and None  # noqa: E731
            held = slots.acquire(state, "bob", Budget(1, 2, 60), session, say=say, emit=quiet, watch_fd=-1)
            os.write(w, ",".join(held.slots).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(said_w)
    said = os.read(said_r, 4096).decode()  # the child is blocked now, and says so
    os.close(said_r)
    assert said == "waiting for a session slot (1/1 in use)…"
    for fd in first.fds:
        os.close(fd)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert out.decode().split(",") == ["slot.client.bob.0", "slot.host.0"]
