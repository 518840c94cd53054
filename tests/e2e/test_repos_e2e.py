"""Issue 12 end to end: real backups through the real sshd show up in `repos`, in `metrics` and in node_exporter.

borg 1.x (Debian's) over ssh:// and borg 2.0.0b22 over rest:// (built from PyPI by
tests/borgs/build), both in supervise mode; versions are read from the binaries, so the
suite runs as well on Debian 12 (1.2.4) as on 13 (1.4.0).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import repo_layouts
from tests.e2e import harness
from tests.e2e.harness import Site

# the installed gate's admin command (as root or a user) and a real client session that stays open
from tests.e2e.test_observability_e2e import admin, alice_repo, holding_client, serve_processes
from tests.node_exporter import scrape
from tests.node_exporter import serving as node_exporter_serving

BUILD = harness.REPO_ROOT / "tests" / "borgs" / "build"
OLD = 1_600_000_000.0


def version_of(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


@pytest.fixture(scope="module")
def borg22() -> str:
    out = subprocess.run([harness.SYSTEM_PYTHON, str(BUILD), "2.0.0b22"], capture_output=True, text=True, check=True)
    (path,) = (line.split()[1] for line in out.stdout.splitlines() if line.startswith("2.0.0b22 "))
    return path


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKOeLIIMLFtASLbfjaMBmgacNZdzYVxdPmQ9st8jHngx test@client"


def repos_json(site: Site, user: str | None = None, *args: str) -> dict[str, Any]:
    out = admin(site, "repos", "--json", *args, user=user)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Debian's node_exporter on 127.0.0.1 with only the textfile collector, reading a test dir."""
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    with node_exporter_serving(textfile, tmp_path / "node_exporter.log") as url:
        yield textfile, url


class Client:
    """One client's borg through the site: borg 1 over ssh://, borg 2.0b22 over rest://."""

    def __init__(self, site: Site, name: str, user: str, borg: str, rest: bool) -> None:
        self.site, self.name, self.user, self.borg, self.rest = site, name, user, borg, rest
        self.key = site.key(name)
        self.repos = site.repo_dir(name, owner=user)

    def url(self, repo: str) -> str:
        scheme = "rest" if self.rest else "ssh"
        sep = "/" if self.rest else ""  # rest://host//abs/path
        return f"{scheme}://{self.user}@127.0.0.1:{self.site.sshd.port}{sep}{self.repos / repo}"

    def run(self, verb: str, repo: str, *args: str) -> harness.Result:
        env = {}
        if self.rest:
            env["BORGSTORE_RSH"] = shlex.join(["ssh", *harness.ssh_options(self.key), "-p", str(self.site.sshd.port)])
            env["BORG_REMOTE_PATH"] = "borg22"
            cmd = ["-r", self.url(repo), verb, *args]
        elif args and verb == "create":
            cmd = [verb, f"{self.url(repo)}::{args[0]}", *args[1:]]
        else:
            cmd = [verb, self.url(repo), *args]
        return self.site.borg(cmd, self.key, borg=self.borg, env=env)


