"""borg-gate repos: what it finds from metadata, how it defines last change, and what hostile dirs cannot do to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from borg_gate.admin import counterfiles, repos
from borg_gate.base import config, counters
from tests import repo_layouts

OLD = 1_600_000_000.0  # 2020-09-13: "a repository nobody touched"


def site(tmp_path: Path, clients: tuple[str, ...] = ("alice",)) -> config.Config:
    """A config whose [repos] root is tmp/repos/{client}, and a state dir that has seen ``clients``."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for c in clients:
        (tmp_path / "repos" / c).mkdir(parents=True)
        counters.add(str(state), {counters.series(counters.STARTED, client=c): 1})
    return config.Config(state_dir=str(state), log_file="", repos_root=str(tmp_path / "repos" / "{client}"))


def by_path(r: repos.ReposReport) -> dict[str, repos.Repo]:
    return {os.path.basename(x.path): x for x in r.repos}


def problems(r: repos.ReposReport) -> dict[str, str]:
    return {os.path.basename(p.path): p.problem for p in r.problems}


def test_each_format_with_its_own_last_change(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    root = tmp_path / "repos" / "alice"
    repo_layouts.borg1(root / "one", transactions=17, mtime=OLD)
    repo_layouts.borg1(root / "beta", transactions=3, mtime=OLD + 10, version=2)
    repo_layouts.store(root / "two", archives=3, deleted=2, mtime=OLD + 20)
    repo_layouts.store(root / "nineteen", archives=1, levels=2, version="3", mtime=OLD + 30)
    newest = root / "two" / "archives" / ("f" * 64)
    newest.write_bytes(b"")
    os.utime(newest, (OLD + 100, OLD + 100))
    os.utime(root / "one" / "integrity.17", (OLD + 5, OLD + 5))  # written last in a commit

    found = by_path(repos.report(cfg))
    assert {k: (v.format, v.client) for k, v in found.items()} == {
        "one": ("borg1", "alice"),
        "beta": ("borg2-segments", "alice"),
        "two": ("borg2", "alice"),
        "nineteen": ("borg2", "alice"),
    }
    assert (found["one"].transaction, found["one"].last_change, found["one"].archives) == (17, OLD + 5, None)
    assert found["two"].archives == 4 and found["two"].last_change == OLD + 100  # .del ones are not archives
    assert found["nineteen"].archives == 1 and found["nineteen"].last_change == OLD + 30
    for repo in found.values():
        du = subprocess.run(["du", "-s", "-B1", repo.path], capture_output=True, text=True, check=True)
        assert repo.size_bytes == int(du.stdout.split()[0])
        assert repo.problems == []


def test_a_store_with_no_archive_yet_has_no_last_change(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    repo_layouts.store(tmp_path / "repos" / "alice" / "new", archives=0, packs=0)
    (repo,) = repos.report(cfg).repos
    assert repo.archives == 0 and repo.last_change is None
    text = "".join(repos.metric_lines(repos.report(cfg)))
    assert "borg_gate_repo_last_change_timestamp_seconds{" not in text  # absent, not 0 (1970 would alert wrongly)
    assert 'borg_gate_repo_archives{client="alice"' in text


def test_nested_repositories_and_several_clients(tmp_path: Path) -> None:
    cfg = site(tmp_path, ("alice", "bob"))
    repo_layouts.borg1(tmp_path / "repos" / "alice" / "laptop" / "home")
    repo_layouts.store(tmp_path / "repos" / "bob" / "srv")
    r = repos.report(cfg)
    assert {(x.client, os.path.relpath(x.path, tmp_path)) for x in r.repos} == {
        ("alice", "repos/alice/laptop/home"),
        ("bob", "repos/bob/srv"),
    }
    assert r.problems == []


def test_hostile_tree_is_reported_never_followed(tmp_path: Path) -> None:
    cfg = site(tmp_path, ("alice", "mallory"))
    outside = tmp_path / "outside"
    repo_layouts.borg1(outside / "secret")
    root = tmp_path / "repos" / "mallory"
    (root / "out").symlink_to(outside)  # a symlink out of the root
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to("..")  # a symlink loop
    (root / "noconfig" / "data" / "0").mkdir(parents=True)  # a broken repo: segments, no config
    (root / "noconfig" / "README").write_bytes(repo_layouts.README)
    fifo = root / "fifo-config"
    fifo.mkdir()
    os.mkfifo(fifo / "config")  # opening it blocking would hang the scan
    (root / "garbage").mkdir()
    (root / "garbage" / "config").write_bytes(b"\x00\xff[repository" * 1000)
    (root / "tricky").mkdir()
    (root / "tricky" / "config").symlink_to(outside / "secret" / "config")
    (root / "deep" / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
    evil = root / "evil\x1b[31mname\nline"
    repo_layouts.borg1(evil)
    os.symlink(outside / "secret" / "data", root / "evil\x1b[31mname\nline" / "data" / "linked")

    def run() -> repos.ReposReport:
        return repos.report(cfg)

    worker = threading.Thread(target=lambda: results.append(run()))
    results: list[repos.ReposReport] = []
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the scan hung (a FIFO opened blocking?)"
    (r,) = results
    assert [os.path.basename(x.path) for x in r.repos] == [evil.name]  # nothing from outside
    seen = problems(r)
    assert seen["out"] == "a symlink, not followed"
    assert seen["again"] == "a symlink, not followed"
    assert "no borg config" in seen["noconfig"]
    assert seen["fifo-config"] == "no repository here"
    assert seen["garbage"] == "no repository here"
    assert seen["config"] == "a symlink, not followed"  # tricky/config, pointing at a real repository's
    assert "within 4 levels" in seen["c"]  # deep/a/b/c: four levels below the root
    (repo,) = r.repos
    du = subprocess.run(["du", "-s", "-B1", "-P", str(evil)], capture_output=True, text=True, check=True)
    assert repo.size_bytes == int(du.stdout.split()[0])  # the planted symlink counted as itself, not followed
    out = repos.text(r)
    assert "\x1b" not in out and "evil\\x1b[31mname\\nline" in out
    assert all(line.isprintable() for line in out.splitlines())
    json.loads(repos.as_json(r))


def test_a_huge_planted_tree_stops_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repos, "MAX_DIRS", 50)
    cfg = site(tmp_path, ("alice", "mallory"))
    for i in range(200):
        (tmp_path / "repos" / "mallory" / f"d{i:03d}").mkdir()
    repo_layouts.borg1(tmp_path / "repos" / "alice" / "fine")
    r = repos.report(cfg)
    assert [x.client for x in r.repos] == ["alice"]
    assert any(p.problem == "search stopped after 50 directories" for p in r.problems)


def test_missing_root_and_restrict_to_repository_key(tmp_path: Path) -> None:
    cfg = site(tmp_path, ("alice",))
    (tmp_path / "repos" / "alice").rmdir()
    r = repos.report(cfg)
    assert problems(r) == {"alice": "missing (no backup yet?)"}
    assert r.repos == []


def _keys_file(tmp_path: Path, lines: list[str]) -> Path:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "id.pub").read_text().strip()
    path = tmp_path / "authorized_keys"
    path.write_text("".join(f'command="/usr/bin/borg-gate {opts}",restrict {pub}\n' for opts in lines))
    return path


def test_authorized_keys_confinements_are_searched(tmp_path: Path) -> None:
    cfg = site(tmp_path, ())
    repo_layouts.borg1(tmp_path / "elsewhere" / "carol" / "r")
    repo_layouts.store(tmp_path / "exact")
    keys = _keys_file(
        tmp_path,
        [
            f"--client carol --restrict-to-path {tmp_path}/elsewhere/{{client}}",
            f"--client dave --restrict-to-repository {tmp_path}/exact",
            f"--client erin --restrict-to-repository {tmp_path}/elsewhere",
            "--client bad --no-such-option",
            "status",
        ],
    )
    r = repos.report(cfg, [str(keys)])
    assert {(x.client, x.format) for x in r.repos} == {("carol", "borg1"), ("dave", "borg2")}
    assert {
        p.path.rsplit(":", 1)[-1] if ":" in p.path else os.path.basename(p.path): p.problem for p in r.problems
    } == {
        "elsewhere": "no repository (no borg config)",
        "4": "key line: unrecognized arguments: --no-such-option",
    }
    assert {c.client for c in r.clients} == {"carol", "dave", "erin"}


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir every user can reach (pytest's own is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="borg-gate-repos-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreadable_dirs_are_reported_for_a_non_root_admin(open_tmp: Path) -> None:
    """Run as nobody (root reads everything): a 0700 client dir and an unreadable repository inside a readable one."""
    tmp_path = open_tmp
    base = tmp_path / "open"
    base.mkdir(mode=0o755)
    repo_layouts.borg1(base / "readable")
    repo_layouts.borg1(base / "private")
    (base / "private").chmod(0o700)
    (base / "closed").mkdir(mode=0o700)
    for p in [base / "readable", *(base / "readable").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    keys = _keys_file(tmp_path, [f"--client alice --restrict-to-path {base}"])
    keys.chmod(0o644)
    conf = tmp_path / "config.toml"
    conf.write_text(f'[gate]\nstate_dir = "{tmp_path}/nostate"\nlog_file = ""\n[repos]\nroot = ""\n')
    conf.chmod(0o644)
    # nobody must be able to run it: the package and psutil copied to a world-readable dir
    # (the checkout may live under root's 0700 home), run by the system's interpreter
    lib = tmp_path / "lib"
    for pkg in (Path(repos.__file__).parents[1], Path(psutil.__file__).parent):
        shutil.copytree(pkg, lib / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-m", "borg_gate",
         "repos", "--json", "--config", str(conf), "--authorized-keys", str(keys)],
        capture_output=True, text=True, check=False, cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    assert [os.path.basename(x["path"]) for x in data["repos"]] == ["readable"]
    seen = {os.path.basename(p["path"]): p["problem"] for p in data["problems"]}
    assert seen == {"private": "Permission denied", "closed": "Permission denied"}


def test_store_sizes_are_cached_and_redone_when_borg_writes(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    path = repo_layouts.store(tmp_path / "repos" / "alice" / "s", packs=50)
    first = repos.report(cfg).repos[0].size_bytes
    cache = tmp_path / "state" / f"repos-cache-{os.geteuid()}.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    entry = json.loads(cache.read_text())["stores"][str(path)]
    entry["size"] = 12345  # what a cached walk would say: the next run takes it, without a walk
    cache.write_text(json.dumps({"stores": {str(path): entry}}))
    cache.chmod(0o600)
    assert repos.report(cfg).repos[0].size_bytes == 12345
    # borg takes its lock for every session: locks/ changes, the walk is redone
    time.sleep(0.01)
    (path / "locks" / "x").write_bytes(b"")
    (path / "locks" / "x").unlink()
    assert repos.report(cfg).repos[0].size_bytes == first


def test_a_size_cache_that_cannot_be_written_is_a_named_problem(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    repo_layouts.store(tmp_path / "repos" / "alice" / "s", packs=5)
    (tmp_path / "state" / f"repos-cache-{os.geteuid()}.json").mkdir()  # planted: the rename over it fails
    r = repos.report(cfg)
    assert r.repos[0].size_bytes > 0
    (problem,) = [p.problem for p in r.problems if p.path == cfg.state_dir]
    assert problem.startswith("size cache not written: "), problem
    assert not [n for n in os.listdir(tmp_path / "state") if n.endswith(".tmp")]


def test_a_cache_not_only_ours_is_ignored(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    path = repo_layouts.store(tmp_path / "repos" / "alice" / "s")
    real = repos.report(cfg).repos[0].size_bytes
    cache = tmp_path / "state" / f"repos-cache-{os.geteuid()}.json"
    data = json.loads(cache.read_text())
    data["stores"][str(path)]["size"] = 1
    cache.write_text(json.dumps(data))
    cache.chmod(0o620)  # group-writable: anyone in the group could have written it
    assert repos.report(cfg).repos[0].size_bytes == real
    cache.unlink()
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.symlink(target, cache)  # planted symlink: never followed, never written through
    assert repos.report(cfg).repos[0].size_bytes == real
    assert target.read_text() == "precious\n"


def test_latest_sessions_from_the_counters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    t = time.time() - 1000

    def event(name: str, now: float, **fields: Any) -> None:
        record = {"event": name, "client": "alice", **fields}
        counters.add(str(state), counters.from_event(record, {}), {}, counters.latest(record, now))

    event("session.started", t + 100)
    event("session.ended", t + 160, exit_code=0, bytes_read=5000, bytes_written=70)
    event("session.started", t + 200)
    event("session.ended", t + 230, exit_code=2, bytes_read=10, bytes_written=7)
    totals = counterfiles.load(str(state))
    assert totals.last == {
        ("alice", None): {"start": t + 200, "end": t + 230, "exit_code": 2.0, "bytes_read": 10.0, "bytes_written": 7.0,
                          "success": t + 160}
    }  # fmt: skip
    (c,) = repos.client_sessions(totals, {"alice"})
    assert (c.last_start, c.last_end, c.last_exit_code, c.last_bytes_up, c.last_success, c.user) == (
        t + 200, t + 230, 2, 10, t + 160, None
    )  # fmt: skip


def test_latest_sessions_are_never_merged_and_planted_values_are_dropped() -> None:
    now = time.time()
    a = counterfiles.check_file("counters-1001.json", 1001, {"last": {"c": {"start": now - 9, "success": now}}}, now)
    b = counterfiles.check_file("counters-1002.json", 1002, {"last": {"c": {"start": now - 1}}}, now)
    bad = counterfiles.check_file(
        "counters-1003.json", 1003, {"last": {"c": {"start": "x"}, "d": {"evil": 1}, "e": {"start": 5.0}}}, now
    )
    assert bad.last == {} and bad.rejected == {"value": 1, "label": 1, "time": 1}
    both = {1001: frozenset({"c"}), 1002: frozenset({"c"})}
    totals = counterfiles.combine([a, b], both)  # two servers of c disagree: both shown, the newer not picked
    assert totals.disputed == {"c": sorted([a.user, b.user])} and ("c", None) not in totals.last
    assert totals.last[("c", a.user)] == {"start": now - 9, "success": now}
    totals = counterfiles.combine([a, b], {1001: frozenset({"c"})})  # 1002's service of c unknown: her own row
    assert totals.last == {("c", None): a.last["c"], ("c", b.user): b.last["c"]} and not totals.disputed
    totals = counterfiles.combine([a, b], {1001: frozenset({"c"}), 1002: frozenset({"other"})})  # known not to
    assert totals.last == {("c", None): a.last["c"]} and totals.rejected["client"] == 1


def test_metrics_exposition_parses_one_series_per_repository(tmp_path: Path) -> None:
    cfg = site(tmp_path, ("alice", 'qu"ote'))
    repo_layouts.borg1(tmp_path / "repos" / "alice" / "one", mtime=OLD)
    repo_layouts.store(tmp_path / "repos" / "alice" / "two", archives=3, mtime=OLD)
    text = "\n".join(repos.metric_lines(repos.report(cfg))) + "\n"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    one, two = str(tmp_path / "repos" / "alice" / "one"), str(tmp_path / "repos" / "alice" / "two")
    key = "borg_gate_repo_last_change_timestamp_seconds"
    assert samples[(key, (("client", "alice"), ("format", "borg1"), ("repo", one)))] == OLD
    assert samples[(key, (("client", "alice"), ("format", "borg2"), ("repo", two)))] == OLD
    assert samples[("borg_gate_repo_archives", (("client", "alice"), ("repo", two)))] == 3
    assert sum(1 for k in samples if k[0] == "borg_gate_repo_size_bytes") == 2
    assert ("borg_gate_repo_archives", (("client", "alice"), ("repo", one))) not in samples  # borg 2 only


def test_a_name_that_is_not_utf8_is_escaped_everywhere(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    raw = os.path.join(os.fsencode(tmp_path / "repos" / "alice"), b"caf\xe9")
    repo_layouts.borg1(Path(os.fsdecode(raw)))
    r = repos.report(cfg)
    assert len(r.repos) == 1
    metrics_text = "\n".join(repos.metric_lines(r)) + "\n"
    metrics_text.encode("utf-8")  # what --output writes: no surrogate left to fail on
    assert 'caf\\\\xe9"' in metrics_text  # the label value caf\xe9, its backslash escaped for Prometheus
    list(text_string_to_metric_families(metrics_text))
    repos.text(r).encode("utf-8")
    json.loads(repos.as_json(r))


def test_a_store_without_a_proper_config_version_is_no_repository(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    root = tmp_path / "repos" / "alice"
    repo_layouts.store(root / "noversion")
    (root / "noversion" / "config" / "version").unlink()
    repo_layouts.store(root / "garbled")
    (root / "garbled" / "config" / "version").write_bytes(b"\x00junk")
    repo_layouts.store(root / "fine")
    r = repos.report(cfg)
    assert [os.path.basename(x.path) for x in r.repos] == ["fine"]
    assert problems(r) == {
        "noversion": "not a repository: no borg config (broken or planted?)",
        "garbled": "not a repository: no borg config (broken or planted?)",
    }


def test_a_repository_with_a_planted_deep_tree_is_sized_without_recursing_forever(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    repo = repo_layouts.borg1(tmp_path / "repos" / "alice" / "r")
    fd = os.open(repo / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # deeper than Python's recursion limit
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    try:
        (found,) = repos.report(cfg).repos
        assert found.format == "borg1" and found.size_bytes > 0
        assert any(f"deeper than {repos.MAX_TREE_DEPTH} levels" in p for p in found.problems)
    finally:
        subprocess.run(["rm", "-rf", str(repo / "data" / "d")], check=True)  # shutil.rmtree recurses too


def test_a_planted_giant_directory_is_read_only_in_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repos, "MAX_ENTRIES", 100)
    cfg = site(tmp_path, ("alice", "mallory"))
    for i in range(300):
        (tmp_path / "repos" / "mallory" / f"f{i:03d}").write_bytes(b"")
    store = repo_layouts.store(tmp_path / "repos" / "alice" / "s", archives=250)  # counted in full all the same
    r = repos.report(cfg)
    assert [(x.path, x.archives) for x in r.repos] == [(str(store), 250)]
    assert problems(r)["mallory"] == "more than 100 entries: the rest not searched"
