"""Installing the gate the ways sysadmins do: the Debian package from packaging/build-deb, pip into a venv.

The package is built from this checkout and installed on this machine with ``dpkg -i`` (root,
as CI runs); it stays installed so that the end-to-end suite can run against
/usr/bin/borg-gate (BORG_GATE_E2E_BIN). Its binary then serves a connection as an
unprivileged backup user, sharing the packaged state dir and log through the group.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from borg_gate.conn import versions
from tests.e2e import harness
from tests.recorder import RECORDER, SSHD_ENV, Outcome, run_gate
from tests.test_packaging_files import GROUP, MEMBER, ensure_user

REPO = Path(__file__).resolve().parents[1]
INSTALLED = Path("/usr/bin/borg-gate")
SYSTEM_PYTHON = "/usr/bin/python3"


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def version() -> str:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


@pytest.fixture(scope="module")
def world_dir() -> Iterator[Path]:
    """A temp dir the unprivileged backup user can reach (pytest's tmp_path is root-only)."""
    with harness.e2e_base() as path:
        yield path


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = Path(run(REPO / "packaging" / "build-deb", "--out", out).stdout.strip().splitlines()[-1])
    run("dpkg", "--force-confnew", "-i", built)  # this checkout's config, even over an edited one
    ensure_user(MEMBER, GROUP)
    return built


def recorder(where: Path, owner: str) -> Path:
    """A recorder borg in its own dir, which ``owner`` can write its record into."""
    where.mkdir()
    shutil.copy2(RECORDER, where / "borg")
    shutil.chown(where, owner)
    return where / "borg"


def connect(gate: Sequence[str], command: str, key_args: Sequence[str], stdin: bytes = b"") -> Outcome:
    env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}
    return run_gate([*gate, *key_args], env, stdin=stdin, cwd=Path("/"))


def as_member(binary: Path | str) -> list[str]:
    """How sshd runs the forced command: as the key's unix user, with its groups."""
    return ["setpriv", f"--reuid={MEMBER}", f"--regid={MEMBER}", "--init-groups", "--", str(binary)]


def events_of(log: Path, client: str) -> list[dict[str, Any]]:
    records = (json.loads(line) for line in log.read_text().splitlines() if line.strip())
    return [r for r in records if r.get("client") == client]


def test_package_installs_the_gate_under_usr_with_its_conffiles(deb: Path) -> None:
    status = run("dpkg-query", "-W", "-f=${Status} ${Version}", "borg-gate").stdout
    assert status == f"install ok installed {version()}-1"
    # conffiles, shipped as in packaging/ (dpkg keeps a sysadmin's edits to them on upgrade)
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "borg-gate").stdout
    assert dict(line.split()[:2] for line in conffiles.splitlines() if line.strip()) == {
        "/etc/borg-gate/config.toml": md5(REPO / "packaging/config.toml"),
        "/etc/logrotate.d/borg-gate": md5(REPO / "packaging/logrotate"),
    }
    listed = set(run("dpkg", "-L", "borg-gate").stdout.split())
    assert {str(INSTALLED), "/usr/lib/tmpfiles.d/borg-gate.conf", "/usr/lib/borg-gate/bin/python3"} <= listed
    # the metrics timer is installed, and left disabled: nothing links it into timers.target
    units = {f"/usr/lib/systemd/system/borg-gate-metrics.{kind}" for kind in ("service", "timer")}
    assert units <= listed
    assert not os.path.lexists("/etc/systemd/system/timers.target.wants/borg-gate-metrics.timer")
    # the ssh.service drop-in for a herd host is an example, as the README's install line reads it
    herd = "/usr/share/doc/borg-gate/examples/ssh.service.d/borg-gate-herd.conf"
    assert herd in listed and Path(herd).read_bytes() == (REPO / "packaging/ssh.service.d").read_bytes()
    assert not os.path.lexists("/etc/systemd/system/ssh.service.d/borg-gate-herd.conf")
    # postinst made the group and, through the tmpfiles entry, the shared paths
    gid = int(run("getent", "group", GROUP).stdout.split(":")[2])
    for path, mode in (("/run/borg-gate", 0o3770), ("/var/log/borg-gate", 0o750)):
        st = os.stat(path)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, 0, gid), path
    for path in ("/var/log/borg-gate/gate.jsonl", "/run/borg-gate/locks"):
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, gid), path
    # the venv is the package's own, from the system Python: nothing of the build machine in it
    assert os.readlink("/usr/lib/borg-gate/bin/python3") == SYSTEM_PYTHON
    assert INSTALLED.read_text().startswith("#!/usr/lib/borg-gate/bin/python3 -IS\n")
    # without the site module the venv's own packages are still found: status imports psutil,
    # authorize filelock, at the top of their modules
    for admin in ("status", "authorize"):
        assert "usage" in run(INSTALLED, admin, "--help").stdout


