"""The gate's last step through a real process: a recorder stands in for borg and says how it was started.

Each test runs the real gate (``python -m borg_gate``) as sshd would: its environment,
SSH_ORIGINAL_COMMAND, umask 022, stdin a pipe already holding the client's first bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from borg_gate.base.errors import Kind
from borg_gate.conn import versions
from tests.recorder import GATE, SSHD_ENV, Host, Outcome, detections, run_gate
from tests.waiting import wait_for

CLIENT_BYTES = b"\x82\xa1i\x00\xa1m\xa4open" + bytes(range(256)) * 8  # what a borg client sends first


def served(outcome: Outcome) -> dict[str, Any]:
    assert outcome.returncode == 0, outcome.stderr.decode()
    assert outcome.record is not None
    return outcome.record


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "host", binaries={"borg": "1.2.4", "borg2": "2.0.0b18", "borg22": "2.0.0b22"})


# --------------------------------------------------------------------------- argv

ARGV_CASES = [
    # (SSH_ORIGINAL_COMMAND, key options, binary, argv after "serve" with {repos} for the repos root)
    ("borg serve", [], "borg", ["--restrict-to-path={repos}/alice"]),
    (
        "BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=077 --info --debug-topic=borg.debug.repository",
        ["--append-only"],
        "borg",
        ["--info", "--debug-topic=borg.debug.repository", "--restrict-to-path={repos}/alice", "--append-only"],
    ),
    (
        "borg serve --debug --storage-quota=1000000000",
        ["--client", "bob", "--restrict-to-repository", "/srv/{client}.borg", "--storage-quota", "20G"],
        "borg",
        ["--debug", "--restrict-to-repository=/srv/bob.borg", "--storage-quota=20000000000"],
    ),
    (
        "borg2 serve --info",
        ["--restrict-to-path", "/a", "--restrict-to-path", "/b"],
        "borg2",
        ["--info", "--restrict-to-path=/a", "--restrict-to-path=/b"],
    ),
    ("/usr/local/bin/borg serve", ["--borg", "borg2"], "borg2", ["--restrict-to-path={repos}/alice"]),
    (
        "borg serve --rest --backend FILE:{repos}/alice/repo",
        ["--borg", "borg22", "--append-only"],
        "borg22",
        ["--rest", "--backend=FILE:{repos}/alice/repo", "--restrict-to-path={repos}/alice", "--permissions=no-delete"],
    ),
    (  # "all" is stated too: serve --rest would otherwise take BORG_REPO_PERMISSIONS from its environment
        "borg serve --rest --backend FILE:{repos}/alice/repo",
        ["--borg", "borg22"],
        "borg22",
        ["--rest", "--backend=FILE:{repos}/alice/repo", "--restrict-to-path={repos}/alice", "--permissions=all"],
    ),
]


@pytest.mark.parametrize(("command", "key_args", "binary", "rest"), ARGV_CASES)
def test_argv_is_exact(host: Host, command: str, key_args: list[str], binary: str, rest: list[str]) -> None:
    (host.repos / "alice").mkdir(parents=True, exist_ok=True)
    repos = str(host.repos)
    record = served(host.run(command.replace("{repos}", repos), ["--client", "alice", *key_args]))
    assert record["argv"] == [str(host.binary(binary)), "serve", *(a.replace("{repos}", repos) for a in rest)]


REST_DEFAULT_HELP = """usage: borg serve [--legacy] [--backend BACKEND_URL] [--restrict-to-path PATH]
  --legacy    serve a legacy (borg 1.x) repository over the legacy RPC protocol