def test_real_backups_show_in_repos_metrics_and_node_exporter(
    site: Site, borg22: str, node_exporter: tuple[Path, str], tmp_path: Path
) -> None:
    site.write_config(
        gate={"mode": "supervise"},
        borg__binaries={"borg": harness.BORG1, "borg22": {"path": borg22, "version": version_of(borg22)}},
    )
    borg1_format = "borg1" if version_of(harness.BORG1).startswith("1.") else "unexpected"
    alice = Client(site, "alice", "bgate-a", harness.BORG1, rest=False)
    bob = Client(site, "bob", "bgate-b", borg22, rest=True)
    site.authorize("bgate-a", (alice.key, "--client alice"))
    site.authorize("bgate-b", (bob.key, "--client bob --borg borg22"))
    src = harness.make_tree(tmp_path / "src")

    started = time.time()
    alice.run("init", "main", "--encryption=none").check()
    alice.run("create", "main", "a1", str(src)).check()
    bob.run("repo-create", "store", "--encryption=none").check()
    bob.run("create", "store", "a1", str(src)).check()
    done = time.time()

    # an old repository nobody touched, a broken one, a symlink loop
    old = repo_layouts.borg1(alice.repos / "old", transactions=9, mtime=OLD)
    broken = alice.repos / "broken"
    (broken / "data" / "0").mkdir(parents=True)
    (broken / "README").write_bytes(repo_layouts.README)
    (alice.repos / "loop").mkdir()
    (alice.repos / "loop" / "self").symlink_to("..")
    uid, gid = harness.uid_gid("bgate-a")
    for p in [old, broken, alice.repos / "loop", *old.rglob("*"), *broken.rglob("*")]:
        os.chown(p, uid, gid, follow_symlinks=False)

    data = repos_json(site)
    found = {os.path.relpath(r["path"], site.repos): r for r in data["repos"]}
    assert set(found) == {"alice/main", "alice/old", "bob/store"}
    main, store = found["alice/main"], found["bob/store"]
    assert (main["client"], main["format"], store["client"], store["format"]) == ("alice", borg1_format, "bob", "borg2")
    assert started - 2 <= main["last_change"] <= done + 2 and main["transaction"] >= 1
    assert started - 2 <= store["last_change"] <= done + 2 and store["archives"] == 1
    assert found["alice/old"]["last_change"] == OLD and found["alice/old"]["transaction"] == 9
    for repo in found.values():
        du = subprocess.run(["du", "-s", "-B1", "-P", repo["path"]], capture_output=True, text=True, check=True)
        assert repo["size_bytes"] == int(du.stdout.split()[0])
    problems = {os.path.relpath(p["path"], site.repos): p["problem"] for p in data["problems"]}
    assert "no borg config" in problems["alice/broken"]
    assert problems["alice/loop/self"] == "a symlink, not followed"
    clients = {c["client"]: c for c in data["clients"]}
    for c in clients.values():  # supervise mode: the session's end, exit code and upload
        assert started - 2 <= c["last_start"] <= done + 2 and started - 2 <= c["last_end"] <= done + 2
        assert c["last_exit_code"] == 0 and c["last_success"] == c["last_end"] and c["last_bytes_up"] > 0

    # borg 2: a compaction does not move the last archive's time, a create does
    first = store["last_change"]
    bob.run("delete", "store", "a1").check()
    bob.run("compact", "store").check()
    after_compact = {os.path.relpath(r["path"], site.repos): r for r in repos_json(site)["repos"]}["bob/store"]
    assert after_compact["last_change"] is None and after_compact["archives"] == 0  # a1 deleted: none left
    bob.run("create", "store", "a2", str(src)).check()
    bob.run("create", "store", "a3", str(src)).check()
    a3 = {os.path.relpath(r["path"], site.repos): r for r in repos_json(site)["repos"]}["bob/store"]
    assert a3["archives"] == 2 and a3["last_change"] > first
    bob.run("compact", "store").check()
    compacted = {os.path.relpath(r["path"], site.repos): r for r in repos_json(site)["repos"]}["bob/store"]
    assert compacted["last_change"] == a3["last_change"] and compacted["archives"] == 2
    # borg 1: a compaction commits, so it does move the transaction (as documented)
    alice.run("compact", "main").check()
    main2 = {os.path.relpath(r["path"], site.repos): r for r in repos_json(site)["repos"]}["alice/main"]
    assert main2["transaction"] > main["transaction"]

    # the same figures through node_exporter's textfile collector, scraped over HTTP
    textfile, url = node_exporter
    final = repos_json(site, None, *site.key_files())  # who serves which client: the keys sshd reads
    out = admin(site, "metrics", "--output", str(textfile / "borg-gate.prom"), *site.key_files())
    assert out.returncode == 0, out.stderr
    samples = scrape(url)
    for r in final["repos"]:
        labels = (("client", r["client"]), ("format", r["format"]), ("repo", r["path"]))
        assert samples[("borg_gate_repo_last_change_timestamp_seconds", labels)] == pytest.approx(r["last_change"])
        assert samples[("borg_gate_repo_size_bytes", labels[:1] + labels[2:])] == r["size_bytes"]
    store_labels = (("client", "bob"), ("repo", str(bob.repos / "store")))
    assert samples[("borg_gate_repo_archives", store_labels)] == 2
    for c in final["clients"]:
        key = (("client", c["client"]),)
        assert samples[("borg_gate_client_last_success_timestamp_seconds", key)] == pytest.approx(c["last_success"])
        assert samples[("borg_gate_client_last_session_start_timestamp_seconds", key)] == pytest.approx(c["last_start"])
    assert samples[("borg_gate_sessions_started_total", (("client", "bob"),))] >= 5
    assert ("node_textfile_scrape_error", ()) in samples and samples[("node_textfile_scrape_error", ())] == 0

    # another gate user learns nothing of the clients: their counters are 0600 and their roots
    # 0700; told of them by an authorized_keys file, she meets the roots' modes, never a crash
    other = repos_json(site, user="bgate-c")
    assert (other["repos"], other["problems"]) == ([], [])
    keys = site.root / "other-keys"
    keys.write_text("".join(f'command="borg-gate --client {c}",restrict {KEY}\n' for c in ("alice", "bob")))
    keys.chmod(0o644)
    out = admin(site, "repos", "--json", "--authorized-keys", str(keys), user="bgate-c")
    assert out.returncode == 0, out.stderr
    told = json.loads(out.stdout)
    assert told["repos"] == []
    assert {os.path.relpath(p["path"], site.repos): p["problem"] for p in told["problems"]} == {
        "alice": "Permission denied",
        "bob": "Permission denied",
    }


def test_a_session_holding_a_repository_is_shown_with_its_pid(site: Site, tmp_path: Path) -> None:
    alice, _repos, repo = alice_repo(site, "--client alice")
    go, client, results = holding_client(site, alice, repo, tmp_path)
    try:
        (main,) = repos_json(site)["repos"]
        (serve,) = serve_processes(site)
        assert main["sessions"] == [serve.pid] and main["locked"]  # exec mode: the gate became borg serve
        assert f"  {serve.pid}" in admin(site, "repos").stdout
    finally:
        go.touch()
        client.join(timeout=300)
    results[0].check()
    (main,) = repos_json(site)["repos"]
    assert main["sessions"] == [] and not main["locked"]
