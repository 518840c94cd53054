"""The JSON event log: each event's fields, one line per event whatever the input, the sinks."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_gate.admin import counterfiles
from borg_gate.base import connection, counters, events
from borg_gate.base.events import EventLog
from tests.observability_support import events as logged
from tests.observability_support import log_lines
from tests.recorder import SSHD_ENV, Host, Outcome, run_gate

ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
COMMON = ("ts", "event", "conn", "user", "remote_ip", "remote_port", "key", "command", "pid")


def ssh_keygen_fingerprint(tmp_path: Path) -> tuple[str, str]:
    """A real key and ssh-keygen's own idea of its fingerprint."""
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "id.pub").read_text().split()
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(key) + ".pub"], check=True, capture_output=True, text=True)
    return f"publickey {pub[0]} {pub[1]}\n", out.stdout.split()[1]


def test_common_fields_from_sshd_environment(tmp_path: Path) -> None:
    auth, fingerprint = ssh_keygen_fingerprint(tmp_path)
    (tmp_path / "auth").write_text(auth)
    env = {
        "SSH_CONNECTION": "192.0.2.7 51234 192.0.2.1 22",
        "SSH_USER_AUTH": str(tmp_path / "auth"),
        "SSH_ORIGINAL_COMMAND": "borg serve --info",
    }
    log = EventLog(connection.current(env), str(tmp_path / "log"))
    log.bind(client="alice", binary="/usr/bin/borg", restrictions=["--restrict-to-path=/srv/alice"])
    log.emit("session.started", waited=1.5, slots=["client/alice/0", "host/3"])
    (record,) = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert list(record)[:3] == ["ts", "event", "conn"]
    assert record["event"] == "session.started"
    assert record["remote_ip"] == "192.0.2.7" and record["remote_port"] == 51234
    assert record["key"] == fingerprint
    assert record["command"] == "borg serve --info"
    assert record["pid"] == os.getpid()
    assert record["client"] == "alice" and record["binary"] == "/usr/bin/borg"
    assert record["restrictions"] == ["--restrict-to-path=/srv/alice"]
    assert record["waited"] == 1.5 and record["slots"] == ["client/alice/0", "host/3"]
    assert re.fullmatch(ISO_RE, record["ts"])
    ts = datetime.fromisoformat(record["ts"])
    assert ts.tzinfo == UTC
    assert abs(ts.timestamp() - datetime.now(UTC).timestamp()) < 3600


@settings(max_examples=200, deadline=None)
@given(command=st.text(), value=st.text(), name=st.text(min_size=1))
def test_one_line_per_event_whatever_the_text(
    tmp_path_factory: pytest.TempPathFactory, command: str, value: str, name: str
) -> None:
    path = tmp_path_factory.mktemp("log") / "gate.jsonl"
    conn = connection.current({"SSH_ORIGINAL_COMMAND": command})
    log = EventLog(conn, str(path))
    log.emit("connection.refused", reason=value, **{"x" + name: value})
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert all(32 <= b < 127 for b in data[:-1])  # ASCII only: no control or line-separator characters
    record = json.loads(data)
    assert record["command"] == command and record["reason"] == value and record["x" + name] == value


def test_unrenderable_field_costs_the_event_not_the_gate(tmp_path: Path) -> None:
    log = EventLog(connection.current({}), str(tmp_path / "log"), state_dir=str(tmp_path))
    log.emit("session.started", waited=float("nan"), bad={1.5: object()})  # renders: null, "1.5", str()
    circular: list[object] = []
    circular.append(circular)
    log.emit("session.started", loop=circular)  # json cannot render this: counted, not raised
    assert log.failures == 1
    first = json.loads((tmp_path / "log").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert first["waited"] is None and list(first["bad"]) == ["1.5"]
    totals = counterfiles.load(str(tmp_path)).values
    assert totals[counters.series(counters.SINK_FAILURES, sink="render")] == 1


def test_structlog_renders_the_same_line() -> None:
    import structlog

    out: list[str] = []

    class Capture:
        def msg(self, line: str) -> None:
            out.append(line)

        info = msg

    structlog.configure(
        processors=[
            structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True, key="ts"),
            events.structlog_renderer,
        ],
        logger_factory=lambda *a: Capture(),
        cache_logger_on_first_use=False,
    )
    try:
        structlog.get_logger().bind(conn="c1", client="alice").info("session.started", waited=2.0)
    finally:
        structlog.reset_defaults()
    record = json.loads(out[0])
    assert list(record)[:3] == ["ts", "event", "conn"]
    assert re.fullmatch(ISO_RE, record["ts"])
    assert out[0] == events.render({**record})  # byte for byte what EventLog writes for these fields


