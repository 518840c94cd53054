"""The persistent counters behind metrics: what each event adds, no lost increment, no torn file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from borg_gate.admin import counterfiles
from borg_gate.base import counters
from borg_gate.base.counters import series
from borg_gate.base.printable import printable


def test_what_each_event_adds() -> None:
    f = counters.from_event
    assert f({"event": "connection.refused", "kind": "busy", "client": "a", "waited": 2.5}, {}) == {
        series(counters.REFUSALS, reason="busy"): 1,
        series(counters.WAITED, client="a"): 2.5,
    }
    assert f({"event": "session.started", "client": "a", "waited": 0.0}, {}) == {
        series(counters.STARTED, client="a"): 1
    }
    assert f({"event": "session.queued", "budget": "host"}, {}) == {series(counters.QUEUED, budget="host"): 1}
    ended = {"event": "session.ended", "client": "a", "cpu_seconds": 1.5, "bytes_read": 10, "bytes_written": 20}
    assert f(ended, {}) == {
        series(counters.ENDED, client="a"): 1,
        series(counters.CPU, client="a"): 1.5,
        series(counters.READ, client="a"): 10,
        series(counters.WRITTEN, client="a"): 20,
    }
    assert f({"event": "config.error"}, {"file": "x", "syslog": "y"}) == {
        counters.CONFIG_ERRORS: 1,
        series(counters.SINK_FAILURES, sink="file"): 1,
        series(counters.SINK_FAILURES, sink="syslog"): 1,
    }
    assert f({"event": "gate.error"}, {}) == {}


def test_add_and_load(tmp_path: Path) -> None:
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1, series(counters.REFUSALS, reason="busy"): 2.5})
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1}, {"file": "/log: No space left on device"})
    totals = counterfiles.load(str(tmp_path))
    assert totals.values == {counters.CONFIG_ERRORS: 2, series(counters.REFUSALS, reason="busy"): 2.5}
    (last,) = totals.last_errors
    assert last["sink"] == "file" and last["error"] == "/log: No space left on device"
    assert os.listdir(tmp_path) == [f"counters-{os.getuid()}.json"]
    mine = tmp_path / f"counters-{os.getuid()}.json"
    assert mine.stat().st_mode & 0o777 == counters.FILE_MODE
    assert mine.stat().st_size == counters.BLOCK  # grows by reserved blocks, rewritten whole in place


def test_grows_in_blocks_and_keeps_totals(tmp_path: Path) -> None:
    many = {series(counters.STARTED, client=f"client-{i:04d}"): 1 for i in range(300)}  # ~10 KB of JSON
    assert counters.add(str(tmp_path), many)
    assert counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    size = (tmp_path / f"counters-{os.getuid()}.json").stat().st_size
    assert size % counters.BLOCK == 0 and size > counters.BLOCK
    assert counterfiles.load(str(tmp_path)).values == {**many, counters.CONFIG_ERRORS: 1}


def test_files_of_several_users_are_summed(tmp_path: Path) -> None:
    for uid, n in ((1001, 3), (1002, 4)):
        (tmp_path / f"counters-{uid}.json").write_text(json.dumps({"values": {counters.CONFIG_ERRORS: n}}))
    counters.add(str(tmp_path), {counters.CONFIG_ERRORS: 1})
    assert counterfiles.load(str(tmp_path)).values == {counters.CONFIG_ERRORS: 8}


def test_missing_or_unsafe_state_dir_is_no_error(tmp_path: Path) -> None:
    assert counters.add(str(tmp_path / "missing"), {counters.CONFIG_ERRORS: 1}) is False
    (tmp_path / "link").symlink_to(tmp_path)
    assert counters.add(str(tmp_path / "link"), {counters.CONFIG_ERRORS: 1}) is False
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # world-writable without sticky bit: the slots refuse it, so do the counters
    assert counters.add(str(open_dir), {counters.CONFIG_ERRORS: 1}) is False
    assert counterfiles.load(str(tmp_path / "missing")).values == {}


def test_corrupt_or_hostile_file(tmp_path: Path) -> None:
    mine = tmp_path / f"counters-{os.getuid()}.json"
    mine.write_text("{not json")
    assert counters.add(
        str(tmp_path), {counters.CONFIG_ERRORS: 1}
    )  # starts over rather than failing forever, and says so
    restarted = series(counters.SINK_FAILURES, sink="counters")
    assert counterfiles.load(str(tmp_path)).values == {counters.CONFIG_ERRORS: 1, restarted: 1}
    hostile = {
        "values": {
            counters.CONFIG_ERRORS + '{a="1"}\nevil_total': 5,  # a second line smuggled into the key
            series(counters.REFUSALS, reason="busy"): -3,
            series(counters.STARTED, client="x"): "7",
            series(counters.QUEUED, budget="host"): 2,
        }
    }
    (tmp_path / "counters-4242.json").write_text(json.dumps(hostile))
    totals = counterfiles.load(str(tmp_path))
    assert totals.values == {counters.CONFIG_ERRORS: 1, restarted: 1, series(counters.QUEUED, budget="host"): 2}
    assert totals.rejected == {**dict.fromkeys(counterfiles.REASONS, 0.0), "name": 1, "value": 2}
    assert totals.rejected_files == [("counters-4242.json", "4242", {"name": 1, "value": 2})]


INCREMENTER = """
import sys
from borg_gate.base import counters
mine = counters.series(counters.WAITED, client="w" + sys.argv[3])
for i in range(int(sys.argv[2])):
    counters.add(sys.argv[1], {counters.CONFIG_ERRORS: 1, mine: 0.5})
"""


def test_concurrent_increments_are_never_lost(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", INCREMENTER, str(tmp_path), "40", str(w)]) for w in range(50)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 50
    values = counterfiles.load(str(tmp_path)).values
    assert values[counters.CONFIG_ERRORS] == 50 * 40
    assert all(values[series(counters.WAITED, client=f"w{w}")] == 20 for w in range(50))


@given(st.text(max_size=40), st.text(max_size=40))
def test_series_is_valid_exposition(client: str, reason: str) -> None:
    """Whatever the label text, Prometheus reads back the same value, control characters escaped; by_label too."""
    key = series("x_total", client=client, reason=reason)
    (family,) = text_string_to_metric_families(f"# TYPE x_total counter\n{key} 3\n")
    (sample,) = family.samples
    client, reason = printable(client), printable(reason)
    assert sample.labels == {"client": client, "reason": reason} and sample.value == 3
    assert counterfiles.parse_series(key) == ("x_total", [("client", client), ("reason", reason)])
    assert counterfiles.by_label({key: 3.0}, "x_total", "client") == {client: 3.0}
    assert counterfiles.by_label({key: 3.0}, "x_total", "reason") == {reason: 3.0}
