"""Issue 10, points 5 and 9b: world-writable shared dirs are refused; a log file a member made is not appended to.

Point 5: a state dir or log dir writable by everyone (sticky or not, /tmp itself) makes every
local user a member: the gate refuses it (212, with the reason) and ``check`` reports it.
Point 9b: in logrotate's rename-to-create window a member could create the log herself; the
gates of other users never append to a log file owned by anyone but root or themselves, or to
a second name (hard link) of another file. Each such event is a counted file-sink failure.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from borg_gate.admin import check, counterfiles
from borg_gate.base import counters
from borg_gate.base.counters import series
from borg_gate.base.errors import Kind
from tests.eventlog import read_events
from tests.hostile_users import MEMBER, VICTIM, hostile_root, run_as, shared_dir, uid
from tests.recorder import Host

_ = hostile_root  # the fixture
FILE_FAILURES = series(counters.SINK_FAILURES, sink="file")


def check_findings(host: Host) -> list[check.Finding]:
    return check.run_check(str(host.config_path), [], None, sshd=False).findings


@pytest.mark.parametrize("mode", [0o1777, 0o0777, 0o3777])
def test_a_world_writable_state_dir_is_refused_sticky_or_not(tmp_path: Path, mode: int) -> None:
    host = Host(tmp_path)
    host.state_dir.chmod(mode)
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None
    assert out.stderr_line().startswith(f"state dir {host.state_dir}: world-writable")
    (refused,) = host.events()
    assert refused["event"] == "connection.refused" and "world-writable" in refused["reason"]
    (finding,) = [f for f in check_findings(host) if f.code == "state-dir"]
    assert finding.severity == check.ERROR and "world-writable" in finding.message


def test_tmp_as_state_dir_is_refused(tmp_path: Path) -> None:
    host = Host(tmp_path, gate={"state_dir": "/tmp"})
    assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED
    assert out.stderr_line().startswith("state dir /tmp: world-writable (sticky or not")
    assert [f.code for f in check_findings(host) if f.severity == check.ERROR] == ["state-dir"]


@pytest.mark.parametrize("mode", [0o1777, 0o0777])
def test_a_world_writable_log_dir_is_refused_and_not_written(tmp_path: Path, mode: int) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(mode)
    host = Host(tmp_path, gate={"log_file": str(logs / "gate.jsonl")})
    out = host.run("borg serve", ["--client", "alice"])
    assert out.returncode == Kind.MISCONFIGURED and out.record is None
    assert out.stderr_line().startswith(f"log dir {logs}: world-writable")
    assert not (logs / "gate.jsonl").exists()  # refused without touching a dir anyone can plant in
    values = counterfiles.load(str(host.state_dir)).values
    assert values[series(counters.REFUSALS, reason="misconfigured")] == 1  # still counted
    (finding,) = [f for f in check_findings(host) if f.code == "log-dir"]
    assert finding.severity == check.ERROR and "world-writable" in finding.message
    logs.chmod(0o755)
    assert host.run("borg serve", ["--client", "alice"]).returncode == 0
    assert [e["event"] for e in read_events(logs / "gate.jsonl")] == ["session.started"]


EMIT = """
import sys
from borg_gate.base import connection
from borg_gate.base.events import EventLog
log = EventLog(connection.current({}), sys.argv[1], state_dir=sys.argv[2])
log.emit("session.started", client="victim")
print(log.failures)
"""

PLANT = """
import os, sys
os.umask(0)
if sys.argv[1] == "create":
    os.close(os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
else:
    os.link(sys.argv[3], sys.argv[2])
"""


@pytest.mark.parametrize("plant", ["create", "link"])
def test_a_log_file_planted_by_a_member_is_never_appended_to(hostile_root: Path, plant: str) -> None:
    """The window logrotate's rename leaves in a group-writable log dir, as two real users."""
    state = shared_dir(hostile_root / "state")
    logs = shared_dir(hostile_root / "log")  # 3770, as before this change: members can create files
    log = logs / "gate.jsonl"
    own = state / "victim-own"  # a file of the victim's that group members may write
    made = run_as(
        VICTIM,
        "import os, sys; os.umask(0o007); os.close(os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o660))",
        str(own),
    )
    assert made.returncode == 0, made.stderr
    planted = run_as(MEMBER, PLANT, plant, str(log), str(own))
    assert planted.returncode == 0, planted.stderr
    emitted = run_as(VICTIM, EMIT, str(log), str(state))
    assert emitted.stdout == "1\n", emitted.stderr  # one failed sink: the file; no traceback
    assert log.read_bytes() == b"" and own.read_bytes() == b""
    totals = counterfiles.load(str(state))
    assert totals.values[FILE_FAILURES] == 1
    why = "owned by uid" if plant == "create" else "2 links, not 1"
    assert why in totals.last_errors[-1]["error"]
    if plant == "create":
        assert log.stat().st_uid == uid(MEMBER)


def test_the_packaged_log_dir_leaves_members_no_window(hostile_root: Path) -> None:
    """0750 root:group (packaging/tmpfiles.d): a member appends to the root-made log, creates nothing beside it."""
    logs = shared_dir(hostile_root / "log", 0o750)
    log = logs / "gate.jsonl"
    log.touch()
    os.chown(log, 0, logs.stat().st_gid)
    log.chmod(0o660)
    state = shared_dir(hostile_root / "state")
    assert run_as(VICTIM, EMIT, str(log), str(state)).stdout == "0\n"
    assert b'"session.started"' in log.read_bytes()
    log.rename(logs / "gate.jsonl-1")  # logrotate's rename; its create follows
    planted = run_as(MEMBER, PLANT, "create", str(log), "")
    assert planted.returncode != 0 and "Permission denied" in planted.stderr
    assert run_as(VICTIM, EMIT, str(log), str(state)).stdout == "1\n"  # the event in the window: counted, lost
