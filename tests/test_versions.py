"""borg versions: parsing, ordering, what each serve can enforce, and the detection cache."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_gate.base.config import BinarySpec
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import versions
from borg_gate.conn.versions import Borg, BorgVersion, features, resolve
from tests import platform_facts
from tests.recorder import detections, fake_borg
from tests.recorder.grammar import VERSIONS, built_borg


def v(text: str) -> BorgVersion:
    return BorgVersion.parse(text)


ORDERED = [
    "1.1.18",
    "1.2.0a9",
    "1.2.0b4",
    "1.2.0rc1",
    "1.2.0",
    "1.2.4",
    "1.4.5",
    "2.0.0.dev0",
    "2.0.0a2",
    "2.0.0b5",
    "2.0.0b9",
    "2.0.0b10",
    "2.0.0b22.dev3",
    "2.0.0b22",
    "2.0.0rc1",
    "2.0.0",
    "2.0.1",
    "10.0.0",
]


def test_versions_order() -> None:
    parsed = [v(t) for t in ORDERED]
    assert parsed == sorted(parsed)
    assert all(a < b for a, b in itertools.pairwise(parsed))


@pytest.mark.parametrize(
    ("output", "text"),
    [
        ("borg 1.2.4\n", "1.2.4"),
        ("borg2 2.0.0b5\n", "2.0.0b5"),
        ("borg 2.0.0b22.dev3+g1234abc\n", "2.0.0b22.dev3"),
        ("borg-linux64 1.4.5", "1.4.5"),
    ],
)
def test_parse_version_output(output: str, text: str) -> None:
    assert str(v(output)) == text


@pytest.mark.parametrize("output", ["", "borg", "borg 1.2", "Python 3 is required", "borg x.y.z"])
def test_parse_rejects_non_versions(output: str) -> None:
    with pytest.raises(ValueError):
        v(output)


@given(
    st.integers(0, 30),
    st.integers(0, 30),
    st.integers(0, 30),
    st.sampled_from(["", "a", "b", "rc"]),
    st.integers(1, 40),
)
def test_prereleases_come_before_their_release(major: int, minor: int, patch: int, pre: str, num: int) -> None:
    release = v(f"{major}.{minor}.{patch}")
    if pre:
        pre_release = v(f"{major}.{minor}.{patch}{pre}{num}")
        assert pre_release < release
        assert v(f"{major}.{minor}.{patch}{pre}{num}.dev1") < pre_release
    assert v(f"{major}.{minor}.{patch}.dev{num}") < release
    assert release < v(f"{major}.{minor}.{patch + 1}")


# version -> (append_only, storage_quota, permissions, permissions_legacy_serve, rest), per serve at the tag:
# b10-b15 parse --append-only/--storage-quota and then exit "not supported (yet?)" (serve_cmd.py);
# b18-b21 apply --permissions only to repositories the client opens as borg 2 (remote.py, ``if not v1_or_v2``)
FEATURES = {
    "1.1.18": (True, True, False, False, False),
    "1.2.4": (True, True, False, False, False),
    "1.4.5": (True, True, False, False, False),
    "2.0.0b5": (True, True, False, False, False),
    "2.0.0b9": (True, True, False, False, False),
    "2.0.0b10": (False, False, False, False, False),
    "2.0.0b15": (False, False, False, False, False),
    "2.0.0b16": (False, False, False, False, False),
    "2.0.0b17": (False, False, False, False, False),
    "2.0.0b18.dev2": (False, False, False, False, False),
    "2.0.0b18": (False, False, True, False, False),
    "2.0.0b21": (False, False, True, False, False),
    "2.0.0b22": (False, False, True, False, True),
    "2.0.0rc1": (False, False, True, False, True),
    "2.0.0": (False, False, True, False, True),
}


@pytest.mark.parametrize(("version", "expected"), FEATURES.items())
def test_feature_table(version: str, expected: tuple[bool, ...]) -> None:
    f = features(v(version))
    assert (f.append_only, f.storage_quota, f.permissions, f.permissions_legacy_serve, f.rest) == expected


# --------------------------------------------------------------------------- detection and its cache


def spec(binary: Path, version: str | None = None) -> BinarySpec:
    return BinarySpec("borg", str(binary), version)


def test_detected_once_then_cached(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    state = tmp_path / "state"
    state.mkdir()
    assert resolve(spec(binary), str(state)).version == v("1.2.4")
    assert resolve(spec(binary), str(state)).version == v("1.2.4")
    assert detections(binary) == 1
    cache = json.loads((state / versions.cache_name()).read_text())
    assert cache[str(binary)]["version"] == "1.2.4"


def test_upgraded_binary_is_detected_again(tmp_path: Path) -> None:
    """An upgrade replaces the file (new inode): the cached version must not outlive it."""
    binary = fake_borg(tmp_path / "bin", "2.0.0b5")
    state = str(tmp_path)
    assert resolve(spec(binary), state).version == v("2.0.0b5")
    new = fake_borg(tmp_path / "new", "unused")  # copy2: same size and mtime, only inode and ctime differ
    (tmp_path / "bin" / "VERSION").write_text("2.0.0b22")
    os.replace(new, binary)  # as dpkg does
    assert resolve(spec(binary), state).version == v("2.0.0b22")
    assert resolve(spec(binary), state).version == v("2.0.0b22")
    assert detections(binary) == 2


def test_binary_rewritten_in_place_is_detected_again(tmp_path: Path) -> None:
    """Same inode, new content (cp over it): size/mtime/ctime change."""
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    state = str(tmp_path)
    resolve(spec(binary), state)
    with open(binary, "a") as fh:
        fh.write("# upgraded\n")
    (tmp_path / "bin" / "VERSION").write_text("1.4.5")
    assert resolve(spec(binary), state).version == v("1.4.5")
    assert detections(binary) == 2


def test_stated_version_is_never_detected(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    borg = resolve(spec(binary, "2.0.0b22"), str(tmp_path))
    assert borg == Borg(spec(binary, "2.0.0b22"), v("2.0.0b22"))
    assert detections(binary) == 0
    assert not (tmp_path / versions.cache_name()).exists()


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    cache = tmp_path / versions.cache_name()
    for junk in ["{", "[]", '{"x": 1}', json.dumps({str(binary): {"identity": "x", "version": "9.9.9"}})]:
        cache.write_text(junk)
        assert resolve(spec(binary), str(tmp_path)).version == v("1.2.4")
    assert detections(binary) == 4
    assert json.loads(cache.read_text())[str(binary)]["version"] == "1.2.4"


def test_deeply_nested_cache_is_ignored(tmp_path: Path) -> None:
    """json recurses per nesting level: a RecursionError must count as a bad cache, not crash the gate."""
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    (tmp_path / versions.cache_name()).write_text("[" * 100_000 + "]" * 100_000)
    assert resolve(spec(binary), str(tmp_path)).version == v("1.2.4")


def test_unwritable_state_dir_still_detects(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    assert resolve(spec(binary), str(tmp_path / "missing")).version == v("1.2.4")
    assert resolve(spec(binary), str(tmp_path / "missing")).version == v("1.2.4")
    assert detections(binary) == 2


def test_missing_binary_is_misconfigured(tmp_path: Path) -> None:
    with pytest.raises(Refusal) as info:
        resolve(spec(tmp_path / "nope"), str(tmp_path))
    assert info.value.kind is Kind.MISCONFIGURED
    assert str(tmp_path / "nope") in info.value.reason


def test_non_executable_binary_is_misconfigured(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    binary.chmod(0o644)
    with pytest.raises(Refusal) as info:
        resolve(spec(binary, "1.2.4"), str(tmp_path))
    assert info.value.kind is Kind.MISCONFIGURED
    assert "not executable" in info.value.reason


def test_binary_that_is_no_borg_is_misconfigured(tmp_path: Path) -> None:
    binary = tmp_path / "borg"
    binary.write_text("#!/bin/sh\necho 'hello'\n")
    binary.chmod(0o755)
    with pytest.raises(Refusal) as info:
        resolve(spec(binary), str(tmp_path))
    assert info.value.kind is Kind.MISCONFIGURED
    assert "--version said 'hello'" in info.value.reason


def test_detection_never_reads_the_clients_stdin(tmp_path: Path) -> None:
    """The client's first request waits on stdin for borg serve: --version gets /dev/null."""
    binary = tmp_path / "borg"
    binary.write_text(f"#!/bin/sh\nreadlink /proc/self/fd/0 > {tmp_path}/stdin\necho borg 1.2.4\n")
    binary.chmod(0o755)
    assert resolve(spec(binary), str(tmp_path)).version == v("1.2.4")
    assert (tmp_path / "stdin").read_text() == "/dev/null\n"


