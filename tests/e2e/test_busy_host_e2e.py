"""Issue 11 end to end: maintenance holds, drain, the priority lane and the repository queue.

Real borg clients through the real sshd and the gate. A "running backup" is ``borg create
REPO::NAME -`` reading its stdin (tests/e2e/busy.Running): its session lasts until the test
ends that input, so every step happens while it provably runs, with no sleeps. borg 1.x is
Debian's /usr/bin/borg, whatever version it is (1.2.4 on Debian 12, 1.4.0 on 13); the rest://
client is 2.0.0b22, the first with rest://, built by tests/borgs/build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import busy, harness
from tests.e2e.busy import USER, Client, Outcome, Running
from tests.e2e.harness import Result, Site
from tests.waiting import wait_for


@pytest.fixture(scope="session")
def borg22() -> str:
    return busy.built_borg(busy.B22)


def admin(site: Site, *args: str) -> list[str]:
    return [str(site.gate), args[0], "--config", str(site.config_path), *args[1:]]


def run_admin(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(admin(site, *args), capture_output=True, text=True, timeout=120, check=False)


def started(site: Site, client: str) -> list[dict[str, Any]]:
    return [e for e in site.events("session.started") if e.get("client") == client]


def wait_started(site: Site, client: str, n: int = 1) -> dict[str, Any]:
    return wait_for(lambda: (s := started(site, client)) and len(s) >= n and s[n - 1], f"{client}'s session {n}")


def serving(site: Site) -> list[int]:
    """pids of this site's borg serve processes (their argv names a path under the site)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(str(site.repos).encode() in arg for arg in argv):
            found.append(int(pid))
    return found


def host(site: Site, b22: str | None = None, **limits: Any) -> None:
    """The site's config with these limits, and ``b22`` as [borg.binaries] borg22 if given."""
    site.write_config(
        limits={"max_sessions": 8, "max_sessions_per_client": 4, "wait": 300, **limits},
        borg__binaries={"borg22": {"path": b22, "version": busy.B22}} if b22 else {},
    )


def client(site: Site, name: str, borg: str = harness.BORG1, *, rest: bool = False) -> tuple[Client, Path]:
    """A client with its own repos dir (served as USER), and its key line's options to come."""
    return Client(site, site.key(name), borg, rest), site.repo_dir(name, owner=USER)


# ------------------------------------------------------------------------------------------ holds


def test_hold_lets_the_running_backup_finish_and_queues_the_next_until_release(site: Site, tmp_path: Path) -> None:
    host(site)
    alice, repos = client(site, "alice")
    site.authorize(USER, (alice.key, "--client alice"))
    alice.init(repos / "one").check()
    alice.init(repos / "two").check()
    running = alice.start_backup(repos / "one", "during", tmp_path / "running.err")
    waiting: Running | None = None
    try:
        wait_started(site, "alice", 3)
        held = run_admin(site, "hold", "--reason", "disk swap")
        assert held.returncode == 0, held.stderr
        waiting = alice.start_backup(repos / "two", "after", tmp_path / "waiting.err")
        wait_for(lambda: waiting.said("Remote: borg-gate: on hold: disk swap; waiting"), "the held client's line")

        running.finish().check()  # the hold stops new sessions, not running ones
        assert waiting.running
        assert len(started(site, "alice")) == 3  # the new one did not start while held

        released = run_admin(site, "release")
        assert released.returncode == 0, released.stderr
        waiting.finish().check()
    finally:
        running.kill()
        if waiting is not None:
            waiting.kill()
    assert waiting.log.read_text().count("borg-gate: on hold:") == 1  # said once
    assert alice.names(repos / "one") == ["during"]
    assert alice.names(repos / "two") == ["after"]
    (hold_set,) = site.events("hold.set")
    (hold_released,) = site.events("hold.released")
    assert hold_set["scope"] == hold_released["scope"] == "host"
    assert hold_set["reason"] == "disk swap"
    assert started(site, "alice")[3]["ts"] > hold_released["ts"]  # it ran after the release


