"""The monitoring stack's files: Prometheus rules (promtool), the Grafana dashboard, the systemd timer."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from borg_gate import counters, metrics, repos

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
RULES = PACKAGING / "prometheus" / "borg-gate.rules.yml"
RULES_TEST = PACKAGING / "prometheus" / "borg-gate.rules.test.yml"
DASHBOARD = PACKAGING / "grafana" / "borg-gate.json"
SYSTEMD = PACKAGING / "systemd"
PENDING = {"borg_gate_hold"}  # exported once the maintenance holds (issue 11) land
METRIC_RE = re.compile(r"(?<![:\w])borg_gate_[a-z_]+")


def exported() -> set[str]:
    """Every metric family `borg-gate metrics` writes."""
    return set(metrics.GAUGES) | set(counters.HELP) | set(repos.GAUGES)


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
        assert names, f"{title}: {expr} names no borg-gate metric"
        assert names <= exported(), f"{title}: {names - exported()} not exported"
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
