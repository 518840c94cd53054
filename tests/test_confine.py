"""rest:// confinement on a real filesystem: the gate must decide exactly as borg 2.0.0b22 will.

The reference is borg's ``ServeMixIn.check_rest_restrictions`` (src/borg/archiver/serve_cmd.py
at tag 2.0.0b22), restated below in a few lines for comparison. A second, independent
oracle asks the kernel: a path is under a restriction when walking ``..`` up from it
reaches the restriction's inode.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import confine
from borg_gate.conn.policy import Confinement


def borg_b22_allows(backend_path: str, paths: list[str], repositories: list[str]) -> bool:
    """borg 2.0.0b22 check_rest_restrictions, restated (returns instead of raising PathNotAllowed)."""
    if not (paths or repositories):
        return True
    path = os.path.realpath(os.path.expanduser(backend_path))
    path_with_sep = os.path.join(path, "")
    if paths and not any(path_with_sep.startswith(os.path.join(os.path.realpath(p), "")) for p in paths):
        return False
    return not repositories or any(os.path.join(os.path.realpath(p), "") == path_with_sep for p in repositories)


def kernel_under(path: str, top: str, exact: bool) -> bool:
    """Is ``path`` ``top`` (or below it), by inode, walking .. as the kernel resolves it."""
    try:
        want = os.stat(top)
        probe = path
        for _ in range(64):
            st_ = os.stat(probe)
            if (st_.st_dev, st_.st_ino) == (want.st_dev, want.st_ino):
                return True
            if exact or (st_.st_dev, st_.st_ino) == (os.stat("/").st_dev, os.stat("/").st_ino):
                return False
            probe = os.path.join(probe, "..")
    except OSError:
        return False
    return False


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """srv/borg/{alice,alice-bar,bob}/repo, symlinks pointing in and out, a home for ~."""
    root = tmp_path.resolve()
    for d in ("srv/borg/alice/repo", "srv/borg/alice-bar/repo", "srv/borg/bob/repo", "etc", "home/alice/repo"):
        (root / d).mkdir(parents=True)
    alice = root / "srv/borg/alice"
    (alice / "abs-out").symlink_to(root / "srv/borg/bob")  # absolute, pointing out
    (alice / "rel-out").symlink_to("../bob")  # relative, pointing out
    (alice / "rel-out-deep").symlink_to("repo/../../../../etc")
    (alice / "inner").symlink_to("repo")  # pointing in: fine
    (alice / "loop").symlink_to("loop")
    (root / "srv/link-to-alice").symlink_to(alice)  # a restriction may itself be a symlink
    monkeypatch.setenv("HOME", str(root / "home/alice"))
    monkeypatch.chdir(root / "srv/borg")
    return root


ALICE = "srv/borg/alice"

# (requested FILE: path relative to the tree, allowed under --restrict-to-path ALICE)
PATH_CASES = [
    (f"{ALICE}/repo", True),
    (f"{ALICE}", True),
    (f"{ALICE}/", True),
    (f"{ALICE}/new-repo", True),  # not there yet: repo-create must work
    (f"{ALICE}/new/deeper/repo", True),
    (f"{ALICE}/./repo", True),
    (f"{ALICE}//repo", True),
    (f"{ALICE}/inner", True),
    (f"{ALICE}/repo/../repo", True),
    (f"{ALICE}/../alice/repo", True),
    (f"{ALICE}/..", False),
    (f"{ALICE}/../bob/repo", False),
    (f"{ALICE}/repo/../../bob/repo", False),
    (f"{ALICE}/abs-out/repo", False),
    (f"{ALICE}/rel-out/repo", False),
    (f"{ALICE}/rel-out-deep", False),
    ("srv/borg/alice-bar/repo", False),  # prefix sibling: /alice does not admit /alice-bar
    ("srv/borg/alice-bar", False),
    ("srv/borg/alic", False),
    ("srv/borg", False),
    ("etc", False),
    ("srv/link-to-alice/repo", True),
]


@pytest.mark.parametrize(("request_path", "allowed"), PATH_CASES)
def test_restrict_to_path(tree: Path, request_path: str, allowed: bool) -> None:
    path = str(tree / request_path)
    where = Confinement(paths=(str(tree / ALICE),))
    assert confine.path_allowed(path, where) is allowed
    assert borg_b22_allows(path, [str(tree / ALICE)], []) is allowed
    if allowed:
        confine.check_backend(path, where)
    else:
        with pytest.raises(Refusal) as info:
            confine.check_backend(path, where)
        assert info.value.kind is Kind.NOT_ALLOWED
        assert info.value.reason == f"repository path not allowed: {os.path.realpath(path)}"


def test_restriction_that_is_a_symlink_is_resolved(tree: Path) -> None:
    where = Confinement(paths=(str(tree / "srv/link-to-alice"),))
    assert confine.path_allowed(str(tree / ALICE / "repo"), where)
    assert not confine.path_allowed(str(tree / "srv/borg/bob/repo"), where)


@pytest.mark.parametrize(
    ("request_path", "allowed"),
    [
        (f"{ALICE}/repo", True),
        (f"{ALICE}/repo/", True),
        (f"{ALICE}/repo/.", True),
        (f"{ALICE}/inner", True),
        (f"{ALICE}/repo/sub", False),  # exact match only: no subdirectories
        (f"{ALICE}", False),
        (f"{ALICE}/repo-2", False),
    ],
)
def test_restrict_to_repository(tree: Path, request_path: str, allowed: bool) -> None:
    path = str(tree / request_path)
    where = Confinement(repositories=(str(tree / ALICE / "repo"),))
    assert confine.path_allowed(path, where) is allowed
    assert borg_b22_allows(path, [], [str(tree / ALICE / "repo")]) is allowed


def test_both_restrictions_must_pass(tree: Path) -> None:
    where = Confinement(paths=(str(tree / ALICE),), repositories=(str(tree / "srv/borg/bob/repo"),))
    assert not confine.path_allowed(str(tree / ALICE / "repo"), where)
    assert not confine.path_allowed(str(tree / "srv/borg/bob/repo"), where)
    where = Confinement(paths=(str(tree / ALICE),), repositories=(str(tree / ALICE / "repo"),))
    assert confine.path_allowed(str(tree / ALICE / "repo"), where)


def test_any_of_several_restrictions(tree: Path) -> None:
    where = Confinement(paths=(str(tree / ALICE), str(tree / "home/alice")))
    assert confine.path_allowed(str(tree / "home/alice/repo"), where)
    assert confine.path_allowed(str(tree / ALICE / "repo"), where)
    assert not confine.path_allowed(str(tree / "srv/borg/bob/repo"), where)


def test_tilde_expands_like_borgs(tree: Path) -> None:
    """borg expands ~ with the HOME it gets, which the gate passes on unchanged."""
    where = Confinement(paths=(str(tree / "home/alice"),))
    assert confine.path_allowed("~/repo", where)
    assert borg_b22_allows("~/repo", [str(tree / "home/alice")], [])
    assert not confine.path_allowed("~/../../srv/borg/bob", where)
    assert not confine.path_allowed("/~/repo", where)  # not a home: a directory named ~ under /


def test_relative_paths_resolve_from_the_working_directory(tree: Path) -> None:
    """The gate execs borg in the same cwd, so both resolve a relative FILE: path alike."""
    where = Confinement(paths=(str(tree / ALICE),))
    assert confine.path_allowed("alice/repo", where)
    assert not confine.path_allowed("bob/repo", where)
    assert not confine.path_allowed("alice-bar", where)


def test_symlink_loop_is_not_allowed_out(tree: Path) -> None:
    where = Confinement(paths=(str(tree / "srv/borg/bob"),))
    assert not confine.path_allowed(str(tree / ALICE / "loop"), where)


def test_ssh_mode_has_no_path_to_check() -> None:
    confine.check_backend(None, Confinement(paths=("/nonexistent",)))  # borg serve checks the RPC path


# --------------------------------------------------------------------------- property on generated trees

NAMES = ["a", "b", "a-b", "ab", "c"]
component = st.sampled_from([*NAMES, "..", ".", "", "l0", "l1", "l2", "missing"])


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """Directories (relative paths) and symlinks (relative path, target: absolute-in-tree or relative)."""
    dirs = draw(st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join), max_size=8))
    links = []
    for i in range(draw(st.integers(0, 3))):
        parent = draw(st.sampled_from(["", *dirs]))
        target = draw(st.lists(component, min_size=1, max_size=4).map("/".join)) or "."
        absolute = draw(st.booleans())
        links.append((f"{parent}/l{i}".lstrip("/"), ("@/" if absolute else "") + target))
    return dirs, links


def build(root: Path, dirs: list[str], links: list[tuple[str, str]]) -> None:
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in links:
        link = root / name
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.replace("@", str(root), 1) if target.startswith("@") else target)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=trees(),
    restrict=st.lists(st.lists(component, max_size=3).map("/".join), min_size=1, max_size=2),
    exact=st.booleans(),
    request=st.lists(component, max_size=6).map("/".join),
)
def test_gate_decides_as_borg_and_as_the_kernel(
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[list[str], list[tuple[str, str]]],
    restrict: list[str],
    exact: bool,
    request: str,
) -> None:
    root = tmp_path_factory.mktemp("t").resolve()
    build(root, *shape)
    tops = [str(root / r) for r in restrict]
    path = str(root / request)
    where = Confinement(repositories=tuple(tops)) if exact else Confinement(paths=tuple(tops))
    gate = confine.path_allowed(path, where)
    assert gate == borg_b22_allows(path, [] if exact else tops, tops if exact else [])
    event(f"{'allowed' if gate else 'refused'}")
    if os.path.isdir(path) and all(os.path.isdir(t) for t in tops):
        event(f"kernel oracle, {'allowed' if gate else 'refused'}")
        assert gate == any(kernel_under(path, t, exact) for t in tops)
