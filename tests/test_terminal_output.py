"""Issue 10, point 4: no control character that came from a file reaches the admin's terminal.

Members write the counters files (and the slot files) that ``status`` and ``metrics`` print;
users own the authorized_keys files ``check`` reads. Planted escapes (retitle, clear screen,
CSI as one C1 byte, a bidi override) come out escaped in text output and as JSON escapes in
JSON output.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from borg_gate.admin import status
from borg_gate.base.printable import printable
from tests.hostile_users import MEMBER, hostile_root, run_as, shared_dir, uid
from tests.observability_support import admin
from tests.recorder import GATE, Host

_ = hostile_root  # the fixture
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m\x7f\u202e\u2028\x00"
# What a terminal acts on: C0 but the newline, DEL, C1, and the separators/format characters
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

PLANT = """
import json, os, sys
text = json.loads(sys.argv[2])
name = os.path.join(sys.argv[1], f"counters-{os.getuid()}.json")
fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
values = {"borg_gate_refusals_total{reason=\\"" + text + "\\"}": 1, "borg_gate_config_errors_total": 5}
last = {"ts": text, "sink": text, "error": text}
os.write(fd, json.dumps({"values": values, "last_error": last}, ensure_ascii=False).encode())
"""


def test_printable_escapes_every_control_character_and_keeps_text() -> None:
    assert printable("alice /srv/borg/ä 漢字 ✓") == "alice /srv/borg/ä 漢字 ✓"
    shown = printable(ESCAPES)
    assert RAW.search(shown) is None and shown.isprintable()
    assert shown == "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x7f\\u202e\\u2028\\x00"
    assert printable(shown) == shown  # idempotent: layers may each apply it
    assert all(printable(chr(c)).isprintable() for c in range(0x110000) if not 0xD800 <= c < 0xE000)


def test_status_text_escapes_every_field_json_escapes_them(tmp_path: Path) -> None:
    session = status.SessionRow(
        client=f"alice{ESCAPES}",
        user=ESCAPES,
        conn=ESCAPES,
        pid=1,
        serve_pid=1,
        started=f"2026-01-01T00:00:00{ESCAPES}",
        duration=1.0,
        waited=0.0,
        binary=f"/usr/bin/borg{ESCAPES}",
        restrictions=[f"--restrict-to-path=/srv/{ESCAPES}"],
        rss=None,
        cpu_seconds=None,
        bytes_read=None,
        bytes_written=None,
    )
    budget = status.BudgetRow("client", f"bob{ESCAPES}", 1, 1, 0, 0)
    errors = [{"ts": ESCAPES, "sink": ESCAPES, "error": ESCAPES}, {"ts": 1.5, "sink": "file", "error": ESCAPES}]
    holds = [{"scope": f"client:{ESCAPES}", "reason": ESCAPES, "since": 1.5}]
    report = status.StatusReport(f"/run/{ESCAPES}", ESCAPES, [budget], [session], {ESCAPES: 1.0}, errors, holds)
    out = status.text(report)
    assert RAW.search(out) is None, out
    assert "alice\\x1b]0;owned" in out and "client bob\\x1b" in out and "/usr/bin/borg\\x1b" in out


def test_planted_counters_reach_no_terminal(hostile_root: Path) -> None:
    """A member's own counters file full of escapes: status and metrics (run as root) print none of them."""
    state = shared_dir(hostile_root / "state")
    host = Host(hostile_root / "host", gate={"state_dir": str(state)})
    planted = run_as(MEMBER, PLANT, str(state), json.dumps(ESCAPES))
    assert planted.returncode == 0, planted.stderr
    assert (state / f"counters-{uid(MEMBER)}.json").exists()

    text = admin(host, "status")
    assert text.returncode == 0, text.stderr
    assert RAW.search(text.stdout) is None and "\\x1b]0;owned" in text.stdout  # her last_error, escaped

    raw = admin(host, "status", "--json")
    assert raw.returncode == 0 and raw.stdout.isascii() and RAW.search(raw.stdout) is None
    assert json.loads(raw.stdout)["last_sink_errors"][-1]["error"] == ESCAPES  # exact, through JSON escapes

    metrics = admin(host, "metrics")
    assert metrics.returncode == 0 and RAW.search(metrics.stdout) is None
    # her other series still counts; the one with escapes is dropped
    assert "borg_gate_config_errors_total 5" in metrics.stdout
    assert "owned" not in metrics.stdout


def test_check_prints_no_control_character_from_a_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text(f'command="borg-gate --client {ESCAPES}",restrict ssh-ed25519 AAAA{ESCAPES} c\n')
    keys.chmod(0o600)
    for args in ([], ["--json"]):
        out = subprocess.run(
            [*GATE, "check", "--no-sshd", "--authorized-keys", str(keys), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 2 and out.stdout, out.stderr
        assert RAW.search(out.stdout) is None, out.stdout
    assert json.loads(out.stdout)["findings"]