# ---------------------------------------------------------------- through the real gate


def test_refused_connection_event(tmp_path: Path) -> None:
    host = Host(tmp_path)
    out = host.run("rm -rf /", ["--client", "alice"])
    assert out.refused
    (refused,) = logged(host, "connection.refused")
    assert refused["exit_code"] == out.returncode == 210
    assert refused["kind"] == "bad-command" and refused["reason"]
    assert refused["command"] == "rm -rf /" and refused["client"] == "alice"
    assert refused["pid"] == out.pid and refused["user"]
    assert refused["remote_ip"] == "127.0.0.1" and refused["remote_port"] == 40000
    assert counterfiles.load(str(host.state_dir)).values[counters.series(counters.REFUSALS, reason="bad-command")] == 1


PATCHED_GATE = """
import sys
from borg_gate.base import config, events
from borg_gate.conn import gate
exec(sys.argv[1])
gate.main(sys.argv[2:])
"""


def run_patched(host: Host, patch: str, key_args: list[str], command: str = "borg serve") -> Outcome:
    """The real gate with a module constant changed first (a default path, the syslog socket)."""
    argv = [sys.executable, "-c", PATCHED_GATE, patch, "--config", str(host.config_path), *key_args]
    return run_gate(argv, {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}, cwd=host.root, records=host)


def test_config_error_then_refusal_share_the_connection_id(tmp_path: Path) -> None:
    """A broken config cannot name its log: the events go to the built-in default log and state dir."""
    host = Host(tmp_path, limits={"max_sessions": 0})
    default_log, default_state = tmp_path / "default.jsonl", tmp_path / "default-state"
    default_state.mkdir()
    defaults = f"'log_file': {str(default_log)!r}, 'state_dir': {str(default_state)!r}"
    patch = f"orig = config.Config\nconfig.Config = lambda **kw: orig(**{{{defaults}, **kw}})"
    out = run_patched(host, patch, ["--client", "alice"])
    assert out.returncode == 212 and out.record is None
    error, refused = log_lines(default_log)
    assert error["event"] == "config.error" and refused["event"] == "connection.refused"
    assert error["conn"] == refused["conn"] and error["pid"] == refused["pid"] == out.pid
    assert error["config"] == str(host.config_path) and "max_sessions" in error["reason"]
    assert refused["kind"] == "misconfigured" and refused["exit_code"] == 212
    assert "client" not in error  # not known yet: the config comes before the client name
    values = counterfiles.load(str(default_state)).values
    assert values[counters.CONFIG_ERRORS] == 1
    assert values[counters.series(counters.REFUSALS, reason="misconfigured")] == 1


def test_started_event_fields(tmp_path: Path) -> None:
    host = Host(tmp_path)
    out = host.run("borg serve --info", ["--client", "alice", "--append-only"])
    assert out.record is not None and out.returncode == 0
    (started,) = logged(host, "session.started")
    assert started["pid"] == out.pid == out.record["pid"]  # exec: the gate's pid is borg serve's
    assert started["client"] == "alice" and started["binary"] == str(host.binary("borg"))
    assert started["restrictions"] == [f"--restrict-to-path={host.repos}/alice"]
    assert started["argv"] == out.record["argv"]
    assert isinstance(started["waited"], float) and isinstance(started["slots"], list)
    assert started["borg_version"] == "1.2.4" and started["command"] == "borg serve --info"
    assert counterfiles.load(str(host.state_dir)).values[counters.series(counters.STARTED, client="alice")] == 1