"""


@pytest.mark.parametrize("legacy_option", [True, False])
def test_gate_states_rest_or_legacy_itself(tmp_path: Path, legacy_option: bool) -> None:
    """borg #9766 would make rest serve's default and add --legacy: both kinds of borg get what the client needs.

    A borg newer than the gate knows (2.0.0b26 here) is asked once whether its serve has
    --legacy (the answer is cached); up to 2.0.0b25, read in borg's source, it is never asked.
    """
    host = Host(tmp_path / "host", binaries={"borg": "2.0.0b26", "old": "2.0.0b25"})
    if legacy_option:
        (host.bin_dir("borg") / "SERVE_HELP").write_text(REST_DEFAULT_HELP)
    (host.repos / "alice").mkdir(parents=True)
    repos = str(host.repos)
    legacy = served(host.run("borg serve --info", ["--client", "alice"]))
    rest = served(host.run(f"borg serve --rest --backend FILE:{repos}/alice/r", ["--client", "alice"]))
    assert legacy["argv"][1:3] == (["serve", "--legacy"] if legacy_option else ["serve", "--info"])
    assert rest["argv"][1:3] == ["serve", "--rest"] and "--legacy" not in rest["argv"]
    assert len((host.bin_dir("borg") / "help-calls").read_text().splitlines()) == 1  # cached per binary
    old = served(host.run("old serve", ["--client", "alice"]))
    assert old["argv"][1:] == ["serve", f"--restrict-to-path={repos}/alice"]
    assert not (host.bin_dir("old") / "help-calls").exists()


def test_session_started_event_names_the_argv(host: Host) -> None:
    record = served(host.run("borg serve --info", ["--client", "alice"]))
    started = [e for e in host.events() if e["event"] == "session.started"]
    assert len(started) == 1
    assert started[0]["argv"] == record["argv"]
    assert started[0]["pid"] == record["pid"]


# --------------------------------------------------------------------------- environment

HOSTILE_ENV = {
    "SSH_USER_AUTH": "/tmp/ssh-auth-info",
    "SSH_AUTH_SOCK": "/tmp/agent.sock",
    "LD_PRELOAD": "libc.so.6",  # loadable everywhere, so it does not disturb the gate itself
    "LD_LIBRARY_PATH": "/tmp/evil",
    "PYTHONPATH": "/tmp/evil",
    "PYTHONHOME": "",
    "BORG_REPO_PERMISSIONS": "all",  # borg 2.0b22 rest serve would take it when --permissions is absent
    "BORG_RSH": "sh -c id",
    "BORG_PASSPHRASE": "from-the-client",
    "BORG_BASE_DIR": "/tmp/client-chosen",
    "TERM": "xterm",
    "DISPLAY": ":0",
    "IFS": "/",
    "ENV": "/tmp/evil.sh",
    "BASH_ENV": "/tmp/evil.sh",
    "LC_ALL": "C.UTF-8",
    "LC_MESSAGES": "C",
    "TZ": "UTC",
}
ALLOWED = {"HOME", "USER", "LOGNAME", "PATH", "LANG", "TZ", "SSH_CONNECTION", "SSH_CLIENT"}


def test_environment_is_exactly_the_allowlist_plus_config(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", borg_env={"BORG_BASE_DIR": "/var/lib/borg-base", "BORG_HOST_ID": "backup1"})
    record = served(host.run("LD_PRELOAD=/tmp/x.so BORG_X=1 borg serve", ["--client", "alice"], env=HOSTILE_ENV))
    sent = {**SSHD_ENV, **HOSTILE_ENV}
    expected = {k: v for k, v in sent.items() if k in ALLOWED or k.startswith("LC_")}
    expected.update({"BORG_BASE_DIR": "/var/lib/borg-base", "BORG_HOST_ID": "backup1"})
    assert record["env"] == expected
    assert "SSH_ORIGINAL_COMMAND" not in record["env"]  # borg would re-parse the raw client text


def test_missing_path_gets_a_default(host: Host) -> None:
    env = {k: v for k, v in SSHD_ENV.items() if k != "PATH"}
    argv = [*GATE, "--config", str(host.config_path), "--client", "alice"]
    outcome = run_gate(argv, {**env, "SSH_ORIGINAL_COMMAND": "borg serve"}, cwd=host.root, records=host)
    assert served(outcome)["env"]["PATH"] == "/usr/local/bin:/usr/bin:/bin"


# --------------------------------------------------------------------------- process


def test_cwd_pid_stdin_stdout_and_fds(host: Host, tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    outcome = host.run("borg serve", ["--client", "alice"], stdin=CLIENT_BYTES, cwd=cwd)
    record = served(outcome)
    assert record["cwd"] == str(cwd)
    assert record["pid"] == outcome.pid  # exec: the process sshd started is borg serve
    assert record["stdin"].encode("latin-1") == CLIENT_BYTES  # nothing read before borg
    assert outcome.stdout == b"RECORDER-STDOUT\n"  # nothing written before borg
    fds = {int(fd): target for fd, target in record["fds"].items()}
    assert {0, 1, 2} <= set(fds)
    assert all(fds[fd].startswith("pipe:") for fd in (0, 1, 2))
    for fd, target in fds.items():  # only the session slots, held by borg serve until it ends
        assert fd <= 2 or target.startswith(str(host.state_dir) + "/"), (fd, target)


def test_umask_default_is_077(host: Host) -> None:
    assert served(host.run("borg serve", ["--client", "alice"]))["umask"] == 0o077


def test_umask_from_config(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", gate={"umask": "027"})
    assert served(host.run("borg serve", ["--client", "alice"]))["umask"] == 0o027


def test_detected_version_is_cached_in_the_state_dir(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", binaries={"borg": ""})  # no stated version: detect
    (host.bin_dir("borg") / "VERSION").write_text("1.2.4")
    for _ in range(3):
        served(host.run("borg serve", ["--client", "alice", "--append-only"]))
    assert detections(host.binary("borg")) == 1
    cache = json.loads((host.state_dir / versions.cache_name()).read_text())
    assert cache[str(host.binary("borg"))]["version"] == "1.2.4"


def test_detected_version_decides_the_translation(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", binaries={"borg": ""})
    (host.bin_dir("borg") / "VERSION").write_text("2.0.0b22")
    (host.repos / "alice").mkdir(parents=True)
    command = f"borg serve --rest --backend FILE:{host.repos}/alice/repo"
    assert "--permissions=no-delete" in served(host.run(command, ["--client", "alice", "--append-only"]))["argv"]


# --------------------------------------------------------------------------- refusals


def refused(outcome: Outcome, kind: Kind) -> str:
    assert outcome.returncode == int(kind), (outcome.returncode, outcome.stderr)
    assert outcome.record is None  # borg never ran
    assert outcome.stdout == b""
    line = outcome.stderr_line()
    assert not line.startswith(("{", "$LOG "))
    return line


def test_refusal_kinds_have_distinct_exit_codes(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", binaries={"borg": "1.2.4", "borg22": "2.0.0b22"}, limits={"wait": 0})
    (host.repos / "alice").mkdir(parents=True)
    seen = {}
    seen[Kind.BAD_COMMAND] = refused(host.run("borg list", ["--client", "alice"]), Kind.BAD_COMMAND)
    seen[Kind.NOT_ALLOWED] = refused(
        host.run("borg22 serve --rest --backend FILE:/etc", ["--client", "alice"]), Kind.NOT_ALLOWED
    )
    seen[Kind.MISCONFIGURED] = refused(host.run("borg serve", ["--client", "../x"]), Kind.MISCONFIGURED)

    # BUSY: one session holds this client's only slot (its borg waits for stdin), the next finds none.
    proc, stdin = host.start("borg serve", ["--client", "alice", "--max-sessions", "1"])
    try:
        wait_for_session(host, proc.pid)
        seen[Kind.BUSY] = refused(host.run("borg serve", ["--client", "alice", "--max-sessions", "1"]), Kind.BUSY)
    finally:
        os.close(stdin)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == b"RECORDER-STDOUT\n"
    assert len({int(k) for k in seen}) == len(seen)
    assert "only borg serve" in seen[Kind.BAD_COMMAND]
    assert "repository path not allowed: /etc" in seen[Kind.NOT_ALLOWED]
    assert "--client" in seen[Kind.MISCONFIGURED]


def wait_for_session(host: Host, pid: int) -> None:
    """Until the gate with ``pid`` logged session.started (it holds its slots from then on)."""
    wait_for(lambda: any(e["pid"] == pid for e in host.events("session.started")), f"gate {pid} to start its session")


@pytest.mark.parametrize(
    ("what", "setup", "kind", "why"),
    [
        ("binary missing", lambda h: h.binary("borg").unlink(), Kind.MISCONFIGURED, "No such file"),
        ("binary not executable", lambda h: h.binary("borg").chmod(0o644), Kind.MISCONFIGURED, "not executable"),
        ("config broken", lambda h: h.config_path.write_text("[gate\n"), Kind.MISCONFIGURED, "config "),
        ("config missing", lambda h: h.config_path.unlink(), Kind.MISCONFIGURED, "file not found"),
    ],
)
def test_broken_host_refuses_and_runs_nothing(host: Host, what: str, setup: Any, kind: Kind, why: str) -> None:
    setup(host)
    assert why in refused(host.run("borg serve", ["--client", "alice"]), kind)


def test_permission_the_target_cannot_enforce_is_refused_not_weakened(host: Host) -> None:
    line = refused(host.run("borg serve", ["--client", "alice", "--permissions", "read-only"]), Kind.NOT_ALLOWED)
    assert "read-only" in line and "1.2.4" in line


def test_rest_path_outside_the_confinement_never_reaches_borg(host: Host) -> None:
    (host.repos / "alice").mkdir(parents=True)
    (host.repos / "alice" / "out").symlink_to(host.repos)
    for path in ("{r}/alice/../bob", "{r}/alice-bar", "{r}/alice/out/bob", "/"):
        command = f"borg22 serve --rest --backend FILE:{path.format(r=host.repos)}"
        refused(host.run(command, ["--client", "alice"]), Kind.NOT_ALLOWED)
