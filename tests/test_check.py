"""borg-gate check: each kind of unsafe or broken key line, config and sshd setting is found.

Real files in a temp dir, the real borg binaries (versions detected by running them), real
ssh-keygen keys. Each test builds the smallest site showing one finding and asserts the
finding's code, severity and line; the CLI tests check the output formats and exit codes.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from borg_gate.admin import check
from borg_gate.admin.check import ERROR, INFO, WARNING, CheckReport, Finding
from tests import platform_facts
from tests.sshkeys import dsa_line
from tests.testhost import GateHost

GATE = str(Path(sys.executable).with_name("borg-gate"))
EXAMPLE = Path(__file__).resolve().parents[1] / "authorized_keys.example"


@pytest.fixture(scope="module")
def pubkeys(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("keys")
    out = []
    for i in range(4):
        path = d / f"k{i}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"k{i}@test", "-f", str(path)], check=True)
        out.append(Path(f"{path}.pub").read_text().strip())
    out.append(dsa_line())  # OpenSSH 10's ssh-keygen makes no DSA keys
    return out


@dataclass
class Site(GateHost):
    """A host for ``check`` (tests/testhost.GateHost): the real borg binaries, an sshd_config, key lines."""

    keys: list[str]

    @property
    def sshd_config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def keys_file(self) -> Path:
        return self.root / "authorized_keys"

    def sections(self) -> dict[str, dict[str, Any]]:
        return {**super().sections(), "borg.binaries": {"borg": "/usr/bin/borg", "borg2": "/usr/bin/borg2"}}

    def client_dir(self, *clients: str) -> None:
        for c in clients:
            (self.repos / c).mkdir(parents=True, exist_ok=True)

    def line(self, options: str, key: int = 0) -> str:
        return f'command="{GATE} {options}",restrict {self.keys[key]}'

    def run(self, lines: Sequence[str], **kw: object) -> CheckReport:
        self.keys_file.write_text("".join(f"{x}\n" for x in lines))
        self.keys_file.chmod(0o600)
        return check.run_check(str(self.config_path), [str(self.keys_file)], str(self.sshd_config), **kw)  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path, pubkeys: list[str]) -> Site:
    s = Site(tmp_path, pubkeys)
    s.state_dir.mkdir()
    s.log_file.parent.mkdir()
    s.repos.mkdir(mode=0o755)
    s.write_config()
    s.sshd_config.write_text("ExposeAuthInfo yes\nMaxStartups 100:30:200\n")
    return s


def problems(report: CheckReport) -> list[tuple[str, str, int | None]]:
    return [(f.severity, f.code, f.line) for f in report.findings if f.severity != INFO]


def only(report: CheckReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.findings
    return found[0]


# --------------------------------------------------------------------------- clean


def test_a_gate_line_is_clean(site: Site) -> None:
    site.client_dir("web1")
    report = site.run([site.line("--client web1")])
    assert problems(report) == []
    assert report.exit_code == 0
    versions = [f.message for f in report.findings if f.code == "binary"]
    assert any(f"borg {platform_facts.debian_borg()}" in m for m in versions)
    assert any(f"borg {platform_facts.debian_borg2()}" in m for m in versions)


def test_each_example_line_is_clean(site: Site) -> None:
    """authorized_keys.example with its /srv/borg moved into the temp dir, line by line and whole."""
    text = EXAMPLE.read_text().replace("/srv/borg", str(site.repos)).replace('command="borg-gate ', f'command="{GATE} ')
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert len(lines) >= 6
    site.client_dir("laptop-anna", "web1", "db1", "db1/postgres", "web2", "nas")
    for line in lines:
        assert problems(site.run([line])) == [], line
    whole = site.run(text.splitlines())
    assert problems(whole) == []
    assert whole.keys == len(lines)


# --------------------------------------------------------------------------- options and command


def test_no_forced_command(site: Site) -> None:
    report = site.run(["# a comment", "", f"restrict {site.keys[0]}"])
    assert problems(report) == [(ERROR, "no-forced-command", 3)]
    assert problems(site.run([site.keys[0]])) == [(ERROR, "not-restricted", 1), (ERROR, "no-forced-command", 1)]
    assert report.exit_code == 2


def test_missing_restrict(site: Site) -> None:
    site.client_dir("a")
    bare = site.line("--client a").replace(",restrict", "")
    first = only(site.run([bare]), "not-restricted")
    assert first.line == 1 and "port-forwarding, agent-forwarding, x11-forwarding, pty, user-rc" in first.message
    report = site.run([site.line("--client a").replace(",restrict", ",restrict,pty")])
    assert "allows pty" in only(report, "not-restricted").message
    no_star = site.line("--client a").replace(
        ",restrict", ",no-port-forwarding,no-agent-forwarding,no-x11-forwarding,no-pty,no-user-rc"
    )
    assert problems(site.run([no_star])) == [(WARNING, "no-restrict", 1)]


def test_options_smuggled_through_the_comment(site: Site) -> None:
    report = site.run([f'{site.keys[0]} command="{GATE} --client a",restrict'])
    assert problems(report) == [(ERROR, "not-restricted", 1), (ERROR, "no-forced-command", 1)]


def test_embedded_newline_splits_into_a_bad_line_and_an_open_key(site: Site) -> None:
    site.client_dir("a")
    report = site.run([f'command="{GATE} --client a\n{site.keys[0]}",restrict'])
    assert problems(report) == [(ERROR, "unparsable", 1), (ERROR, "not-restricted", 2), (ERROR, "no-forced-command", 2)]


def test_crlf_file_is_read_as_sshd_reads_it(site: Site) -> None:
    site.client_dir("a", "b")
    site.keys_file.write_bytes(f"{site.line('--client a')}\r\n{site.line('--client b', 1)}\r\n".encode())
    report = check.run_check(str(site.config_path), [str(site.keys_file)], str(site.sshd_config))
    assert problems(report) == []
    assert report.keys == 2


def test_very_long_line(site: Site) -> None:
    site.client_dir("a")
    report = site.run([site.line("--client a") + " " + "x" * 2_000_000])
    assert problems(report) == []


def test_duplicate_keys(site: Site) -> None:
    site.client_dir("a", "b")
    report = site.run([site.line("--client a"), site.line("--client b", 1), site.line("--client b")])
    dup = only(report, "duplicate-key")
    assert dup.line == 3 and "line 1" in dup.message


@pytest.mark.parametrize(
    ("command", "code", "severity"),
    [
        ("borg serve", "unconfined-borg-serve", ERROR),
        ("/usr/bin/borg serve --append-only", "unconfined-borg-serve", ERROR),
        ("borg serve --restrict-to-path /srv/x", "not-gate", WARNING),
        ("borg2 serve --restrict-to-repository=/srv/x/r", "not-gate", WARNING),
        ("/usr/bin/rrsync -ro /srv", "not-gate", WARNING),
        ("cd /srv/x; borg serve --restrict-to-path /srv/x", "shell", ERROR),
        (f"{GATE} --client a | tee /tmp/x", "shell", ERROR),
        (f"{GATE} --client $USER", "shell", ERROR),
        (f"{GATE} --restrict-to-path /srv/*", "shell", ERROR),
        (f"{GATE} status", "admin-command", ERROR),
        (f"{GATE} --client a --help", "key-options", ERROR),
        (f"{GATE} --client a --bogus", "key-options", ERROR),
        (f"{GATE} --client a --storage-quota 1K", "key-options", ERROR),
        (f"{GATE} --client a --restrict-to-path relative", "key-options", ERROR),
        (f"{GATE} --client a --borg nope", "borg-binary", ERROR),
        (f"{GATE} --client a --permissions write-only", "not-enforceable", ERROR),
        (f"{GATE} --client a --restrict-to-path /srv/{{other}}", "confinement", ERROR),
        ("/nonexistent/borg-gate --client a", "gate-path", ERROR),
        ("bin/borg-gate --client a", "gate-path", WARNING),
    ],
)
def test_forced_commands(site: Site, command: str, code: str, severity: str) -> None:
    site.client_dir("a")
    report = site.run([f'command="{command}",restrict {site.keys[0]}'])
    assert (severity, code, 1) in problems(report), report.findings


def test_gate_not_in_sshds_path(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.client_dir("a")
    monkeypatch.setattr(check, "SSHD_PATH", str(site.root))
    report = site.run([f'command="borg-gate --client a",restrict {site.keys[0]}'])
    assert problems(report) == [(WARNING, "gate-path", 1)]
    (site.root / "borg-gate").symlink_to(GATE)
    assert problems(site.run([f'command="exec borg-gate --client a",restrict {site.keys[0]}'])) == []


def test_unparsable_lines(site: Site) -> None:
    k = site.keys[0]
    report = site.run([f"restrictx {k}", f'command="x {k}', f"ssh-rsa {k.split()[1]}", f'command="a",command="b" {k}'])
    assert problems(report) == [(ERROR, "unparsable", n) for n in (1, 2, 3, 4)]
    reasons = [f.message for f in report.findings if f.code == "unparsable"]
    assert reasons == [
        "sshd skips this line: bad key options: unknown key option",
        "sshd skips this line: invalid key option string (a quote is not closed)",
        "sshd skips this line: key blob holds a ssh-ed25519 key, the line says ssh-rsa",
        'sshd skips this line: bad key options: multiple "command" clauses',
    ]


def test_unusual_options_and_key_types(site: Site) -> None:
    site.client_dir("a", "b")
    report = site.run(
        [
            site.line("--client a").replace(",restrict", ',restrict,environment="BORG_GATE_CONFIG=/tmp/x"'),
            site.line("--client b", 4),
        ]
    )
    assert (WARNING, "option", 1) in problems(report)
    # a DSA line: sshd 10 cannot read it at all, sshd 9.2 never accepts it by default
    assert (ERROR, "unparsable", 2) in problems(report)
    assert "OpenSSH 10 cannot read DSA keys" in only(report, "unparsable").message


# --------------------------------------------------------------------------- clients and paths


def test_one_client_name_with_different_limits_or_unrelated_confinement(site: Site) -> None:
    site.client_dir("a", "b")
    other = site.root / "elsewhere"
    other.mkdir()
    report = site.run(
        [
            site.line("--client a"),
            site.line("--client a --max-sessions 1", 1),
            site.line(f"--client a --restrict-to-path {other}", 2),
            site.line(f"--client a --restrict-to-repository {site.repos}/a/main", 3),
        ]
    )
    assert problems(report) == [
        (WARNING, "path-missing", 4),
        (WARNING, "client-limits", 2),
        (WARNING, "client-confinement", 3),
    ]


def test_confinement_paths(site: Site) -> None:
    (site.repos / "file").write_text("")
    (site.repos / "open").mkdir()
    (site.repos / "open").chmod(0o777)
    report = site.run(
        [
            site.line("--client missing"),
            site.line("--client file", 1),
            site.line("--client open", 2),
        ]
    )
    assert problems(report) == [
        (WARNING, "path-missing", 1),
        (ERROR, "path-not-dir", 2),
        (ERROR, "path-writable", 3),
    ]


def test_world_writable_parent_of_a_confinement(site: Site) -> None:
    site.repos.chmod(0o777)
    site.client_dir("a")
    report = site.run([site.line("--client a")])
    assert (ERROR, "path-writable", 1) in problems(report)
    site.repos.chmod(0o1777)  # sticky, like /tmp: others cannot replace a/
    assert problems(site.run([site.line("--client a")])) == []


def test_keys_file_writable_by_others(site: Site) -> None:
    site.client_dir("a")
    site.keys_file.write_text(site.line("--client a") + "\n")
    site.keys_file.chmod(0o666)
    report = check.run_check(str(site.config_path), [str(site.keys_file)], str(site.sshd_config))
    assert [(f.severity, f.code) for f in report.findings if f.severity != INFO] == [(WARNING, "keys-file")]


def test_missing_keys_file(site: Site) -> None:
    report = check.run_check(str(site.config_path), [str(site.root / "nope")], str(site.sshd_config))
    assert only(report, "keys-file").severity == ERROR


# --------------------------------------------------------------------------- the user


def fake_stat(uid: int) -> os.stat_result:
    return os.stat_result((0o100600, 1, 1, 1, uid, 0, 0, 0, 0, 0))


def test_which_user_a_keys_file_is_for() -> None:
    nobody = pwd.getpwnam("nobody")
    assert check.keys_owner("/x/y", fake_stat(nobody.pw_uid)).name == "nobody"  # type: ignore[union-attr]
    assert check.keys_owner("/etc/ssh/keys/nobody", fake_stat(0)).name == "nobody"  # type: ignore[union-attr]
    assert check.keys_owner("/root/.ssh/authorized_keys", fake_stat(0)).name == "root"  # type: ignore[union-attr]
    assert check.keys_owner("/nonexistent-dir/keys", fake_stat(0)) is None


def test_a_user_without_a_shell_cannot_run_forced_commands() -> None:
    report = CheckReport()
    check.check_user(report, check.User("backup", 1234, frozenset({1234}), "/home/b", "/usr/sbin/nologin"), "f")
    assert problems(report) == [(ERROR, "user-shell", None)]
    report = CheckReport()
    check.check_user(report, check.User("root", 0, frozenset({0}), "/root", "/bin/bash"), "f")
    assert problems(report) == [(WARNING, "root", None)]


def other_user() -> check.User:
    """A user that is not us: nobody when we are root, else a made-up uid."""
    if os.geteuid() == 0:
        return check.User.from_pwd(pwd.getpwnam("nobody"))
    return check.User("someone", os.geteuid() + 1, frozenset({os.getegid() + 1}), "/", "/bin/sh")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's own temp dirs are private to us)."""
    d = Path(tempfile.mkdtemp(prefix="borg-gate-check-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_state_dir_and_log_file_usable_by_the_gates_users(shared_dir: Path) -> None:
    from borg_gate.base.config import Config

    (shared_dir / "state").mkdir(mode=0o700)
    (shared_dir / "log").mkdir(mode=0o755)
    log = shared_dir / "log" / "gate.jsonl"
    log.touch(mode=0o644)
    cfg = Config(source="cfg", state_dir=str(shared_dir / "state"), log_file=str(log))
    user = other_user()
    report = CheckReport()
    check.check_state_dir(report, cfg, [user])
    check.check_log_file(report, cfg, [user])
    assert [(f.severity, f.code) for f in report.findings] == [(ERROR, "state-dir"), (WARNING, "log-file")]
    assert f"user {user.name} cannot" in report.findings[0].message
    # group-shared as packaging lays it out: 3770 and 0660, the user in the directory's group
    shared = check.User(user.name, user.uid, frozenset({os.getegid()}), user.home, user.shell)
    (shared_dir / "state").chmod(0o2770)
    report = CheckReport()
    check.check_state_dir(report, cfg, [shared])
    assert [(f.severity, f.code) for f in report.findings] == [(ERROR, "state-dir"), (ERROR, "lock-file")]
    assert "group-writable without the sticky bit" in report.findings[0].message
    assert "-m 3770" in report.findings[0].message
    assert report.findings[1].message.startswith(f"no lock file {shared_dir}/state/locks: the gate refuses;")
    (shared_dir / "state").chmod(0o3770)
    locks = shared_dir / "state" / "locks"
    locks.touch(mode=0o640)  # the user could not take a lock: write access is the kernel's rule for one
    report = CheckReport()
    check.check_state_dir(report, cfg, [shared])
    assert [(f.severity, f.code) for f in report.findings] == [(ERROR, "lock-file")]
    assert f"user {user.name} cannot open it read-write" in report.findings[0].message
    os.chown(locks, user.uid, -1)  # a member's file: she could remove it and double the budget
    report = CheckReport()
    check.check_state_dir(report, cfg, [shared])
    assert [(f.severity, f.code) for f in report.findings] == [(ERROR, "lock-file")]
    assert f"owned by uid {user.uid}, not by root" in report.findings[0].message
    os.chown(locks, 0, -1)
    locks.chmod(0o660)
    log.chmod(0o660)
    report = CheckReport()
    check.check_state_dir(report, cfg, [shared])
    check.check_log_file(report, cfg, [shared])
    assert report.findings == []
    # no log file yet: the user must be able to create it
    log.unlink()
    check.check_log_file(report, cfg, [shared])
    assert [(f.severity, f.code) for f in report.findings] == [(WARNING, "log-file")]
    (shared_dir / "log").chmod(0o2770)  # the state dir's rule: group-writable needs the sticky bit
    report = CheckReport()
    check.check_log_file(report, cfg, [shared])
    assert [(f.severity, f.code) for f in report.findings] == [(ERROR, "log-dir")]
    (shared_dir / "log").chmod(0o3770)
    report = CheckReport()
    check.check_log_file(report, cfg, [shared])
    assert report.findings == []


def test_missing_state_dir(site: Site) -> None:
    (site.root / "state").rmdir()
    report = site.run([])
    assert only(report, "state-dir").severity == ERROR


# --------------------------------------------------------------------------- config and binaries


def test_broken_config_is_one_error_with_its_line_and_fails_each_key(site: Site) -> None:
    site.client_dir("a")
    site.write_config(limits={"max_session": 3})
    report = site.run([site.line("--client a")])
    cfg = only(report, "config")
    assert (cfg.severity, cfg.file, cfg.line) == (ERROR, str(site.config_path), 10)
    assert cfg.message.startswith("limits.max_session: unknown key")
    assert (ERROR, "key-config", 1) in problems(report)


def test_binaries_missing_or_misdescribed(site: Site) -> None:
    site.client_dir("a")
    site.write_config(
        borg__binaries={"borg": {"path": "/usr/bin/borg", "version": "1.1.18"}, "borg2": "/nonexistent/borg2"}
    )
    report = site.run([site.line("--client a")])
    assert {(f.severity, f.code) for f in report.findings if f.severity != INFO} == {
        (ERROR, "binary-version"),
        (ERROR, "binary"),
    }
    assert f"says {platform_facts.debian_borg()}" in only(report, "binary-version").message


def test_config_writable_by_others(site: Site) -> None:
    """Issue 10, point 9d: the gate refuses such a config (whoever can edit it picks every user's borg)."""
    for mode, who in ((0o664, "the group"), (0o646, "others"), (0o666, "the group and others")):
        site.config_path.chmod(mode)
        finding = only(site.run([]), "config")
        assert finding.severity == ERROR and finding.message == f"writable by {who} (mode {mode:o})"
    site.config_path.chmod(0o644)
    assert [f for f in site.run([]).findings if f.code == "config"] == []


def test_key_config_of_its_own(site: Site) -> None:
    site.client_dir("a")
    other = site.root / "other.toml"
    other.write_text("[borg]\ndefault = 'nope'\n")
    report = site.run([site.line(f"--client a --config {other}")])
    assert (ERROR, "key-config", 1) in problems(report)
    assert any(f.code == "config" and f.file == str(other) for f in report.findings)


def test_config_default_file_absent_means_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from borg_gate.base import config

    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("BORG_GATE_CONFIG", raising=False)
    report = check.run_check(None, [], None, sshd=False)
    assert only(report, "config-default").severity == INFO


# --------------------------------------------------------------------------- sshd


def test_sshd_settings(site: Site) -> None:
    site.client_dir(*"abcdefghijkl")
    site.sshd_config.write_text("PermitUserEnvironment yes\nMaxStartups 10:30:60\n")
    lines = [site.line(f"--client {c}", i) for i, c in enumerate("ab")]
    report = site.run(lines)
    assert {f.code for f in report.findings if f.severity == WARNING} == {
        "sshd-expose-auth-info",
        "sshd-user-environment",
    }
    site.write_config(limits={"max_sessions": 12})
    warning = only(site.run(lines), "sshd-max-startups")
    assert "raise it to 12" in warning.message


def test_sshd_config_includes_and_match_blocks(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "10-gate.conf").write_text("ExposeAuthInfo yes\nmaxstartups=50:30:100\n")
    (d / "20-later.conf").write_text("ExposeAuthInfo no\n")
    main = tmp_path / "sshd_config"
    main.write_text(f"# comment\nInclude {d}/*.conf\nExposeAuthInfo no\nMatch User x\n  PermitUserEnvironment yes\n")
    values = check.parse_sshd_config(str(main))
    assert values == {"exposeauthinfo": "yes", "maxstartups": "50:30:100"}


def test_effective_sshd_settings_as_root() -> None:
    settings = check.read_sshd(None)
    if os.geteuid() == 0:
        assert isinstance(settings, check.SshdSettings) and settings.source == "sshd -T"
        assert settings.values["maxstartups"]
    else:
        assert not isinstance(settings, check.SshdSettings) or settings.source == check.SSHD_CONFIG


# --------------------------------------------------------------------------- the command line


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATE, "check", *args], capture_output=True, text=True, check=False)


