"""The per-user cache of the parsed config (configcache): used only for the same bytes, never another's file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_gate.base import configcache
from borg_gate.base.config import load_config, parse_config
from borg_gate.base.errors import Refusal
from tests import hostile_users
from tests.hostile_users import hostile_root  # noqa: F401  # fixture


def _config(tmp_path: Path, body: str = "") -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[gate]\nstate_dir = "{state}"\n{body}')
    path.chmod(0o644)
    return path, state


def _cache(state: Path, path: Path) -> Path:
    return state / configcache.file_name(str(path))


def test_the_second_load_uses_the_cache_and_gives_the_same_config(tmp_path: Path) -> None:
    path, state = _config(tmp_path, "[limits]\nmax_sessions = 5\n")
    first = load_config(str(path), True)
    cache = _cache(state, path)
    assert cache.exists()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600  # it holds the config's text
    assert load_config(str(path), True) == first == parse_config(path.read_text(), str(path))


def test_changed_bytes_are_parsed_again(tmp_path: Path) -> None:
    path, _ = _config(tmp_path, "[limits]\nmax_sessions = 5\n")
    load_config(str(path), True)
    path.write_text(path.read_text().replace("= 5", "= 6"))
    assert load_config(str(path), True).max_sessions == 6
    path.write_text(path.read_text().replace("= 6", '= "six"'))  # a bad edit is refused, cache or not
    with pytest.raises(Refusal, match=r"limits\.max_sessions"):
        load_config(str(path), True)


def test_a_cache_whose_config_names_another_state_dir_is_not_used(tmp_path: Path) -> None:
    """The line scan only picks where to look: the cached config must name that same dir."""
    path, state = _config(tmp_path)
    raw = path.read_bytes()
    fake = {"gate": {"state_dir": "/elsewhere"}, "limits": {"max_sessions": 999}}
    configcache.store(str(path), raw, fake, str(state))
    assert configcache.lookup(str(path), raw, str(state)) is None


def test_a_cache_for_other_bytes_or_another_path_is_not_used(tmp_path: Path) -> None:
    path, state = _config(tmp_path)
    raw = path.read_bytes()
    configcache.store(str(path), raw, {"gate": {"state_dir": str(state)}}, str(state))
    assert configcache.lookup(str(path), raw, str(state)) is not None
    assert configcache.lookup(str(path), raw + b"\n", str(state)) is None
    assert configcache.lookup(str(tmp_path / "other.toml"), raw, str(state)) is None


def test_a_group_writable_or_linked_cache_is_not_believed(tmp_path: Path) -> None:
    path, state = _config(tmp_path)
    raw = path.read_bytes()
    configcache.store(str(path), raw, {"gate": {"state_dir": str(state)}}, str(state))
    cache = _cache(state, path)
    cache.chmod(0o620)
    assert configcache.lookup(str(path), raw, str(state)) is None
    cache.chmod(0o600)
    os.link(cache, tmp_path / "second-name")
    assert configcache.lookup(str(path), raw, str(state)) is None


def test_garbage_in_the_cache_is_a_miss(tmp_path: Path) -> None:
    path, state = _config(tmp_path)
    cache = _cache(state, path)
    for junk in (b"", b"\x00\x01", b"not marshal at all", os.urandom(64)):
        cache.write_bytes(junk)
        cache.chmod(0o600)
        assert configcache.lookup(str(path), path.read_bytes(), str(state)) is None
        assert load_config(str(path), True).state_dir == str(state)


def test_a_toml_date_is_not_cached_and_still_parses(tmp_path: Path) -> None:
    path, state = _config(tmp_path)
    configcache.store(str(path), b"x", {"gate": {"when": __import__("datetime").date(2026, 1, 1)}}, str(state))
    assert not _cache(state, path).exists()


def test_a_cache_planted_by_another_member_is_not_believed(hostile_root: Path) -> None:  # noqa: F811
    """Mallory shares the state dir; she writes a cache for the victim's config that lifts the limit."""
    state = hostile_users.shared_dir(hostile_root / "state")
    path = hostile_root / "config.toml"
    path.write_text(f'[gate]\nstate_dir = "{state}"\n[limits]\nmax_sessions = 2\n')
    path.chmod(0o644)
    victim = hostile_users.uid(hostile_users.VICTIM)
    name = configcache.file_name(str(path)).replace(f"config-{os.geteuid()}-", f"config-{victim}-")
    plant = (
        "import marshal, os, sys; from borg_gate.base import configcache as c;"
        "raw = open(sys.argv[1], 'rb').read();"
        "data = {'gate': {'state_dir': sys.argv[2]}, 'limits': {'max_sessions': 999}};"
        "fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT, 0o644); os.fchmod(fd, 0o644);"
        "os.write(fd, marshal.dumps((c.FORMAT, sys.argv[1], raw, data))); os.close(fd)"
    )
    planted = hostile_users.run_as(hostile_users.MEMBER, plant, str(path), str(state), str(state / name))
    assert planted.returncode == 0, planted.stderr
    load = "import sys; from borg_gate.base import config; print(config.load_config(sys.argv[1], True).max_sessions)"
    seen = hostile_users.run_as(hostile_users.VICTIM, load, str(path))
    assert (seen.returncode, seen.stdout) == (0, "2\n"), seen.stderr


@given(st.text(max_size=300))
def test_the_state_dir_scan_never_fails(text: str) -> None:
    hint = configcache.state_dir_hint(text, "/run/borg-gate")
    assert isinstance(hint, str)


@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
        lambda s: '"' not in s and "\\" not in s
    )
)
def test_the_scan_finds_a_plain_state_dir(path: str) -> None:
    text = f'[limits]\nstate_dir = "no"\n[gate]\n  state_dir = "{path}"  # where\n'
    assert configcache.state_dir_hint(text, "/run/borg-gate") == path
