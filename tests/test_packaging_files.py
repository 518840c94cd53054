"""packaging/: the config example, the tmpfiles entry and the sshd drop-in say what the gate does."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tomllib
from pathlib import Path

import psutil
import pytest

from borg_gate.base import config, values

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
EXAMPLE = PACKAGING / "config.toml"
GROUP = "borg-gate"
MEMBER = "bgate-pkg"  # a backup user in the group
OUTSIDER = "bgate-pkg-out"  # a user who is not


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check)


def ensure_user(name: str, *groups: str) -> None:
    if run("getent", "group", GROUP, check=False).returncode != 0:
        run("groupadd", "--system", GROUP)
    if run("getent", "passwd", name, check=False).returncode != 0:
        run("useradd", "--no-create-home", "--shell", "/bin/sh", name)
    if groups:
        run("usermod", "--append", "--groups", ",".join(groups), name)


def test_config_example_parses_to_the_built_in_defaults() -> None:
    parsed = config.parse_config(EXAMPLE.read_text(), str(EXAMPLE))
    # The example claims every value in it is the default: deleting the file changes nothing.
    assert values.replace(parsed, source="x") == values.replace(config.Config(), source="x")


def test_config_example_sets_and_explains_every_key() -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for section, keys in config.SCHEMA.items():
        for key in keys:
            assert key in data[section], f"[{section}] {key} is not set in the example"
            # a comment right above the key explains it
            above = text.split(f"\n{key} = ", 1)[0].rstrip().splitlines()[-1]
            assert above.startswith("#"), f"[{section}] {key} has no comment above it"
    assert "binaries" in data["borg"]
    assert "env" in data["borg"]
    # both ways of naming a binary are shown, and BORG_BASE_DIR for borg2 2.0.0b5's /~/ paths
    assert re.search(r'^# "?[\w.-]+"? = \{ path = "/[^"]+", version = "[0-9.b]+" \}$', text, re.M)
    assert re.search(r'^# BORG_BASE_DIR = "/', text, re.M)
    commented = "\n".join(line.removeprefix("# ") for line in text.splitlines() if line.startswith("# "))
    example_binary = re.search(r'^"[\w.-]+" = \{ path = .*\}$', commented, re.M)
    assert example_binary is not None
    parsed = config.parse_config(f"[borg.binaries]\nborg = '/usr/bin/borg'\n{example_binary[0]}\n", "commented")
    assert parsed.binaries["borg-1.4"].version == "1.4.5"


def test_tmpfiles_entry_makes_the_configs_default_paths_shared_by_the_group() -> None:
    entries = {}
    for line in (PACKAGING / "tmpfiles.d").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, path, mode, user, group, *_ = line.split()
            entries[path] = (kind, mode, user, group)
    defaults = config.Config()
    assert entries[defaults.state_dir] == ("d", "3770", "root", GROUP)
    assert entries[str(Path(defaults.log_file).parent)] == ("d", "0750", "root", GROUP)  # only root creates there
    assert entries[defaults.log_file] == ("f", "0660", "root", GROUP)
    assert entries[f"{defaults.state_dir}/locks"] == ("f", "0660", "root", GROUP)  # the budget: root's alone


def test_tmpfiles_entry_is_what_systemd_tmpfiles_applies(tmp_path: Path) -> None:
    gid = 4242  # with --root, systemd-tmpfiles resolves names in the root's own /etc
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text(f"root:x:0:\n{GROUP}:x:{gid}:\n")
    run("systemd-tmpfiles", "--create", f"--root={tmp_path}", PACKAGING / "tmpfiles.d")
    for path, mode in (
        ("run/borg-gate", 0o3770),
        ("var/log/borg-gate", 0o750),
        ("var/log/borg-gate/gate.jsonl", 0o660),
        ("run/borg-gate/locks", 0o660),
    ):
        st = (tmp_path / path).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, 0, gid), path


@pytest.fixture(scope="module")
def sshd_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config like Debian's: the drop-in included first, then a host-wide setting after it."""
    base = tmp_path_factory.mktemp("sshd")
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / "host")
    cfg = base / "sshd_config"
    cfg.write_text(f"HostKey {base / 'host'}\nInclude {PACKAGING / 'sshd_config.d'}\nX11Forwarding yes\n")
    ensure_user(MEMBER, GROUP)
    ensure_user(OUTSIDER)
    run("/usr/sbin/sshd", "-t", "-f", cfg)
    return cfg