def test_cli_exit_codes_and_human_lines(site: Site) -> None:
    site.client_dir("a")
    base = ["--config", str(site.config_path), "--sshd-config", str(site.sshd_config), "--authorized-keys"]
    site.keys_file.write_text(site.line("--client a") + "\n")
    clean = cli(*base, str(site.keys_file))
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.splitlines()[-1].startswith("borg-gate check: 0 error(s), 0 warning(s)")

    site.keys_file.write_text(site.line("--client a") + "\n" + site.line("--client nodir", 1) + "\n")
    warned = cli(*base, str(site.keys_file))
    assert warned.returncode == 1
    assert f"{site.keys_file}:2: warning: confinement {site.repos}/nodir does not exist [path-missing]" in warned.stdout

    site.keys_file.write_text(f"restrict {site.keys[0]}\n")
    failed = cli(*base, str(site.keys_file), "--quiet")
    assert failed.returncode == 2
    assert failed.stdout.splitlines()[0] == (
        f"{site.keys_file}:1: error: no command=: this key gets a shell, not borg serve [no-forced-command]"
    )


def test_cli_json(site: Site) -> None:
    site.keys_file.write_text(f"restrict {site.keys[0]}\n{site.line('--client nodir', 1)}\n")
    out = cli(
        "--json",
        "--config",
        str(site.config_path),
        "--no-sshd",
        "--authorized-keys",
        str(site.keys_file),
        str(site.keys_file),
    )
    doc = json.loads(out.stdout)
    assert out.returncode == doc["exit_code"] == 2
    assert doc["summary"] == {"errors": 2, "warnings": 2, "files": 2, "keys": 4}
    first = next(f for f in doc["findings"] if f["severity"] == "error")
    assert first == {
        "severity": "error",
        "code": "no-forced-command",
        "message": "no command=: this key gets a shell, not borg serve",
        "file": str(site.keys_file),
        "line": 1,
    }


def test_main_returns_the_exit_code(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.keys_file.write_text(f"restrict {site.keys[0]}\n")
    code = check.main(["--config", str(site.config_path), "--no-sshd", "--authorized-keys", str(site.keys_file)])
    assert code == 2
    assert "[no-forced-command]" in capsys.readouterr().out