def test_subprocess_is_imported_only_to_detect(tmp_path: Path) -> None:
    """subprocess costs ~2-5 ms per connection; only a detection (once per binary upgrade) needs it."""
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    probe = (
        "import sys\n"
        "from borg_gate.base.config import BinarySpec\n"
        "from borg_gate.conn.versions import resolve\n"
        f"resolve(BinarySpec('borg', {str(binary)!r}, '1.2.4'), {str(tmp_path)!r})\n"
        "assert 'subprocess' not in sys.modules, 'stated version'\n"
        f"resolve(BinarySpec('borg', {str(binary)!r}), {str(tmp_path)!r})\n"
        f"resolve(BinarySpec('borg', {str(binary)!r}), {str(tmp_path)!r})\n"
        "assert 'subprocess' in sys.modules, 'detection ran'\n"
    )
    cached = probe.replace("'subprocess' in sys.modules, 'detection ran'", "'subprocess' not in sys.modules, 'cached'")
    subprocess.run([sys.executable, "-I", "-c", probe], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-I", "-c", cached], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_real_borgs_are_detected(tmp_path: Path, version: str) -> None:
    debian = {platform_facts.debian_borg(): platform_facts.BORG1, platform_facts.debian_borg2(): platform_facts.BORG2}
    path = Path(debian[version]) if version in debian else None
    binary = path or built_borg(version)
    assert resolve(spec(binary), str(tmp_path)).version == v(version)
    assert versions.detect_version(str(binary)) == v(version)
