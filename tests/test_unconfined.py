"""Issue 10, point 8: a confinement whose realpath is / is no confinement; the gate refuses it, check reports it."""

from __future__ import annotations

from pathlib import Path

import pytest

from borg_gate.admin import check
from borg_gate.base.errors import Kind
from tests.recorder import Host

ROOTS = ["/", "//", "/.", "/..", "/./", "/srv/..", "/{client}/..", "{link}"]


def spelled(path: str, tmp_path: Path) -> str:
    link = tmp_path / "to-root"
    if not link.is_symlink():
        link.symlink_to("/")
    return path.replace("{link}", str(link))


def findings(host: Host, keys: Path) -> list[check.Finding]:
    return check.run_check(str(host.config_path), [str(keys)], None, sshd=False).findings


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("option", ["--restrict-to-path", "--restrict-to-repository"])
def test_a_key_confined_to_the_root_is_refused(tmp_path: Path, root: str, option: str) -> None:
    host = Host(tmp_path)
    path = spelled(root, tmp_path)
    out = host.run("borg serve", ["--client", "alice", option, path])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None  # borg never ran
    assert "resolves to /: that is no confinement" in out.stderr_line()
    (refused,) = host.events()
    assert refused["kind"] == "misconfigured" and "no confinement" in refused["reason"]
    keys = tmp_path / "authorized_keys"
    keys.write_text(f'command="borg-gate --client alice {option} {path}",restrict ssh-ed25519 {KEY} k\n')
    (finding,) = [f for f in findings(host, keys) if f.code == "confinement"]
    assert finding.severity == check.ERROR and "no confinement" in finding.message


@pytest.mark.parametrize("root", ROOTS)
def test_repos_root_at_the_root_is_refused(tmp_path: Path, root: str) -> None:
    host = Host(tmp_path, repos_root=spelled(root, tmp_path))
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None
    assert "--restrict-to-path=" in out.stderr_line() and "no confinement" in out.stderr_line()
    errors = [f for f in check.run_check(str(host.config_path), [], None, sshd=False).findings if f.severity == "error"]
    assert [f.code for f in errors] == ["repos-root-unconfined"]


def test_a_broad_directory_is_still_a_confinement(tmp_path: Path) -> None:
    """Only / counts as none: /srv keeps the key out of everything beside it."""
    host = Host(tmp_path)
    out = host.run("borg serve", ["--client", "alice", "--restrict-to-path", "/srv"])
    assert out.returncode == 0 and out.record is not None
    assert "--restrict-to-path=/srv" in out.record["argv"]


KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
