"""Issue 2 end to end with Debian's borg 1.2 and borg2: backups through sshd and the gate, refusals the client shows."""

from __future__ import annotations

from pathlib import Path

from tests import platform_facts
from tests.borg_cli import Cli
from tests.e2e import harness
from tests.e2e.harness import Site


def test_borg12_init_create_list_extract(site: Site, tmp_path: Path) -> None:
    alice = site.key("alice")
    repos = site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, "--client alice"))
    repo = site.repo_url("bgate-a", repos / "main")
    src = harness.make_tree(tmp_path / "src")

    site.borg(["init", "--encryption=none", repo], alice).check()
    site.borg(["create", "--info", f"{repo}::first", str(src)], alice).check()
    listing = site.borg(["list", "--short", repo], alice).check()
    assert listing.stdout.split() == ["first"]

    out = tmp_path / "restore"
    out.mkdir()
    extracted = site.borg(["extract", f"{repo}::first"], alice, cwd=out).check()
    assert extracted.returncode == 0
    assert harness.tree_digest(out / src.relative_to("/")) == harness.tree_digest(src)

    started = site.events("session.started")
    assert len(started) == 4
    assert all(e["client"] == "alice" and e["user"] == "bgate-a" for e in started)
    assert started[0]["argv"] == ["/usr/bin/borg", "serve", f"--restrict-to-path={repos}"]
    assert "--info" in started[1]["argv"]  # the client's -v/--info reaches borg serve, vetted
    assert all(e["key"] and e["key"].startswith("SHA256:") for e in started)  # ExposeAuthInfo


def test_borg2_client_and_server(site: Site, tmp_path: Path) -> None:
    bob = site.key("bob")
    repos = site.repo_dir("bob", owner="bgate-b")
    site.authorize("bgate-b", (bob, "--client bob --borg borg2"))
    src = harness.make_tree(tmp_path / "src")
    b2 = {"borg": harness.BORG2}
    cli = Cli(platform_facts.debian_borg2())  # Debian 12's 2.0.0b5 says rcreate, 13's b19 repo-create
    repo = cli.url(f"bgate-b@127.0.0.1:{site.sshd.port}", repos / "main")

    site.borg(cli.init(repo), bob, **b2).check()
    site.borg(cli.create(repo, "first", str(src)), bob, **b2).check()
    assert site.borg(cli.names(repo), bob, **b2).check().stdout.split() == ["first"]
    out = tmp_path / "restore"
    out.mkdir()
    site.borg(cli.extract(repo, "first"), bob, cwd=out, **b2).check()
    assert harness.tree_digest(out / src.relative_to("/")) == harness.tree_digest(src)
    # the client sent plain "borg serve": the key's --borg picked borg2
    started = site.events("session.started")
    assert {e["binary"] for e in started} == {harness.BORG2}
    assert all(e["command"].startswith("borg serve") for e in started)


def test_repository_outside_confinement_is_refused_and_shown(site: Site, tmp_path: Path) -> None:
    alice = site.key("alice")
    site.repo_dir("alice", owner="bgate-a")
    other = site.repo_dir("mallory", owner="bgate-a")  # exists and is writable, but not alice's
    site.authorize("bgate-a", (alice, "--client alice"))
    for path in (other / "repo", site.repos / "alice" / ".." / "mallory" / "repo2", Path("/tmp/elsewhere")):
        result = site.borg(["init", "--encryption=none", site.repo_url("bgate-a", path)], alice)
        assert result.returncode == 2, result
        assert "Repository path not allowed" in result.stderr, result.stderr
    assert not (other / "repo").exists()


def test_hostile_remote_path_is_refused_and_the_client_shows_why(site: Site) -> None:
    alice = site.key("alice")
    repos = site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, "--client alice"))
    repo = site.repo_url("bgate-a", repos / "r")
    cases = {
        "borg --debug-profile=/tmp/x": "only borg serve is allowed here, not 'borg --debug-profile=/tmp/x'",
        "sh -c id;borg": "only borg serve is allowed here",
        "borg3": "this server has no 'borg3'; it offers: borg, borg2",
    }
    for remote_path, message in cases.items():
        result = site.borg(["list", repo], alice, env={"BORG_REMOTE_PATH": remote_path})
        assert result.returncode == 2
        assert f"Remote: borg-gate: {message}" in result.stderr, result.stderr
    refused = site.events("connection.refused")
    assert [e["exit_code"] for e in refused] == [210, 210, 211]


def test_plain_ssh_scp_and_interactive_are_refused(site: Site) -> None:
    alice = site.key("alice")
    site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, "--client alice"))
    for command, code, message in [
        (None, 210, "borg-gate: interactive login is not allowed"),
        ("scp -t /tmp", 210, "borg-gate: only borg serve is allowed here, not 'scp -t'"),
        ("rsync --server -e.Lsfx . /", 210, "borg-gate: only borg serve is allowed here"),
        ("borg serve --restrict-to-path /", 210, "borg-gate: option --restrict-to-path is set by the server"),
        ("borg list /srv", 210, "borg-gate: only borg serve is allowed here, not 'borg list'"),
    ]:
        result = site.ssh("bgate-a", alice, command)
        assert result.returncode == code, (command, result)
        assert result.stderr.startswith(message), (command, result.stderr)
        assert result.stdout == ""


def test_broken_config_fails_closed_and_the_client_shows_why(site: Site) -> None:
    alice = site.key("alice")
    repos = site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, "--client alice"))
    site.write_config(f'[gate]\nstate_dir = "{site.state_dir}"\nmax_sesions = 3\n')
    result = site.borg(["list", site.repo_url("bgate-a", repos / "r")], alice)
    assert result.returncode == 2
    assert f"Remote: borg-gate: config {site.config_path}:3: gate.max_sesions: unknown key" in result.stderr


def test_key_the_target_borg_cannot_honour_is_refused(site: Site) -> None:
    alice = site.key("alice")
    repos = site.repo_dir("alice", owner="bgate-a")
    site.authorize("bgate-a", (alice, "--client alice --permissions read-only"))
    result = site.borg(["init", "--encryption=none", site.repo_url("bgate-a", repos / "r")], alice)
    assert result.returncode == 2
    shown = f"Remote: borg-gate: this key is read-only, which borg (borg {platform_facts.debian_borg()}) cannot enforce"
    assert shown in result.stderr
    assert not (repos / "r").exists()
