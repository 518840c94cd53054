"""Root's ``repos`` and ``metrics`` walks are confined like the gate (issue 22, point 5).

A backup user owns her repos root (``/home/borg/repos``) or a directory above it, so she can
replace it by a symlink: to ``/`` (root then walked the whole machine) or to another user's
0700 directory (root then published that user's repository under her client name, in a
world-readable metrics file). Here a real second unix user (tests/hostile_users.py) plants
those symlinks; root's own symlinks on the way are still followed. The size walk of a
repository has a budget of files and time, and a partial size is never cached as complete.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from borg_gate.admin import repos, safeopen
from borg_gate.base import config, counters
from tests import repo_layouts
from tests.hostile_users import MEMBER, VICTIM, run_as, uid
from tests.hostile_users import hostile_root as hostile_root  # a fixture
from tests.test_repos import OLD, site

GATE_SAYS = "resolves to /: that is no confinement"  # confine.refuse_unconfined's words


def _chown_tree(path: Path, user: str) -> None:
    subprocess.run(["chown", "-R", f"{user}:", str(path)], check=True)  # and her login group


def _hostile_site(base: Path, clients: tuple[str, ...]) -> config.Config:
    """[repos] root = BASE/home/{client}/repos, each home and repos dir its user's own (as /home/borg/repos)."""
    state = base / "state"
    state.mkdir(mode=0o700)
    for c in clients:
        (base / "home" / c / "repos").mkdir(parents=True)
        _chown_tree(base / "home" / c, c)
        counters.add(str(state), {counters.series(counters.STARTED, client=c): 1})
    return config.Config(state_dir=str(state), log_file="", repos_root=f"{base}/home/{{client}}/repos")


def _as(user: str, code: str) -> None:
    done = run_as(user, code)
    assert done.returncode == 0, done.stderr


def _replace_by_symlink(user: str, path: Path, target: str) -> None:
    """``user`` swaps her own directory for a symlink (hers) to ``target``."""
    _as(user, f"import os; os.rmdir({str(path)!r}); os.symlink({target!r}, {str(path)!r})")
    assert path.is_symlink() and path.lstat().st_uid == uid(user)


