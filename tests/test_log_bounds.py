"""Issue 10, point 6: client input in a log line is bounded; no event line exceeds 8 KiB, whatever it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from borg_gate.base import connection, events
from borg_gate.base.errors import Kind
from borg_gate.base.events import COMMAND_CHARS, MAX_LINE, EventLog
from tests.recorder import Host

LARGEST = "\U0010ffff" * 32_000  # ~128 KiB of UTF-8: as much as one environment string may hold


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_the_largest_command_a_client_can_send_through_a_real_gate(tmp_path: Path) -> None:
    host = Host(tmp_path)
    out = host.run(LARGEST, ["--client", "alice"])
    assert out.returncode == Kind.BAD_COMMAND and out.refused
    assert len(out.stderr) < 1024  # the refusal line is bounded too (errors.shown)
    (line,) = lines(host.log_file)
    assert len(line) <= MAX_LINE and line.endswith(b"\n")
    record = json.loads(line)
    assert record["event"] == "connection.refused" and record["kind"] == "bad-command"
    assert record["command_length"] == 32_000
    assert 0 < len(record["command"]) <= COMMAND_CHARS and LARGEST.startswith(record["command"])


def test_a_long_ascii_command_keeps_its_first_1000_characters(tmp_path: Path) -> None:
    host = Host(tmp_path)
    command = "borg serve " + "--debug " * 15_000  # 120,000 bytes: under the 128 KiB an environment string may hold
    host.run(command, ["--client", "alice"])
    (record,) = host.events()
    assert record["command"] == command[:COMMAND_CHARS] and record["command_length"] == len(command)
    host.run("borg serve", ["--client", "alice"])
    assert "command_length" not in host.events()[-1]  # a normal command is logged whole, as before


def test_every_field_is_bounded_tracebacks_and_reasons_too(tmp_path: Path) -> None:
    log_file = tmp_path / "gate.jsonl"
    log = EventLog(connection.current({"SSH_ORIGINAL_COMMAND": LARGEST}), str(log_file), state_dir=str(tmp_path))
    log.bind(client="alice", restrictions=["--restrict-to-path=/" + "\x1b" * 5000] * 10)
    log.emit("gate.error", error="\U0010ffff" * 100_000, traceback="Traceback\n" * 50_000, reason="\x00" * 9000)
    log.emit("session.started", argv=["x" * 1000] * 1000, nested={"deep": [{"k": "v" * 100_000}]})
    log.emit("session.ended", **{f"field{i}": "y" * 100 for i in range(500)})
    written = lines(log_file)
    assert len(written) == 3 and log.failures == 0
    for line in written:
        assert len(line) <= MAX_LINE
        record = json.loads(line)
        assert record["truncated"] is True and record["conn"] == log.conn.id and record["event"]
    assert json.loads(written[0])["traceback"].startswith("Traceback\nTraceback\n")  # cut, not dropped


FIELDS: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=50) | st.dictionaries(st.text(max_size=20), inner, max_size=20),
    max_leaves=200,
)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=20_000),
    st.dictionaries(st.text(min_size=1, max_size=30).filter(lambda k: k not in events.HEAD), FIELDS, max_size=30),
)
def test_no_line_exceeds_the_bound(command: str, fields: dict[str, Any]) -> None:
    log = EventLog(connection.current({"SSH_ORIGINAL_COMMAND": command}), None)
    record = log.record("connection.refused", fields)
    line = events.bounded(record)
    assert len(line) + 1 <= MAX_LINE
    parsed = json.loads(line)
    assert parsed["event"] == "connection.refused" and parsed["conn"] == log.conn.id
    if "truncated" not in parsed:
        assert line == events.render(record)  # a line that fits is exactly the unbounded one
