"""Issue 6 end to end: lines from ``borg-gate authorize --install`` work in a real sshd, and
authkeys reads hostile authorized_keys lines the way that sshd does.

The real OpenSSH sshd on 127.0.0.1 is the oracle: for each hostile line, what authkeys
predicts (refused, a forced command and its output, or the client's own command) is what
an ssh login with the key actually gets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from borg_gate.admin import authkeys
from tests import platform_facts
from tests.borg_cli import Cli
from tests.e2e import harness
from tests.e2e.harness import ClientKey, Site

USER = "bgate-a"


def authorize(site: Site, key: ClientKey, *options: str) -> subprocess.CompletedProcess[str]:
    return harness.run(
        [
            str(site.gate),
            "authorize",
            "--gate",
            str(site.gate),
            "--config",
            str(site.config_path),
            "--install",
            str(site.sshd.keys_dir / USER),
            *options,
            f"{key.private}.pub",
        ]
    )


def test_installed_lines_give_working_borg_sessions(site: Site, tmp_path: Path) -> None:
    alice, bob = site.key("alice"), site.key("bob")
    alice_repos = site.repo_dir("alice", owner=USER)
    bob_repos = site.repo_dir("bob", owner=USER)
    site.sshd.write_keys(USER, ["# keys of " + USER])
    first = authorize(site, alice, "--client", "alice")
    assert "added" in first.stderr
    authorize(site, bob, "--client", "bob", "--borg", "borg2", "--max-sessions", "1")
    again = authorize(site, alice, "--client", "alice")
    assert "already present" in again.stderr
    assert again.stdout == first.stdout

    src = harness.make_tree(tmp_path / "src")
    repo = site.repo_url(USER, alice_repos / "main")
    site.borg(["init", "--encryption=none", repo], alice).check()
    site.borg(["create", f"{repo}::one", str(src)], alice).check()
    assert site.borg(["list", "--short", repo], alice).check().stdout.split() == ["one"]

    b2 = {"borg": harness.BORG2}
    cli = Cli(platform_facts.debian_borg2())
    repo2 = cli.url(f"{USER}@127.0.0.1:{site.sshd.port}", bob_repos / "main")
    site.borg(cli.init(repo2), bob, **b2).check()
    site.borg(cli.create(repo2, "one", str(src)), bob, **b2).check()

    # the same key again with other options: replaced in place, and sshd uses the new line at once
    replaced = authorize(site, alice, "--client", "alice", "--append-only")
    assert "replaced line 2" in replaced.stderr
    site.borg(["create", f"{repo}::two", str(src)], alice).check()

    started = site.events("session.started")
    by_client = {c: [e for e in started if e["client"] == c] for c in ("alice", "bob")}
    assert all(e["argv"][:2] == [harness.BORG1, "serve"] for e in by_client["alice"])
    assert f"--restrict-to-path={alice_repos}" in by_client["alice"][0]["argv"]
    assert "--append-only" not in by_client["alice"][0]["argv"]
    assert "--append-only" in by_client["alice"][-1]["argv"]
    assert {e["binary"] for e in by_client["bob"]} == {harness.BORG2}

    # and check finds nothing wrong with what authorize wrote, nor with the site around it
    checked = harness.run(
        [
            str(site.gate),
            "check",
            "--config",
            str(site.config_path),
            "--sshd-config",
            str(site.sshd.base / "sshd_config"),
            "--authorized-keys",
            str(site.sshd.keys_dir / USER),
            "--quiet",
        ],
        check=False,
    )
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines() == ["borg-gate check: 0 error(s), 0 warning(s) in 2 key line(s) of 1 file(s)"]


def outcome(result: harness.Result) -> str:
    if result.returncode == 255 and "Permission denied" in result.stderr:
        return "refused"
    return result.stdout.strip()


def predicted(raw: bytes, key: ClientKey) -> str:
    """What authkeys says sshd does with this file for this key: refused, or what runs."""
    blob = authkeys.read_key(key.public_line).blob
    for parsed in authkeys.parse_file(raw):
        if isinstance(parsed, authkeys.KeyLine) and parsed.key.blob == blob:
            if parsed.options.command is None:
                return "client"  # sshd runs the client's own command: echo client
            try:
                words = authkeys.split_command(parsed.options.command)
            except authkeys.ShellError:
                return ""  # the shell fails before running anything: nothing on stdout
            assert words[0] == "echo"
            return " ".join(words[1:])
    return "refused"


def hostile_lines(key: ClientKey) -> dict[str, bytes]:
    k = key.public_line
    typ, b64, comment = k.split(" ", 2)
    other_type = "ssh-rsa"
    return {
        "plain": f'command="echo forced",restrict {k}\n'.encode(),
        "options in the comment": f'restrict {k} command="echo smuggled"\n'.encode(),
        "escaped quotes": f'command="echo \\"a b\\" c",restrict {k}\n'.encode(),
        "backslashes": f'command="echo \\\\"x",no-pty {k}\n'.encode(),
        "shell syntax error": f'command="echo \'x",restrict {k}\n'.encode(),
        "prefix flag": f'restrictx,command="echo x" {k}\n'.encode(),
        "leading comma": f',command="echo leading" {k}\n'.encode(),
        "comma before the key": f'command="echo trailing", {k}\n'.encode(),
        "upper case": f'COMMAND="echo upper",RESTRICT {k}\n'.encode(),
        "tab": f'command="echo tab"\t{k}\n'.encode(),
        "crlf": f'command="echo crlf",restrict {k}\r\n'.encode(),
        "nul first": f'\0command="echo nul",restrict {k}\n'.encode(),
        "nul in comment": f'command="echo nul",restrict {typ} {b64} c\0junk\n'.encode(),
        "newline in quotes": f'command="echo a\n{k}",restrict\n'.encode(),
        "two commands": f'command="echo a",command="echo b" {k}\n'.encode(),
        "type mismatch": f"{other_type} {b64} {comment}\n".encode(),
        "long comment": f'command="echo long",restrict {k} {"x" * 200_000}\n'.encode(),
        "duplicate, first wins": f'command="echo first" {k}\ncommand="echo second" {k}\n'.encode(),
        "bad line then good": f'command="echo a {k}\ncommand="echo good" {k}\n'.encode(),
        "expired": f'expiry-time="20000101",command="echo expired" {k}\n'.encode(),
        "no restrict, no command": f"{k}\n".encode(),
    }


EXPECTED_BY_SSHD_ONLY = {"expired"}  # expiry is an authorization check, not parsing: authkeys keeps the line


def test_hostile_lines_are_read_as_sshd_reads_them(site: Site) -> None:
    alice = site.key("alice")
    path = site.sshd.keys_dir / USER
    seen = {}
    for what, raw in hostile_lines(alice).items():
        path.write_bytes(raw)
        path.chmod(0o644)
        got = outcome(site.ssh(USER, alice, "echo client"))
        seen[what] = got
        if what in EXPECTED_BY_SSHD_ONLY:
            assert got == "refused", what
            assert predicted(raw, alice) == "expired"
            continue
        assert got == predicted(raw, alice), (what, got)
    # the oracle itself said something in each direction
    assert seen["plain"] == "forced"
    assert seen["options in the comment"] == "client"
    assert seen["escaped quotes"] == "a b c"
    assert seen["prefix flag"] == "refused"
    assert seen["duplicate, first wins"] == "first"
    assert seen["backslashes"] == '"x'
    assert seen["shell syntax error"] == ""


@pytest.mark.parametrize("quoted", ["/srv/with space/{client}", "/srv/semi;colon/$HOME/{client}"])
def test_quoted_confinement_reaches_the_gate_unchanged(site: Site, quoted: str) -> None:
    """A path that needs shell quoting arrives in borg serve's argv exactly as given."""
    alice = site.key("alice")
    site.sshd.write_keys(USER, [])
    authorize(site, alice, "--client", "alice", "--restrict-to-path", quoted)
    result = site.borg(["list", site.repo_url(USER, "/nonexistent/repo")], alice)
    assert result.returncode != 0
    started = site.events("session.started")
    assert started[-1]["argv"][-1] == "--restrict-to-path=" + quoted.replace("{client}", "alice")
