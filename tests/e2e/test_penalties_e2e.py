"""OpenSSH 9.8+ PerSourcePenalties: a refusal by the gate never penalises the client's address.

A penalised address is refused before authentication for a while; behind NAT that would be a
whole office without backups. sshd penalises only what its pre-authentication child reports
(failed or missing authentication, a crash, LoginGraceTime exceeded); once a key is accepted,
the forced command's exit status is not tracked. Shown here with a private sshd keeping its
shipped penalties (the shared test sshd exempts loopback): many gate refusals from one address
leave it served, while a few attempts with a key that was removed from authorized_keys get it
dropped ("penalty: failed authentication" in sshd's log). (The harness's own probe for the
listening port is a connection without authentication: a 1 s "noauth" penalty, far below min.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import platform_facts
from tests.e2e import harness
from tests.e2e.harness import Site

USER = "bgate-a"
REFUSALS = 20  # well past what authfail:5s with min:15s would tolerate (4)


@pytest.fixture
def penalised_site(e2e_base: Path, gate_bin: Path) -> Iterator[Site]:
    if not harness.has_penalties():
        pytest.skip(f"platform fact: OpenSSH {platform_facts.sshd_version()} has no PerSourcePenalties (9.8+)")
    base = e2e_base / "penalties"
    sshd = harness.Sshd(base / "sshd")
    sshd.start("PerSourcePenalties authfail:5s noauth:1s min:15s max:600s", penalties=True)
    try:
        site = Site(sshd=sshd, gate=gate_bin, root=base / "site")
        site.setup()
        yield site
    finally:
        sshd.stop()


def test_gate_refusals_never_count_but_a_removed_key_does(penalised_site: Site) -> None:
    site = penalised_site
    alice, removed = site.key("alice"), site.key("removed")
    site.repo_dir("alice", owner=USER)
    site.authorize(USER, (alice, "--client alice"), (removed, "--client alice"))
    assert site.ssh(USER, removed, "borg serve").returncode == 0  # borg serve, ended by stdin's EOF
    site.authorize(USER, (alice, "--client alice"))  # the sysadmin removes that key
    for command in itertools.islice(itertools.cycle(["sh -c id", "scp -t /tmp", None, "borg list /"]), REFUSALS):
        refused = site.ssh(USER, alice, command)
        assert refused.returncode == 210, refused  # the gate's refusal, every time: never dropped by sshd
    served = site.borg(["init", "--encryption=none", site.repo_url(USER, site.repos / "alice" / "r")], alice)
    served.check()
    assert len(site.events("connection.refused")) == REFUSALS
    log = site.sshd.log_path.read_text()
    assert "penalty: failed authentication" not in log and "drop connection" not in log

    # What does count: a key sshd no longer accepts (removed from authorized_keys), or no key at all.
    for _ in range(6):
        assert site.ssh(USER, removed, "borg serve").returncode == 255
    dropped = site.ssh(USER, alice, "borg serve")
    assert dropped.returncode == 255, dropped  # even the good key: the address is penalised
    assert "penalty: failed authentication" in site.sshd.log_path.read_text()