def test_installed_gate_serves_a_backup_user_through_the_shared_state_dir(deb: Path, world_dir: Path) -> None:
    borg = recorder(world_dir / "deb-recorder", MEMBER)
    cfg = world_dir / "deb-config.toml"
    cfg.write_text(f'[repos]\nroot = "/srv/borg-pkg-test/{{client}}"\n[borg.binaries]\nborg = "{borg}"\n')
    client = f"pkg-{secrets.token_hex(4)}"
    key_args = ["--config", str(cfg), "--client", client]

    first = connect(as_member(INSTALLED), "borg serve --info", key_args, stdin=b"first request")
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"RECORDER-STDOUT\n"  # the gate itself wrote nothing to stdout
    record = json.loads((borg.parent / "record.json").read_text())
    assert record["argv"] == [str(borg), "serve", "--info", f"--restrict-to-path=/srv/borg-pkg-test/{client}"]
    assert record["stdin"] == "first request"  # unread by the gate
    assert record["umask"] == 0o077
    assert "SSH_ORIGINAL_COMMAND" not in record["env"]
    assert record["env"]["USER"] == "alice"  # sshd's, passed through

    # the version was detected once, as the backup user, and cached in the packaged state dir
    cache = json.loads(Path("/run/borg-gate", versions.cache_name(pwd.getpwnam(MEMBER).pw_uid)).read_text())
    assert cache[str(borg)]["version"] == "1.2.4"
    second = connect(as_member(INSTALLED), "borg serve", key_args)
    assert second.returncode == 0, second.stderr
    assert len((borg.parent / "version-calls").read_text().splitlines()) == 1

    started = [e for e in events_of(Path("/var/log/borg-gate/gate.jsonl"), client) if e["event"] == "session.started"]
    assert len(started) == 2
    assert started[0]["user"] == MEMBER


def test_installed_gate_refuses_as_a_backup_user(deb: Path) -> None:
    out = connect(as_member(INSTALLED), "rsync --server -e.Lsfx . /srv", ["--client", "pkg-refused"])
    assert out.returncode == 210
    assert out.stdout == b""
    assert out.stderr.decode().startswith("borg-gate: only borg serve is allowed here")


def test_installed_gate_with_the_shipped_config_runs_debians_borg(deb: Path) -> None:
    client = f"pkg-{secrets.token_hex(4)}"
    out = connect(as_member(INSTALLED), "borg serve", ["--client", client])
    # borg serve itself answered: stdin was empty, so it had no repository to open
    assert out.returncode == 0, out.stderr
    assert b"Got connection close before repository was opened" in out.stdout
    started = [e for e in events_of(Path("/var/log/borg-gate/gate.jsonl"), client) if e["event"] == "session.started"]
    assert [e["argv"] for e in started] == [["/usr/bin/borg", "serve", f"--restrict-to-path=/srv/borg/{client}"]]


def test_pip_install_into_a_venv(world_dir: Path) -> None:
    venv = world_dir / "venv"
    run(SYSTEM_PYTHON, "-m", "venv", venv)
    run(venv / "bin/pip", "install", "--quiet", "--disable-pip-version-check", REPO)
    gate = venv / "bin/borg-gate"

    helped = subprocess.run([gate, "--help"], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert helped.returncode == 0
    assert helped.stdout == ""  # not a terminal: help goes to stderr, never onto borg's channel
    assert "--restrict-to-path" in helped.stderr

    borg = recorder(world_dir / "venv-recorder", "root")
    state = world_dir / "venv-state"
    state.mkdir()
    cfg = world_dir / "venv-config.toml"
    cfg.write_text(
        f'[gate]\nstate_dir = "{state}"\nlog_file = ""\n'
        f'[borg.binaries]\nborg = {{ path = "{borg}", version = "1.4.5" }}\n'
    )
    out = connect([str(gate)], "borg serve --debug", ["--config", str(cfg), "--restrict-to-path", "/srv/venv"])
    assert out.returncode == 0, out.stderr
    record = json.loads((borg.parent / "record.json").read_text())
    assert record["argv"] == [str(borg), "serve", "--debug", "--restrict-to-path=/srv/venv"]


def test_pipx_install_system_wide_serves_a_backup_user(world_dir: Path) -> None:
    """The README's pipx way: a system-wide PIPX_HOME from /usr/bin/python3, run by a backup user."""
    ensure_user(MEMBER, GROUP)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(world_dir),
        "PIPX_HOME": str(world_dir / "pipx"),
        "PIPX_BIN_DIR": str(world_dir / "pipx-bin"),
    }
    subprocess.run(["pipx", "install", "--python", SYSTEM_PYTHON, str(REPO)], env=env, check=True, capture_output=True)
    borg = recorder(world_dir / "pipx-recorder", MEMBER)
    cfg = world_dir / "pipx-config.toml"
    cfg.write_text(f'[gate]\nlog_file = ""\n[borg.binaries]\nborg = {{ path = "{borg}", version = "1.2.4" }}\n')
    out = connect(as_member(world_dir / "pipx-bin/borg-gate"), "borg serve", ["--config", str(cfg), "--client", "px"])
    assert out.returncode == 0, out.stderr
    record = json.loads((borg.parent / "record.json").read_text())
    assert record["argv"] == [str(borg), "serve", "--restrict-to-path=/srv/borg/px"]