def effective(cfg: Path, user: str) -> dict[str, str]:
    out = run("/usr/sbin/sshd", "-T", "-f", cfg, "-C", f"user={user},host=client,addr=127.0.0.1").stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_sshd_drop_in_applies_borgs_advice_to_the_backup_users(sshd_config: Path) -> None:
    got = effective(sshd_config, MEMBER)
    assert got["exposeauthinfo"] == "yes"  # SSH_USER_AUTH: the gate logs which key connected
    assert (got["clientaliveinterval"], got["clientalivecountmax"]) == ("10", "30")  # borg serve docs
    assert got["disableforwarding"] == "yes"
    assert got["permittty"] == "no"
    assert got["maxstartups"] == "100:30:300"


def test_sshd_drop_in_leaves_other_users_and_later_settings_alone(sshd_config: Path) -> None:
    got = effective(sshd_config, OUTSIDER)
    assert got["exposeauthinfo"] == "no"
    assert got["clientaliveinterval"] == "0"
    assert got["disableforwarding"] == "no"
    assert got["x11forwarding"] == "yes"  # the Match block ends with the drop-in


def test_a_later_max_startups_overrides_the_drop_ins(tmp_path: Path, sshd_config: Path) -> None:
    """The one keyword where sshd keeps the last value, as the drop-in's comment warns (and bench/herd met)."""
    cfg = tmp_path / "sshd_config"
    cfg.write_text(sshd_config.read_text() + "MaxStartups 10:30:60\n")
    assert effective(cfg, MEMBER)["maxstartups"] == "10:30:60"
    cfg.write_text(sshd_config.read_text() + "LoginGraceTime 120\n")  # most keywords: the first one wins
    assert effective(cfg, MEMBER)["logingracetime"] == "30"


SSH_SERVICE_DROP_IN = PACKAGING / "ssh.service.d"


def test_ssh_service_drop_in_is_a_drop_in_systemd_reads(tmp_path: Path) -> None:
    """Every key known to this systemd, in the section it belongs to: a misspelt one is only a
    warning when ssh.service starts, and the herd host would run without it."""
    unit = tmp_path / "borg-gate-herd-check.service"
    unit.write_text("[Unit]\nDescription=check\n" + SSH_SERVICE_DROP_IN.read_text() + "ExecStart=/bin/true\n")
    got = run("systemd-analyze", "verify", "--man=no", unit, check=False)
    assert "borg-gate-herd-check.service:" not in got.stderr, got.stderr
    body = [line for line in SSH_SERVICE_DROP_IN.read_text().splitlines() if line and not line.startswith("#")]
    assert body == ["[Service]", "CPUSchedulingPolicy=fifo", "CPUSchedulingPriority=1", "CPUSchedulingResetOnFork=yes"]


def test_ssh_service_drop_in_raises_the_listener_only(tmp_path: Path) -> None:
    """What its comment promises, on a real sshd: the listener real-time, and a connection's own
    process (what runs the gate and borg serve) back at the normal policy, as the kernel's reset
    on fork gives it."""
    from tests.e2e import harness

    if os.geteuid() != 0:
        pytest.skip("needs root: it starts a real sshd (CI runs as root)")
    sshd = harness.Sshd(tmp_path / "sshd")
    sshd.start()
    try:
        assert sshd.proc is not None
        harness.apply_service_priority(sshd.proc.pid, SSH_SERVICE_DROP_IN)
        assert os.sched_getscheduler(sshd.proc.pid) == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        with socket.create_connection(("127.0.0.1", sshd.port)) as conn:
            conn.sendall(b"SSH-2.0-OpenSSH_check\r\n")
            conn.recv(256)  # sshd's banner: its connection process exists, forked by the listener
            checked = 0
            for child in psutil.Process(sshd.proc.pid).children():
                try:
                    nice, policy = child.nice(), os.sched_getscheduler(child.pid)
                except (psutil.NoSuchProcess, ProcessLookupError):
                    continue  # one that ended meanwhile: ours is still connected
                assert (nice, policy) == (0, os.SCHED_OTHER)  # no raise, and no reset-on-fork flag, left on it
                checked += 1
            assert checked
    finally:
        sshd.stop()
