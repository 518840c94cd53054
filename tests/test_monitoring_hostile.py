"""Issue 22: root's monitoring against a hostile member of the gate's group.

A member writes her own counters file (her own, 0600: exactly what the readers trust) with
whatever she likes. root's ``metrics``, ``repos``, ``status`` and ``check`` must still exit 0,
publish a file that promtool and node_exporter accept, keep every other client's facts, and
say which file and which unix user the dropped series came from.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from borg_gate.admin import counterfiles, metrics, served
from borg_gate.base import counters
from tests import node_exporter
from tests.hostile_users import MEMBER, VICTIM, run_as, shared_dir, uid
from tests.hostile_users import hostile_root as hostile_root  # a fixture

NOW = time.time()
STARTED = counters.series(counters.STARTED, client="victim-client")


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------- the parser and checks, pure


def test_a_series_key_is_parsed_as_prometheus_writes_it() -> None:
    p = counterfiles.parse_series
    assert p("a_total") == ("a_total", [])
    assert p('a{b="x\\"y\\\\z\\nw",c=""}') == ("a", [("b", 'x"y\\z\nw'), ("c", "")])
    assert p('a{b="1",b="2"}') == ("a", [("b", "1"), ("b", "2")])  # kept: the check refuses it
    for bad in ("", "1a", 'a{b="1"', 'a{b="1"}x', 'a{b="\\t"}', 'a{="1"}', "a b", 'a{b="1",}', "a\n", 'a{b="\n"}'):
        assert p(bad) is None, bad


def test_only_what_the_gate_writes_is_taken() -> None:
    c = counterfiles.check_series
    ok = counters.series(counters.REFUSALS, reason="busy")
    assert c(ok, 3) == (counters.REFUSALS, "busy", 3.0)
    assert c(counters.CONFIG_ERRORS, 1) == (counters.CONFIG_ERRORS, None, 1.0)
    assert c("borg_gate_something_else_total", 1) == "name"
    assert c('up{job="x"}', 1) == "name"
    assert c(counters.REFUSALS + '{__name__="x"}', 1) == "label"  # reserved
    assert c(counters.REFUSALS + '{reason="busy",reason="busy"}', 1) == "label"  # duplicated
    assert c(counters.REFUSALS + '{reason="made-up"}', 1) == "label"  # not a kind the gate has
    assert c(counters.STARTED + '{client="a",user="root"}', 1) == "label"  # a label the gate never writes
    assert c(counters.STARTED + '{client="no spaces"}', 1) == "label"
    for value in (math.inf, -math.inf, math.nan, -1, "7", True, None, 10**400):
        assert c(ok, value) == "value", value


def test_times_must_fall_between_the_gates_birth_and_now() -> None:
    c = counterfiles.check_last
    good = {"start": NOW - 60, "end": NOW - 5, "exit_code": 0, "bytes_read": 10, "success": NOW - 5}
    assert c("web1", good, NOW) == {k: float(v) for k, v in good.items()}
    assert c("web1", {"start": NOW + counterfiles.SKEW - 1}, NOW) == {"start": NOW + counterfiles.SKEW - 1}
    for start in (counterfiles.EPOCH - 1, NOW + counterfiles.SKEW + 1, 1e18, 0):
        assert c("web1", {"start": start}, NOW) == "time", start
    for entry in (
        {"start": math.inf},
        {"start": math.nan},
        {"exit_code": 256},
        {"exit_code": 1.5},
        {"bytes_read": 1e300},
    ):
        assert c("web1", entry, NOW) == "value", entry
    assert c("web1", {"start": NOW, "evil": 1}, NOW) == "label"
    assert c("not a client", {"start": NOW}, NOW) == "label"


# --------------------------------------------------------------------------- any file at all: valid exposition

keys = st.one_of(
    st.sampled_from([counters.STARTED, counters.REFUSALS, counters.CONFIG_ERRORS, "up", "__name__", ""]).flatmap(
        lambda name: st.lists(
            st.tuples(
                st.sampled_from(["client", "reason", "sink", "budget", "__x", "user", "le"]), st.text(max_size=8)
            ),
            max_size=3,
        ).map(lambda labels: name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""))
    ),
    st.text(max_size=30),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=3),
)
entries = st.dictionaries(st.sampled_from([*counters.LAST_FIELDS, "evil"]), numbers, max_size=4)
files = st.fixed_dictionaries(
    {},
    optional={
        "values": st.dictionaries(keys, numbers, max_size=8),
        "last": st.dictionaries(st.text(max_size=10), entries, max_size=3),
        "last_error": st.dictionaries(st.sampled_from(["ts", "sink", "error"]), numbers, max_size=3),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(files, min_size=1, max_size=3))
def test_whatever_members_write_the_exposition_passes_promtool(contents: list[dict[str, Any]]) -> None:
    # as the reader sees it: Infinity and NaN are JSON to Python's reader
    parsed = [counters.parse(json.dumps(c).encode()) for c in contents]
    checked = [counterfiles.check_file(f"counters-{4000 + i}.json", 4000 + i, d, NOW) for i, d in enumerate(parsed)]
    totals = counterfiles.combine(checked, {4000: frozenset({"victim-client"})})
    text = metrics.exposition([], totals.values, list(counterfiles.rejected_lines(totals)))
    out = promtool_check(text)
    assert out.returncode == 0, out.stdout + out.stderr + text
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("borg_gate_")
        for sample in family.samples:
            assert math.isfinite(sample.value) and sample.value >= 0, sample


# --------------------------------------------------------------------------- a real member, real processes


def _counters_as(user: str, state: Path, increments: dict[str, float], last: dict[str, Any]) -> None:
    code = (
        "import json, sys\nfrom borg_gate.base import counters\n"
        "assert counters.add(sys.argv[1], json.loads(sys.argv[2]), None, json.loads(sys.argv[3]))\n"
    )
    out = run_as(user, code, str(state), json.dumps(increments), json.dumps(last))
    assert out.returncode == 0, out.stderr


def _forge_as(user: str, state: Path, data: str) -> None:
    """Her own file, as the gate writes it (0600, hers), holding whatever she wants."""
    code = (
        "import os, sys\nname = f'{sys.argv[1]}/counters-{os.getuid()}.json'\n"
        "fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\nos.write(fd, sys.argv[2].encode())\n"
    )
    out = run_as(user, code, str(state), data)
    assert out.returncode == 0, out.stderr


FORGED = (
    '{"values": {'
    f'"{counters.STARTED}{{client=\\"victim-client\\",client=\\"x\\"}}": 1,'  # duplicated label: promtool's error
    f'"{counters.REFUSALS}{{__name__=\\"evil\\"}}": 1,'  # reserved label name
    f'"{STARTED.replace(chr(34), chr(92) + chr(34))}": 1000000,'  # another client's counter
    f'"{counters.CONFIG_ERRORS}": Infinity'
    '}, "last": {'
    f'"victim-client": {{"start": {NOW}, "success": {NOW}}},'  # another client's freshness, forged
    '"mallory": {"start": 1e18, "success": Infinity}'  # times that crashed repos and silenced alerts
    "}}"
)


def _site(root: Path) -> tuple[Path, Path, Path]:
    state = shared_dir(root / "state")
    conf = root / "config.toml"
    conf.write_text(f'[gate]\nstate_dir = "{state}"\nlog_file = ""\n[repos]\nroot = "{root}/repos/{{client}}"\n')
    keys = root / "keys"
    keys.mkdir()
    for user, client in ((VICTIM, "victim-client"), (MEMBER, "mallory")):
        path = keys / user
        blob = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + os.urandom(32)).decode()
        path.write_text(f'command="borg-gate --client {client}",restrict ssh-ed25519 {blob} {user}\n')
        os.chown(path, uid(user), -1)
    return state, conf, keys


def _admin(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "borg_gate", *args, "--config", str(conf)], capture_output=True, text=True, check=False
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_member_cannot_blind_fool_or_crash_roots_monitoring(hostile_root: Path) -> None:
    state, conf, keys = _site(hostile_root)
    victim_success = NOW - 3 * 86400  # the victim's backups stopped three days ago
    _counters_as(VICTIM, state, {STARTED: 4}, {"victim-client": {"start": victim_success, "success": victim_success}})
    _forge_as(MEMBER, state, FORGED)
    key_files = ["--authorized-keys", str(keys / VICTIM), str(keys / MEMBER)]
    prom = hostile_root / "textfile" / "borg-gate.prom"
    prom.parent.mkdir()

    out = _admin(conf, "metrics", "--output", str(prom), *key_files)
    assert out.returncode == 0 and not out.stderr, out.stderr
    text = prom.read_text()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = _samples(text)
    # the victim's facts are her own: three days old, 4 sessions; nothing of mallory's merged in
    success = "borg_gate_client_last_success_timestamp_seconds"
    assert samples[(success, (("client", "victim-client"),))] == victim_success
    assert [k for k in samples if k[0] == success and dict(k[1]).get("client") == "victim-client"] == [
        (success, (("client", "victim-client"),))
    ]
    assert samples[("borg_gate_sessions_started_total", (("client", "victim-client"),))] == 4
    rejected = {dict(k[1])["reason"]: v for k, v in samples.items() if k[0] == "borg_gate_counters_rejected_total"}
    assert rejected == {"name": 0, "label": 2, "value": 1, "time": 1, "client": 2, "file": 0}
    assert all(math.isfinite(v) for v in samples.values())

    # node_exporter keeps scraping the file
    with node_exporter.serving(prom.parent, hostile_root / "node_exporter.log") as url:
        scraped = node_exporter.scrape(url)
    assert scraped[("node_textfile_scrape_error", ())] == 0
    assert scraped[(success, (("client", "victim-client"),))] == victim_success

    # repos and status exit 0 and name the file and its unix user; check warns about it
    for command in ("repos", "status"):
        out = _admin(conf, command, *(key_files if command == "repos" else []))
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    status = _admin(conf, "status")
    assert f"counters-{uid(MEMBER)}.json (unix user {MEMBER})" in status.stdout, status.stdout
    checked = _admin(conf, "check", "--json", "--no-sshd", *key_files)
    findings = [f for f in json.loads(checked.stdout)["findings"] if f["code"] == "counters-rejected"]
    assert len(findings) == 1 and MEMBER in findings[0]["message"], findings


def test_a_member_whose_keys_are_unknown_is_published_under_her_own_name(hostile_root: Path) -> None:
    state, conf, keys = _site(hostile_root)
    _counters_as(VICTIM, state, {STARTED: 4}, {"victim-client": {"start": NOW - 86400, "success": NOW - 86400}})
    _forge_as(MEMBER, state, FORGED)
    out = _admin(conf, "metrics", "--authorized-keys", str(keys / VICTIM))  # mallory's keys: not known
    assert out.returncode == 0, out.stderr
    assert promtool_check(out.stdout).returncode == 0
    samples = _samples(out.stdout)
    success = "borg_gate_client_last_success_timestamp_seconds"
    assert samples[(success, (("client", "victim-client"),))] == NOW - 86400  # the victim's own, untouched
    assert samples[(success, (("client", "victim-client"), ("user", MEMBER)))] == NOW  # hers, labelled as hers
    assert samples[("borg_gate_sessions_started_total", (("client", "victim-client"),))] == 4
    assert samples[("borg_gate_sessions_started_total", (("client", "victim-client"), ("user", MEMBER)))] == 1000000


def test_who_serves_which_client_is_read_from_keys_without_following_her_symlinks(hostile_root: Path) -> None:
    _, _, keys = _site(hostile_root)
    pattern = str(keys / "%u")
    victim, member = uid(VICTIM), uid(MEMBER)
    assert served.discover([victim, member], patterns=[pattern]) == {
        0: None,
        victim: frozenset({"victim-client"}),
        member: frozenset({"mallory"}),
    }
    # her file swapped for her own symlink to the victim's keys: not followed, so she serves nothing known
    (keys / MEMBER).unlink()
    os.chown(keys, member, -1)  # her dir, as her ~/.ssh is: she may put there what she likes
    made = run_as(MEMBER, f"import os; os.symlink({str(keys / VICTIM)!r}, {str(keys / MEMBER)!r})")
    assert made.returncode == 0, made.stderr
    assert served.discover([member], patterns=[pattern]) == {0: None}
    # a file of another user's under her name is not hers either
    (keys / MEMBER).unlink()
    (keys / MEMBER).write_bytes((keys / VICTIM).read_bytes())
    os.chown(keys / MEMBER, victim, -1)
    assert served.discover([member], patterns=[pattern]) == {0: None}
