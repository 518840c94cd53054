"""borg-gate check: sshd's AcceptEnv must not let a client steer the gate (config path, Python, loader)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def check(tmp_path: Path, sshd_config: str) -> dict[str, object]:
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "sshd_config").write_text(sshd_config)
    (tmp_path / "config.toml").write_text(f'[gate]\nstate_dir = "{tmp_path}/state"\nlog_file = ""\n')
    out = subprocess.run(
        [sys.executable, "-m", "borg_gate", "check", "--config", str(tmp_path / "config.toml"),
         "--sshd-config", str(tmp_path / "sshd_config"), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout)
    assert result["exit_code"] == out.returncode
    return result


def accept_env_findings(result: dict[str, object]) -> list[str]:
    findings = result["findings"]
    assert isinstance(findings, list)
    return [f["message"] for f in findings if f["code"] == "sshd-accept-env" and f["severity"] == "error"]


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ("AcceptEnv LANG LC_*\nAcceptEnv BORG_*\n", "BORG_GATE_CONFIG"),
        ("AcceptEnv *\n", "PYTHONPATH"),
        ("AcceptEnv LANG\nAcceptEnv PYTHON*\n", "PYTHONPATH"),
        ("AcceptEnv LD_PRELOAD\n", "LD_PRELOAD"),
    ],
)
def test_accept_env_that_reaches_the_gate_is_an_error(tmp_path: Path, lines: str, named: str) -> None:
    result = check(tmp_path, lines)
    assert any(f"set {named} " in message for message in accept_env_findings(result)), result
    assert result["exit_code"] == 2


def test_debian_default_accept_env_is_fine(tmp_path: Path) -> None:
    # Debian's sshd_config: AcceptEnv LANG LC_* (locale only; borg gets them, harmlessly)
    assert accept_env_findings(check(tmp_path, "AcceptEnv LANG LC_*\nExposeAuthInfo yes\n")) == []


@pytest.mark.parametrize(
    "lines",
    [
        "AcceptEnv LANG\nMatch User backup-*\n  AcceptEnv PYTHONPATH\n",
        "Match Address 10.0.0.0/8\n  AcceptEnv LANG\nMatch Group borg-gate\n  AcceptEnv BORG_*\n",
        "Match User x\n  Include {included}\n",
    ],
)
def test_accept_env_in_a_match_block_is_reported(tmp_path: Path, lines: str) -> None:
    """Issue 10, point 9c: a scoped AcceptEnv may select the gate's users; check says so."""
    included = tmp_path / "included.conf"
    included.write_text("AcceptEnv LD_PRELOAD\n")  # inside the Match that includes it
    result = check(tmp_path, lines.format(included=included))
    found = accept_env_findings(result)
    assert len(found) == 1 and "(in a Match block)" in found[0], result
    assert result["exit_code"] == 2


def test_match_all_ends_the_scope(tmp_path: Path) -> None:
    result = check(tmp_path, "Match User x\n  AcceptEnv LANG\nMatch all\nAcceptEnv PYTHONPATH\nExposeAuthInfo yes\n")
    (found,) = accept_env_findings(result)
    assert "(in a Match block)" not in found and "set PYTHONPATH" in found