def test_a_client_hold_stops_only_that_client_and_wait_0_is_refused_with_the_reason(site: Site) -> None:
    host(site)
    alice, alice_repos = client(site, "alice")
    bob, bob_repos = client(site, "bob")
    site.authorize(USER, (alice.key, "--client alice --wait 0"), (bob.key, "--client bob"))
    assert run_admin(site, "hold", "--client", "alice", "--reason", "replicating offsite").returncode == 0
    try:
        refused = alice.init(alice_repos / "r")
        bob.init(bob_repos / "r").check()  # another client's hold is not bob's
    finally:
        run_admin(site, "release", "--client", "alice")
    assert refused.returncode == 2
    assert "borg-gate: " in refused.stderr and "replicating offsite" in refused.stderr, refused.stderr
    assert [e["exit_code"] for e in site.events("connection.refused")] == [213]
    alice.init(alice_repos / "r").check()  # released


def test_hold_drain_returns_only_after_the_last_session_ends(site: Site, tmp_path: Path) -> None:
    host(site)
    alice, alice_repos = client(site, "alice")
    bob, bob_repos = client(site, "bob")
    site.authorize(USER, (alice.key, "--client alice"), (bob.key, "--client bob"))
    alice.init(alice_repos / "r").check()
    bob.init(bob_repos / "r").check()
    first = alice.start_backup(alice_repos / "r", "a", tmp_path / "alice.err")
    last = bob.start_backup(bob_repos / "r", "b", tmp_path / "bob.err")
    drain: subprocess.Popen[str] | None = None
    try:
        wait_started(site, "alice", 2)
        wait_started(site, "bob", 2)
        drain = subprocess.Popen(
            admin(site, "hold", "--drain", "--timeout", "300", "--reason", "zfs snapshot"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: site.events("hold.set"), "the hold")

        short = run_admin(site, "hold", "--drain", "--timeout", "1", "--reason", "zfs snapshot")
        assert short.returncode == 1, short  # at its timeout: what still runs
        assert short.stdout.count("pid ") >= 2, short.stdout
        assert "alice" in short.stdout and "bob" in short.stdout, short.stdout

        first.finish().check()
        assert drain.poll() is None  # bob's session still runs
        last_result = last.finish()
        rc = drain.wait(120)
    finally:
        first.kill()
        last.kill()
        if drain is not None and drain.poll() is None:
            drain.kill()
    last_result.check()
    out, err = drain.communicate()
    assert rc == 0, (out, err)
    assert "drained" in out
    assert serving(site) == []  # drained means no borg serve of this host is left
    run_admin(site, "release").check_returncode()


# ------------------------------------------------------------------------------------------ priority


def test_priority_restore_starts_while_normal_clients_fill_the_budget_and_queue(site: Site, tmp_path: Path) -> None:
    host(site, max_sessions=3, reserved_sessions=1)
    normal = {f"n{i}": client(site, f"n{i}") for i in range(3)}
    alice, alice_repos = client(site, "alice")
    site.authorize(
        USER,
        (alice.key, "--client alice --priority"),
        *((c.key, f"--client {name}") for name, (c, _) in normal.items()),
    )
    src = harness.make_tree(tmp_path / "src")
    alice.init(alice_repos / "main").check()
    alice.create(alice_repos / "main", "base", src).check()
    alice.init(alice_repos / "second").check()
    for c, repos in normal.values():
        c.init(repos / "r").check()

    backups: dict[str, Running] = {}
    others: list[Running] = []
    try:
        for name, (c, repos) in normal.items():
            backups[name] = c.start_backup(repos / "r", "b", tmp_path / f"{name}.err")
            if name != "n2":
                wait_started(site, name, 2)
        # the third normal client finds the 2 normal slots taken: the reserved one is not for it
        wait_for(lambda: backups["n2"].said("Remote: borg-gate: waiting for a session slot"), "n2 to queue")

        restored = alice.extract(alice_repos / "main", "base", tmp_path / "out")
        restored.check()  # the priority key took the reserved slot while normal clients queued
        assert harness.tree_digest(tmp_path / "out" / src.relative_to("/")) == harness.tree_digest(src)
        assert len(started(site, "n2")) == 1 and backups["n2"].running

        # all 3 slots busy (n0, n1 and a priority backup); n2 queued first, a priority restore second
        others.append(alice.start_backup(alice_repos / "second", "p", tmp_path / "p.err"))
        wait_started(site, "alice", 5)
        into = tmp_path / "out2"
        into.mkdir()
        restore = Running(
            alice, [alice.borg, "extract", f"{alice.url(alice_repos / 'main')}::base"], tmp_path / "r.err", cwd=into
        )
        others.append(restore)
        wait_for(lambda: restore.said("waiting for a session slot"), "the priority restore to queue")
        backups["n0"].finish().check()  # one slot frees: the priority queue goes first
        restore.finish(b"").check()
        backups["n1"].finish().check()
        others[0].finish().check()
        backups["n2"].finish().check()
    finally:
        for proc in [*backups.values(), *others]:
            proc.kill()
    restore_started = started(site, "alice")[5]
    assert restore_started["ts"] < started(site, "n2")[1]["ts"]  # the later priority waiter went first


# ------------------------------------------------------------------------------------------ one repository


def same_repository(site: Site, tmp_path: Path, borg: str, *, rest: bool) -> tuple[Outcome, Outcome]:
    """8 hosts into one repository at once: through a forced plain borg serve, then the gate."""
    src = busy.source(tmp_path / "src")
    hosts = [Client(site, site.key(f"host{i}"), borg, rest) for i in range(8)]
    admin_client = Client(site, site.key("admin"), borg, rest)
    where = site.repo_dir("shared", owner=USER)

    plain_repo = where / "plain"
    busy.serve_plainly(site, [admin_client, *hosts], plain_repo)
    admin_client.init(plain_repo).check()
    plain = busy.same_repo_creates(hosts, plain_repo, src)
    made = {f"host{i}" for i, r in enumerate(plain.results) if r.returncode == 0}
    # every success is in the repository; b22 may fail a create after its commit (a lock gone: ObjectNotFound)
    assert made <= set(admin_client.names(plain_repo)), plain.summary()

    gate_repo = where / "gated"
    busy.serve_through_gate(site, [admin_client, *hosts], gate_repo)
    admin_client.init(gate_repo).check()
    gated = busy.same_repo_creates(hosts, gate_repo, src)
    assert admin_client.names(gate_repo) == sorted(f"host{i}" for i in range(8)), gated.summary()
    print(f"\nplain borg serve: {plain.summary()}\ngate:             {gated.summary()}", file=sys.stderr)
    return plain, gated


def test_eight_borg1_clients_into_one_repository_all_succeed_through_the_gate(site: Site, tmp_path: Path) -> None:
    _, gated = same_repository(site, tmp_path, harness.BORG1, rest=False)
    assert gated.ok == 8, gated.summary()
    assert {e["budget"] for e in site.events("session.queued")} == {"repo"}  # they queued for the repository


def test_eight_borg22_rest_clients_into_one_repository_all_succeed_through_the_gate(
    site: Site, tmp_path: Path, borg22: str
) -> None:
    _, gated = same_repository(site, tmp_path, borg22, rest=True)
    assert gated.ok == 8, gated.summary()
    assert {e["budget"] for e in site.events("session.queued")} == {"repo"}  # they queued for the repository


def test_two_spellings_of_one_repository_share_one_queue(site: Site, tmp_path: Path, borg22: str) -> None:
    """rest:// names the repository on the command line: a symlink or ``..`` reaches the same queue."""
    host(site, borg22)
    c, repos = client(site, "alice", borg22, rest=True)
    site.authorize(USER, (c.key, f"--client alice --borg borg22 --restrict-to-path {repos}"))
    (repos / "link").symlink_to(repos)
    c.init(repos / "main").check()
    src = harness.make_tree(tmp_path / "src")
    before = len(started(site, "alice"))  # repo-create made 3 connections
    first = c.start_backup(repos / "main", "a0", tmp_path / "a0.err")
    spellings = [repos / "link" / "main", repos / "link" / ".." / "main"]
    jobs = [lambda p=p, i=i: c.create(p, f"a{i + 1}", src) for i, p in enumerate(spellings)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        try:
            wait_started(site, "alice", before + 1)
            pending = [pool.submit(job) for job in jobs]
            wait_for(lambda: len(site.events("session.queued")) >= 2, "both other spellings to queue")
            # host and client budgets had room: the repository queued them
            assert len(started(site, "alice")) == before + 1
            first.finish().check()
        finally:
            first.kill()  # else the pool would wait for creates queued behind it
        results = [f.result() for f in pending]
    for result in results:
        result.check()
    assert c.names(repos / "main") == ["a0", "a1", "a2"]


# ------------------------------------------------------------------------------------------ rest:// and holds

PAUSER = """\
import os, pathlib, sys, time
here = pathlib.Path(sys.argv[1])
n = len(list(here.glob("conn-*"))) + 1
(here / f"conn-{n}").touch()
if n == int(sys.argv[2]):
    (here / "paused").touch()
    while not (here / "go").exists():
        time.sleep(0.02)
os.execvp("ssh", ["ssh", *sys.argv[3:]])
"""


def paused_before(client: Client, tmp_path: Path, connection: int) -> tuple[dict[str, str], Callable[[], None], Path]:
    """A rest:// client's ssh that stops before its ``connection``-th connection until resumed.

    borgstore runs BORGSTORE_RSH afresh for every connection, so the client itself is where
    one command's connections can be told apart and held back, without timing guesses.
    """
    here = tmp_path / "pauser"
    here.mkdir()
    script = here / "ssh.py"
    script.write_text(PAUSER)
    env = client.env(rsh=(harness.SYSTEM_PYTHON, str(script), str(here), str(connection)))
    return env, (here / "go").touch, here / "paused"


def test_borg22_command_interrupted_by_a_hold_fails_with_a_clear_line(site: Site, tmp_path: Path, borg22: str) -> None:
    """repo-create makes 3 connections; a hold set between the 1st and the 2nd fails it, and says why.

    With ``--wait 0`` the held 2nd connection is refused at once; borgstore retries a lost
    connection 3 times, 5 s apart, then gives up, showing the tail of the server's stderr.
    """
    host(site, borg22)
    c, repos = client(site, "alice", borg22, rest=True)
    site.authorize(USER, (c.key, "--client alice --borg borg22 --wait 0"))
    env, resume, paused = paused_before(c, tmp_path, 2)
    proc = subprocess.Popen(
        [borg22, "-r", c.url(repos / "r"), "repo-create", "--encryption=none"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=site.borg_env(c.key, env),
    )
    try:
        wait_for(paused.exists, "the client between its 1st and 2nd connection")
        assert run_admin(site, "hold", "--reason", "offsite sync").returncode == 0
        resume()
        _, err = proc.communicate(timeout=120)  # a failure within borgstore's retries, not a hang
    finally:
        if proc.poll() is None:
            proc.kill()
        run_admin(site, "release")
    result = Result(proc.args, proc.returncode, "", err)  # type: ignore[arg-type]
    assert result.returncode != 0, result
    assert "borg-gate: server busy: on hold: offsite sync" in result.stderr, result.stderr
    assert "exited with code 213" in result.stderr or "could not be reestablished" in result.stderr, result.stderr
    assert len(site.events("session.started")) == 1  # the 1st connection, before the hold
    assert {e["exit_code"] for e in site.events("connection.refused")} == {213}


def test_status_and_metrics_show_a_hold(site: Site) -> None:
    host(site)
    assert run_admin(site, "hold", "--client", "alice", "--reason", "disk swap").returncode == 0
    try:
        status = run_admin(site, "status", "--json")
        metrics = run_admin(site, "metrics")
    finally:
        run_admin(site, "release", "--client", "alice")
    assert status.returncode == 0, status.stderr
    holds = json.loads(status.stdout)["holds"]
    assert [(h["scope"], h["reason"]) for h in holds] == [("client:alice", "disk swap")]
    assert time.time() - 120 < holds[0]["since"] <= time.time()
    assert 'borg_gate_hold{scope="client:alice"} 1' in metrics.stdout, metrics.stdout
    after = json.loads(run_admin(site, "status", "--json").stdout)
    assert after["holds"] == []