def test_all_events_of_a_connection_share_its_id(tmp_path: Path) -> None:
    host = Host(tmp_path)
    for _ in range(3):
        host.run("borg serve", ["--client", "alice"])
        host.run("borg serve --bogus", ["--client", "alice"])
    ids = [e["conn"] for e in host.events()]
    assert len(ids) == 6 and len(set(ids)) == 6  # one event each, six connections, six ids


# ---------------------------------------------------------------- failing sinks


@pytest.mark.parametrize("log_file", ["/dev/full", "{root}", "{root}/gate.jsonl/x"])
def test_failing_file_sink_never_breaks_a_backup(tmp_path: Path, log_file: str) -> None:
    """A device (/dev/full), a directory, a path under a file: borg still runs, stdout stays borg's."""
    host = Host(tmp_path, gate={"log_file": log_file.format(root=tmp_path)})
    (tmp_path / "gate.jsonl").write_text("")
    out = host.run("borg serve", ["--client", "alice"], stdin=b"request")
    assert out.returncode == 0 and out.record is not None and out.record["stdin"] == "request"
    assert out.stdout == b"RECORDER-STDOUT\n" and out.stderr == b""
    totals = counterfiles.load(str(host.state_dir))
    assert totals.values[counters.series(counters.SINK_FAILURES, sink="file")] == 1
    (last,) = totals.last_errors
    assert last["sink"] == "file" and log_file.format(root=tmp_path) in last["error"]


def test_log_file_created_group_writable(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    old = os.umask(0o022)  # sshd's
    try:
        EventLog(connection.current({}), str(path)).emit("session.started")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == events.LOG_MODE


def test_log_file_symlink_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "log").symlink_to(target)
    log = EventLog(connection.current({}), str(tmp_path / "log"))
    log.emit("session.started")
    assert target.read_text() == "" and log.failures == 1


def test_syslog_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log.sock"))
    monkeypatch.setattr(events, "SYSLOG_SOCKET", str(tmp_path / "log.sock"))
    log = EventLog(connection.current({"SSH_ORIGINAL_COMMAND": "x\ny"}), None, syslog=True)
    log.emit("session.started", waited=0.5)
    log.emit("connection.refused", kind="busy")
    started = server.recv(65536).decode()
    refused = server.recv(65536).decode()
    server.close()
    m = re.fullmatch(r"<30>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d borg-gate\[(\d+)\]: (\{.*\})", started)
    assert m and int(m[1]) == os.getpid()
    assert json.loads(m[2])["command"] == "x\ny" and json.loads(m[2])["waited"] == 0.5
    assert refused.startswith("<28>")  # daemon.warning
    assert log.failures == 0


SYSLOG_STORM = """
import sys
from borg_gate.base import connection, events
events.SYSLOG_SOCKET = sys.argv[1]
log = events.EventLog(connection.current({}), None, syslog=True, state_dir=sys.argv[2])
for i in range(200):
    log.emit("session.started", n=i)
print(log.failures)
"""


def test_stalled_syslog_never_blocks(tmp_path: Path) -> None:
    """journald not reading: its socket queue fills, and every later event is dropped and counted, not waited for."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log.sock"))
    try:
        out = subprocess.run(
            [sys.executable, "-c", SYSLOG_STORM, str(tmp_path / "log.sock"), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,  # a blocking send would hang here
            check=True,
        )
    finally:
        server.close()
    failures = int(out.stdout)
    assert 0 < failures < 200
    assert counterfiles.load(str(tmp_path)).values[counters.series(counters.SINK_FAILURES, sink="syslog")] == failures


def test_missing_syslog_socket_is_a_counted_failure(tmp_path: Path) -> None:
    host = Host(tmp_path, gate={"syslog": True})
    out = run_patched(host, f"events.SYSLOG_SOCKET = {str(tmp_path / 'no-such-socket')!r}", ["--client", "alice"])
    assert out.returncode == 0 and out.record is not None and out.stderr == b""
    assert out.stdout == b"RECORDER-STDOUT\n"
    assert counterfiles.load(str(host.state_dir)).values[counters.series(counters.SINK_FAILURES, sink="syslog")] == 1
    assert len(logged(host, "session.started")) == 1  # the file sink still took it