def _within(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


def _search(state: Path, clock: Callable[[], float] = time.monotonic) -> repos.Search:
    state.mkdir(mode=0o700, exist_ok=True)
    return repos.Search(repos.SizeCache(str(state)), time.time(), clock=clock)


def _in_thread(work: Callable[[], None]) -> None:
    """Run ``work``; fail (instead of hanging the suite) when it has not returned within 60 s."""
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the walk hung (a FIFO opened blocking?)"


def test_a_members_root_swapped_for_a_symlink_to_slash_is_not_walked(hostile_root: Path) -> None:
    cfg = _hostile_site(hostile_root, (MEMBER,))
    mine = hostile_root / "home" / MEMBER / "repos"
    _replace_by_symlink(MEMBER, mine, "/")

    started = time.monotonic()
    r = repos.report(cfg)
    took = time.monotonic() - started

    assert r.repos == []
    assert [(p.client, p.path, p.problem) for p in r.problems] == [
        (MEMBER, str(mine), f"a symlink owned by {MEMBER}, not followed")
    ]
    assert all(_within(p.path, mine) for p in r.problems)  # nothing outside was looked at
    assert took < 5, f"{took:.1f} s: it walked something (the walk of / took 17 s)"
    assert f"{mine}: a symlink owned by {MEMBER}, not followed" in repos.text(r)


@pytest.mark.parametrize("swapped", ["the root", "a directory above it"])
def test_a_members_symlink_to_the_victims_private_dir_publishes_nothing_of_hers(
    hostile_root: Path, swapped: str
) -> None:
    cfg = _hostile_site(hostile_root, (MEMBER, VICTIM))
    victim_home = hostile_root / "home" / VICTIM
    theirs = repo_layouts.store(victim_home / "repos" / "laptop", archives=3, packs=20, mtime=OLD)
    _chown_tree(victim_home, VICTIM)
    victim_home.chmod(0o700)
    assert run_as(MEMBER, f"import os; os.listdir({str(victim_home)!r})").returncode != 0  # private to her
    member_home = hostile_root / "home" / MEMBER
    if swapped == "the root":
        planted = member_home / "repos"
        _replace_by_symlink(MEMBER, planted, str(victim_home / "repos"))
    else:  # [repos] root = home/{client}/box/repos, and her box becomes a symlink to the victim's
        cfg = config.Config(
            state_dir=cfg.state_dir, log_file="", repos_root=f"{hostile_root}/home/{{client}}/box/repos"
        )
        (member_home / "box").mkdir()
        os.chown(member_home / "box", uid(MEMBER), -1)
        (victim_home / "box").mkdir()  # so that the victim's own root is there too
        (victim_home / "repos").rename(victim_home / "box" / "repos")
        theirs = victim_home / "box" / "repos" / "laptop"
        planted = member_home / "box"
        _replace_by_symlink(MEMBER, planted, str(victim_home / "box"))

    r = repos.report(cfg)

    assert [(x.client, x.path) for x in r.repos] == [(VICTIM, str(theirs))]  # hers, under her name only
    assert [(p.client, p.path, p.problem) for p in r.problems] == [
        (MEMBER, str(planted), f"a symlink owned by {MEMBER}, not followed")
    ]
    exposition = "\n".join(repos.metric_lines(r)) + "\n"
    series = [s for fam in text_string_to_metric_families(exposition) for s in fam.samples]
    assert [s.labels for s in series if s.labels.get("client") == MEMBER and "repo" in s.labels] == []
    assert {s.labels["client"] for s in series if s.labels.get("repo") == str(theirs)} == {VICTIM}
    assert str(member_home) not in exposition.replace(f'client="{MEMBER}"', "")


def test_roots_own_symlinks_on_the_way_are_followed(hostile_root: Path) -> None:
    found = repo_layouts.borg1(hostile_root / "data" / "srv" / "borg" / "alice" / "web", mtime=OLD)
    (hostile_root / "srv").symlink_to(hostile_root / "data" / "srv")  # absolute: /srv -> /data/srv
    (hostile_root / "rel").symlink_to("data/nothing/../srv/borg")  # relative, with .. in it
    (hostile_root / "hop1").symlink_to("hop2")
    (hostile_root / "hop2").symlink_to(hostile_root / "srv")  # two hops, then /srv's own
    (hostile_root / "loop").symlink_to("loop")
    search = _search(hostile_root / "state")
    alice = f"{hostile_root}/srv/borg/alice"
    bob = f"{hostile_root}/rel/alice/web"
    carol = f"{hostile_root}/hop1/borg/./alice/../alice"  # root's spelling, normalised before any lookup
    search.root(repos.Root("alice", alice, "path", "test"))
    search.root(repos.Root("bob", bob, "repository", "test"))
    search.root(repos.Root("carol", carol, "path", "test"))
    search.root(repos.Root("dave", f"{hostile_root}/loop/x", "path", "test"))

    # Reported under the path as configured (the key's restriction), found through root's symlinks.
    assert {(x.client, x.path, x.format) for x in search.repos.values()} == {
        ("alice", f"{alice}/web", "borg1"),
        ("bob", bob, "borg1"),
        ("carol", f"{carol}/web", "borg1"),
    }
    assert all(x.last_change == OLD and x.size_complete for x in search.repos.values())
    assert [(p.client, p.problem) for p in search.problems] == [
        ("dave", f"more than {safeopen.MAX_SYMLINKS} symlinks (a loop?)")
    ]
    assert found.is_dir()


@pytest.mark.parametrize("how", ["configured as /", "spelt /x/../..", "root's symlink to /", "root's symlink to .."])
@pytest.mark.parametrize("kind", ["path", "repository"])
def test_a_root_that_resolves_to_slash_is_refused_as_the_gate_refuses_it(
    hostile_root: Path, monkeypatch: pytest.MonkeyPatch, how: str, kind: str
) -> None:
    monkeypatch.setattr(repos, "MAX_DIRS", 20)  # before the fix, / was walked: keep that failure short
    (hostile_root / "top").symlink_to("/")
    (hostile_root / "a" / "b").mkdir(parents=True)
    (hostile_root / "a" / "b" / "up").symlink_to("../../../..")  # /tmp/bgh-x/a/b/../../../.. is /
    path = {
        "configured as /": "/",
        "spelt /x/../..": f"{hostile_root}/../..",
        "root's symlink to /": f"{hostile_root}/top/.",
        "root's symlink to ..": f"{hostile_root}/a/b/up",
    }[how]
    search = _search(hostile_root / "state")
    search.root(repos.Root("alice", path, kind, "test"))
    assert search.repos == {}
    ((client, where, problem),) = [(p.client, p.path, p.problem) for p in search.problems]
    assert (client, where) == ("alice", path)
    option = "--restrict-to-path" if kind == "path" else "--restrict-to-repository"
    assert problem.startswith(f"confinement {option}={path} {GATE_SAYS}")


def test_fifos_on_the_way_and_inside_a_repository_never_hang(hostile_root: Path) -> None:
    cfg = _hostile_site(hostile_root, (MEMBER,))
    home = hostile_root / "home" / MEMBER
    store = repo_layouts.store(home / "repos" / "r", packs=5)
    os.mkfifo(store / "packs" / "fifo")
    os.mkfifo(store / "locks" / "fifo")
    os.mkfifo(store / "archives" / ("f" * 64))
    _chown_tree(home, MEMBER)
    os.mkfifo(hostile_root / "pipe")
    mine, to_pipe = str(home / "mine"), str(home / "to-pipe")
    _as(MEMBER, f"import os; os.mkfifo({mine!r}); os.symlink({mine!r}, {to_pipe!r})")  # both hers
    roots = [
        repos.Root(MEMBER, str(hostile_root / "pipe"), "path", "test"),
        repos.Root(MEMBER, str(hostile_root / "pipe" / "below"), "path", "test"),
        repos.Root(MEMBER, str(home / "to-pipe"), "repository", "test"),
        repos.Root(MEMBER, str(home / "repos"), "path", "test"),
    ]
    search = _search(Path(cfg.state_dir))

    def walk() -> None:
        for root in roots:
            search.root(root)

    _in_thread(walk)

    assert [(p.path, p.problem) for p in search.problems] == [
        (str(hostile_root / "pipe"), "not a directory"),
        (str(hostile_root / "pipe" / "below"), "not a directory"),
        (str(home / "to-pipe"), f"a symlink owned by {MEMBER}, not followed"),
    ]
    (repo,) = search.repos.values()
    assert (repo.path, repo.archives, repo.size_complete) == (str(store), 2, True)  # a FIFO is no archive
    assert repo.locked


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", "-P", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _cached(state: Path) -> dict[str, object]:
    cache = state / f"repos-cache-{os.geteuid()}.json"
    if not cache.exists():
        return {}
    stores: dict[str, object] = json.loads(cache.read_text())["stores"]
    return stores


def test_a_size_walk_past_its_file_budget_is_a_lower_bound_never_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = site(tmp_path)
    path = repo_layouts.store(tmp_path / "repos" / "alice" / "s", packs=200)
    monkeypatch.setattr(repos, "MAX_SIZE_FILES", 50)

    r = repos.report(cfg)

    (repo,) = r.repos
    assert not repo.size_complete
    assert 0 < repo.size_bytes < _du(path)  # at least what it counted, short of the whole
    (problem,) = repo.problems
    assert problem.startswith("size walk stopped after 50 files / ")
    assert "(budget: 50 files per repository)" in problem
    assert problem.endswith(f"size is at least {repo.size_bytes:,} bytes")
    assert str(path) not in _cached(Path(cfg.state_dir))  # a partial size is never taken as the size
    assert ">= " in repos.text(r)
    assert json.loads(repos.as_json(r))["repos"][0]["size_complete"] is False

    monkeypatch.setattr(repos, "MAX_SIZE_FILES", 100_000)  # the next run, with room: complete, and cached
    (repo,) = repos.report(cfg).repos
    assert (repo.size_complete, repo.size_bytes, repo.problems) == (True, _du(path), [])
    assert str(path) in _cached(Path(cfg.state_dir))
    assert ">= " not in repos.text(repos.report(cfg))


def _ticking(step: float) -> Callable[[], float]:
    """A clock that moves ``step`` seconds at every look: as if each file took that long to stat."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_a_size_walk_past_its_time_budget_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repos, "MAX_SIZE_SECONDS", 1.0)
    root = tmp_path / "repos"
    path = repo_layouts.store(root / "s", packs=300)
    search = _search(tmp_path / "state", _ticking(0.01))
    search.root(repos.Root("alice", str(root), "path", "test"))
    search.cache.save()

    (repo,) = search.repos.values()
    assert not repo.size_complete and 0 < repo.size_bytes < _du(path)
    (problem,) = repo.problems
    assert " / 1.0 s (budget: 1 s per repository): size is at least " in problem  # 100 looks at the clock
    assert _cached(tmp_path / "state") == {}


def test_the_runs_deadline_bounds_every_walk_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repos, "MAX_SIZE_SECONDS", 100.0)
    monkeypatch.setattr(repos, "MAX_RUN_SECONDS", 2.0)
    root = tmp_path / "repos"
    first = repo_layouts.borg1(root / "a", segments=300)
    second = repo_layouts.store(root / "b", packs=300)
    search = _search(tmp_path / "state", _ticking(0.01))
    search.root(repos.Root("alice", str(root), "path", "test"))

    a, b = (search.repos[str(p)] for p in (first, second))
    assert not a.size_complete and not b.size_complete
    assert all("s for all size walks of a run)" in x.problems[-1] for x in (a, b))
    assert b.files == 0  # the run's time was up before its walk began: only its own dir counted
    assert b.problems[-1].startswith("size walk stopped after 0 files / 0.0 s")
