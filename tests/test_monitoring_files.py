"""The monitoring stack's files: Prometheus rules (promtool), the Grafana dashboard, the systemd timer."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from borg_gate.admin import counterfiles, metrics, repos
from borg_gate.base import counters
from tests import node_exporter

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
RULES = PACKAGING / "prometheus" / "borg-gate.rules.yml"
RULES_TEST = PACKAGING / "prometheus" / "borg-gate.rules.test.yml"
DASHBOARD = PACKAGING / "grafana" / "borg-gate.json"
SYSTEMD = PACKAGING / "systemd"
PENDING = {"borg_gate_hold"}  # exported once the maintenance holds (issue 11) land
METRIC_RE = re.compile(r"(?<![:\w])borg_gate_[a-z_]+")
NODE_RE = re.compile(r"(?<![:\w])node_textfile_[a-z_]+")  # node_exporter's own, about the textfile
NODE_TEXTFILE = {"node_textfile_scrape_error", "node_textfile_mtime_seconds"}  # what node_exporter 1.5 has


def exported() -> set[str]:
    """Every metric family `borg-gate metrics` writes."""
    return set(metrics.GAUGES) | set(counters.HELP) | set(repos.GAUGES) | {counterfiles.REJECTED}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, check=False)


def test_promtool_check_rules_is_clean() -> None:
    out = promtool("check", "rules", RULES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout and "WARNING" not in out.stdout + out.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", RULES_TEST)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert len(alerts) >= 9 and alerts == tested


def test_the_stale_threshold_is_set_in_one_place() -> None:
    text = RULES.read_text()
    assert text.count("36 * 3600") == 1 and "129600" not in text
    stale = re.findall(r"- alert: (\w+Stale|\w+Silent)\n\s+expr: \|\n(.*\n.*\n)", text)
    assert len(stale) == 3 and all("borg_gate:stale_after_seconds" in expr for _, expr in stale)


def test_rules_name_only_metrics_the_gate_exports() -> None:
    names = set(METRIC_RE.findall(RULES.read_text()))
    assert names and names - PENDING <= exported()


def _targets(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def test_dashboard_queries_name_metrics_the_gate_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "borg-gate" and dashboard["panels"]
    queries = _targets(dashboard["panels"])
    queries += [
        ("variable " + v["name"], v["definition"]) for v in dashboard["templating"]["list"] if "definition" in v
    ]
    for title, expr in queries:
        names = set(METRIC_RE.findall(expr))
        node = set(NODE_RE.findall(expr))
        assert names or node, f"{title}: {expr} names neither a borg-gate nor a node_textfile metric"
        assert names <= exported(), f"{title}: {names - exported()} not exported"
        assert node <= NODE_TEXTFILE, f"{title}: {node - NODE_TEXTFILE} not node_exporter's"
    assert all(p.get("targets") for p in dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_panels_an_admin_looks_for() -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    exprs = {t: " ".join(e for _, e in _targets([p])) for t, p in panels.items()}
    assert "borg_gate_sessions_limit" in exprs["Host sessions vs limit"]
    assert "borg_gate_waiters" in exprs["Waiters"]
    assert "borg_gate_wait_seconds_total" in exprs["Average wait per started session"]
    assert "by (instance, reason)" in exprs["Refusals by reason"]
    table = panels["Repositories by staleness"]
    assert table["type"] == "table" and table["options"]["sortBy"] == [{"displayName": "Age", "desc": True}]
    assert "time() - borg_gate_repo_last_change_timestamp_seconds" in exprs["Repositories by staleness"]
    # monitoring watches itself (issue 22): what the self-monitoring alerts look at
    assert "by (instance, reason)" in exprs["Rejected counters series by reason"]
    assert "borg_gate_counters_rejected_total" in exprs["Rejected counters series by reason"]
    assert "node_textfile_scrape_error" in exprs["Textfile collector errors"]
    assert panels["Textfile collector errors"]["type"] == "stat"
    assert (
        'node_textfile_mtime_seconds{instance=~"$instance",file=~"(.*/)?borg-gate[.]prom"}'
        in exprs["Age of borg-gate.prom"]
    )


def test_systemd_timer_runs_metrics_into_node_exporters_textfile_dir(tmp_path: Path) -> None:
    service = (SYSTEMD / "borg-gate-metrics.service").read_text()
    exec_start = re.findall(r"^ExecStart=(.*)$", service, re.M)
    assert exec_start == ["/usr/bin/borg-gate metrics --output /var/lib/prometheus/node-exporter/borg-gate.prom"]
    timer = (SYSTEMD / "borg-gate-metrics.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer and "WantedBy=timers.target" in timer
    assert "[Install]" not in service  # started by the timer only
    # systemd's own parser; ExecStart must exist for verify, so it gets one that does
    for unit in ("borg-gate-metrics.service", "borg-gate-metrics.timer"):
        text = (SYSTEMD / unit).read_text().replace("/usr/bin/borg-gate ", "/usr/bin/true ")
        (tmp_path / unit).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / u) for u in ("borg-gate-metrics.service",
                                                                               "borg-gate-metrics.timer"))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def _build_deb_module() -> Any:
    loader = importlib.machinery.SourceFileLoader("build_deb", str(PACKAGING / "build-deb"))
    spec = importlib.util.spec_from_loader("build_deb", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_deb_lays_out_the_units_disabled_and_the_examples(tmp_path: Path) -> None:
    build_deb = _build_deb_module()
    build_deb.lay_out(tmp_path)
    for unit in ("borg-gate-metrics.service", "borg-gate-metrics.timer"):
        assert (tmp_path / "usr/lib/systemd/system" / unit).read_bytes() == (SYSTEMD / unit).read_bytes()
    assert not list(tmp_path.rglob("*.wants"))  # nothing enabled by the package
    assert "enable" not in build_deb.POSTINST
    examples = tmp_path / "usr/share/doc/borg-gate/examples"
    assert (examples / "prometheus/borg-gate.rules.yml").read_bytes() == RULES.read_bytes()
    assert (examples / "grafana/borg-gate.json").read_bytes() == DASHBOARD.read_bytes()


def test_promtool_reads_the_gates_own_exposition(tmp_path: Path) -> None:
    """promtool check metrics: the exposition (with repository series) is what Prometheus accepts."""
    from tests import repo_layouts

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    counters.add(str(state), {counters.series(counters.STARTED, client="alice"): 1})
    repo_layouts.store(tmp_path / "repos" / "alice" / "r")
    out = tmp_path / "out.prom"
    conf = tmp_path / "config.toml"
    conf.write_text(f'[gate]\nstate_dir = "{state}"\nlog_file = ""\n[repos]\nroot = "{tmp_path}/repos/{{client}}"\n')
    assert metrics.main(["--config", str(conf), "--output", str(out)]) == 0
    check = subprocess.run(["promtool", "check", "metrics"], input=out.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'borg_gate_repo_archives{client="alice"' in out.read_text()


# A member's hostile counters line that reached borg-gate.prom: a duplicated label name, which
# node_exporter's parser refuses (the whole file with it).
GOOD_PROM = """# HELP borg_gate_sessions_limit Slots in this budget (the configured limit).
# TYPE borg_gate_sessions_limit gauge
borg_gate_sessions_limit{budget="host"} 8
# HELP borg_gate_sessions_started_total Sessions started.
# TYPE borg_gate_sessions_started_total counter
borg_gate_sessions_started_total{client="alice"} 3
"""
BROKEN_PROM = GOOD_PROM + 'borg_gate_sessions_started_total{client="bob",client="alice"} 1\n'
OTHER_PROM = "# TYPE other_exporter_up gauge\nother_exporter_up 1\n"
OLD_MTIME = 60  # 1970-01-01 00:01: time() in promtool tests starts at 0


def _gate_file_regex() -> str:
    """The file matcher of the self-monitoring alerts (one regex, the same in each)."""
    found: set[str] = set(re.findall(r'node_textfile_mtime_seconds\{file=~"([^"]+)"\}', RULES.read_text()))
    (regex,) = found
    return regex


def _textfile(samples: node_exporter.Samples) -> node_exporter.Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(("node_textfile_", "borg_gate_"))}


def _alerts_test(phases: list[node_exporter.Samples], minutes: int, checks: list[dict[str, Any]]) -> str:
    """A promtool test file (JSON is YAML) replaying scrapes, ``minutes`` per phase, as host backup1."""
    keys = sorted({k for samples in phases for k in samples})
    series = []
    for name, labels in keys:
        tokens: list[str] = []
        for samples in phases:
            value = samples.get((name, labels))
            if value is None and tokens and tokens[-1] not in ("_", "stale"):
                tokens += ["stale"] + ["_"] * (minutes - 1)  # gone from the scrape: a staleness marker
            else:
                tokens += [repr(value) if value is not None else "_"] * minutes
        text = ",".join(f"{k}={json.dumps(v)}" for k, v in (*labels, ("instance", "backup1"), ("job", "node")))
        series.append({"series": f"{name}{{{text}}}", "values": " ".join(tokens)})
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }
    return json.dumps(test, indent=1)


def test_node_exporter_serves_what_the_self_monitoring_alerts_rely_on(tmp_path: Path) -> None:
    """The real node_exporter on an unparseable borg-gate.prom, then on a readable but old one.

    What it serves is checked as such (one global node_textfile_scrape_error, the broken file's
    series all gone, node_textfile_mtime_seconds only for files read), then replayed through
    promtool with the shipped rules: the self-monitoring alerts fire on exactly those scrapes.
    """
    version = node_exporter.version()
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    gate, other = textfile / "borg-gate.prom", textfile / "other.prom"
    other.write_text(OTHER_PROM)
    gate.write_text(BROKEN_PROM)
    for path in (other, gate):
        os.utime(path, (OLD_MTIME, OLD_MTIME))
    regex = _gate_file_regex()
    with node_exporter.serving(textfile, tmp_path / "node_exporter.log") as url:
        broken = node_exporter.scrape(url)
        gate.write_text(GOOD_PROM)  # readable again, but the timer has stopped: an old mtime
        os.utime(gate, (OLD_MTIME, OLD_MTIME))
        stopped = node_exporter.scrape(url)

    def mtimes(samples: node_exporter.Samples) -> dict[str, float]:
        return {
            dict(labels)["file"]: v for (name, labels), v in samples.items() if name == "node_textfile_mtime_seconds"
        }

    errors = [k for k in broken if k[0] == "node_textfile_scrape_error"]
    assert errors == [("node_textfile_scrape_error", ())], f"node_exporter {version}: {errors}"  # one, no file label
    assert broken[errors[0]] == 1
    assert not [k for k in broken if k[0].startswith("borg_gate_")], f"node_exporter {version} kept a series"
    assert broken[("other_exporter_up", ())] == 1  # the other files are still served
    (other_label,) = mtimes(broken)  # the broken file has no mtime series
    assert other_label in (str(other), other.name) and not re.fullmatch(regex, other_label)

    assert stopped[("node_textfile_scrape_error", ())] == 0
    assert stopped[("borg_gate_sessions_limit", (("budget", "host"),))] == 8
    gate_labels = [f for f in mtimes(stopped) if re.fullmatch(regex, f)]
    assert gate_labels in ([str(gate)], [gate.name]), f"node_exporter {version}: {mtimes(stopped)}"
    assert mtimes(stopped)[gate_labels[0]] == OLD_MTIME

    # 20 minutes of each scrape through the shipped rules
    query = 'ALERTS{alertstate="firing",alertname=~"BorgGateMetrics.*"}'

    host = {"instance": "backup1", "job": "node"}

    def firing(alertname: str, **labels: str) -> dict[str, Any]:
        every = {"alertname": alertname, "alertstate": "firing", "severity": "critical", **labels}
        text = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(every.items()))
        return {"labels": f"ALERTS{{{text}}}", "value": 1}

    absent = firing("BorgGateMetricsAbsent")  # no instance: absent() has no labels to carry
    checks = [
        {"expr": query, "eval_time": "19m", "exp_samples": [absent, firing("BorgGateMetricsUnreadable", **host)]},
        {
            "expr": query,
            "eval_time": "39m",
            "exp_samples": [firing("BorgGateMetricsOutdated", file=gate_labels[0], **host)],
        },
    ]
    test_file = tmp_path / "node-exporter.rules.test.yml"
    test_file.write_text(_alerts_test([_textfile(broken), _textfile(stopped)], 20, checks))
    out = promtool("test", "rules", test_file)
    assert out.returncode == 0, out.stdout + out.stderr
