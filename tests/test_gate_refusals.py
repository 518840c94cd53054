"""Refusals through real gate processes: one ``borg-gate: `` stderr line, a Kind exit code, nothing run.

The hostile command table of test_command.py runs here end to end (in parallel: each
refusal pauses ~0.2 s for the client's sake); hypothesis then throws a modest number of
arbitrary SSH_ORIGINAL_COMMANDs, key lines and config files at the real process.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borg_gate.base.errors import Kind
from tests.recorder import REFUSAL_CODES, Host, Outcome
from tests.test_command import HOSTILE


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    return Host(tmp_path_factory.mktemp("refusals") / "host", binaries={"borg": "1.2.4", "borg2": "2.0.0b5"})


def assert_clean_refusal(outcome: Outcome) -> str:
    """Refused the way a client can show it: exit code of a Kind, one plain stderr line, nothing else."""
    assert outcome.record is None, "borg ran"
    assert outcome.returncode in REFUSAL_CODES, (outcome.returncode, outcome.stderr)
    assert outcome.stdout == b""
    line = outcome.stderr_line()
    assert not line.startswith(("{", "$LOG ")) and "Traceback" not in line
    return line


def assert_served_or_refused(outcome: Outcome) -> None:
    if outcome.returncode == 0 and outcome.record is not None:
        assert outcome.stdout == b"RECORDER-STDOUT\n"
        return
    assert "Traceback" not in outcome.stderr.decode("utf-8", "replace")
    assert_clean_refusal(outcome)


def test_hostile_commands_are_refused_by_the_real_gate(host: Host) -> None:
    cases = [(what, text) for what, text, _ in HOSTILE if text is None or "\x00" not in text]  # env has no NUL
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda case: host.run(case[1], ["--client", "alice"]), cases))
    for (what, _), outcome in zip(cases, outcomes, strict=True):
        line = assert_clean_refusal(outcome)
        assert outcome.returncode == int(Kind.BAD_COMMAND), (what, line)


def test_program_the_host_does_not_offer(host: Host) -> None:
    line = assert_clean_refusal(host.run("sh serve", ["--client", "alice"]))
    assert line == "this server has no 'sh'; it offers: borg, borg2"
    assert_clean_refusal(host.run("borg-1.1 serve", ["--client", "alice"]))


def test_interactive_login(host: Host) -> None:
    outcome = host.run(None, ["--client", "alice"])
    assert outcome.returncode == int(Kind.BAD_COMMAND)
    assert "interactive login is not allowed" in assert_clean_refusal(outcome)


def test_non_utf8_bytes_in_the_command(host: Host) -> None:
    """sshd passes bytes; Python sees surrogate escapes. Refused, and shown as ASCII escapes."""
    outcome = host.run(os.fsdecode(b"borg serve --info \xff\xfe"), ["--client", "alice"])
    assert outcome.returncode == int(Kind.BAD_COMMAND)
    line = assert_clean_refusal(outcome)
    assert line == "control character '\\udcff' in command"


def test_broken_key_line(host: Host) -> None:
    outcome = host.run("borg serve", ["--client", "alice", "--restrict-to-path", "relative"])
    assert outcome.returncode == int(Kind.MISCONFIGURED)
    assert assert_clean_refusal(outcome).startswith("key line: --restrict-to-path needs an absolute path")


def test_broken_config_names_file_key_and_line(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", limits={"max_sessions": 0})
    outcome = host.run("borg serve", ["--client", "alice"])
    assert outcome.returncode == int(Kind.MISCONFIGURED)
    line = assert_clean_refusal(outcome)
    assert line.startswith(f"config {host.config_path}:5: limits.max_sessions: must be between 1 and 10000")


# --------------------------------------------------------------------------- arbitrary input, real process

env_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=120)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.one_of(env_text, st.sampled_from(["borg serve", "borg2 serve --info", "X=1 borg serve -v"])))
def test_no_command_makes_the_gate_crash(host: Host, command: str) -> None:
    assert_served_or_refused(host.run(command, ["--client", "alice"]))


key_word = st.one_of(
    st.sampled_from(
        [
            "--client",
            "--restrict-to-path",
            "--restrict-to-repository",
            "--permissions",
            "--append-only",
            "--storage-quota",
            "--borg",
            "--max-sessions",
            "--wait",
            "alice",
            "/srv",
            "{client}",
            "read-only",
            "borg2",
            "0",
        ]
    ),
    env_text.filter(lambda w: w not in ("-h", "--help")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key_args=st.lists(key_word, max_size=6))
def test_no_key_line_makes_the_gate_crash(host: Host, key_args: list[str]) -> None:
    assert_served_or_refused(host.run("borg serve", key_args))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(env_text, st.sampled_from(["[gate]\numask = 77\n", "[borg]\ndefault = 'x'\n", "[[a]]"])))
def test_no_config_makes_the_gate_crash(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    host = Host(tmp_path_factory.mktemp("cfg") / "host")
    host.config_path.write_text(host.config_path.read_text() + "\n" + text)
    assert_served_or_refused(host.run("borg serve", ["--client", "alice"]))
