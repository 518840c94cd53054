"""Files another gate-group member can plant in the shared state and log dirs: the version cache and the log.

/run/borg-gate and /var/log/borg-gate are 2770 root:borg-gate (packaging/tmpfiles.d): every
member can create, replace and unlink any file in them (no sticky bit). These tests plant what
such a member could, run the real gate, and expect it to stay in control: refuse or serve as it
would without the planted file, never hang, never a weaker borg serve.

A planted file is chowned to another uid, as a member's would be; that needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from borg_gate.base import connection, events
from borg_gate.base.config import BinarySpec
from borg_gate.base.errors import Kind
from borg_gate.base.events import EventLog
from borg_gate.conn import versions
from borg_gate.conn.versions import BorgVersion, resolve
from tests.recorder import GATE, SSHD_ENV, Host, Outcome, detections, fake_borg, start_gate

OTHER_UID = 65534  # nobody: "another member of the gate group"
HANG = 30.0  # a gate that has not finished by then is stuck for good (it blocks in open())
LEGACY_SHARED_CACHE = "borg-versions.json"  # one cache for the whole group, before the per-user caches


def _as_other_user(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: planting a file owned by another uid (CI runs as root)")
    os.chown(path, OTHER_UID, -1, follow_symlinks=False)


def _identity(binary: Path) -> str:
    """What a member computes from a plain stat of the binary (the cache key is no secret)."""
    st = os.stat(binary)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _run_bounded(host: Host, command: str, key_args: list[str]) -> Outcome:
    """Host.run, but a gate stuck in a blocking open is killed (and the test fails) rather than left behind."""
    env = {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}
    proc, write_end = start_gate([*GATE, "--config", str(host.config_path), *key_args], env, stdin=b"", cwd=host.root)
    os.close(write_end)
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the gate hung (still running after {HANG:.0f} s): a planted file blocks every connection")
    return Outcome(proc.returncode, out, err, proc.pid, host.record())


def _b22_host(tmp_path: Path) -> Host:
    """borg 2.0.0b22, version not stated (as packaging/config.toml ships it): its legacy serve ignores --permissions."""
    host = Host(tmp_path / "host", binaries={"borg": ""})
    (host.bin_dir("borg") / "VERSION").write_text("2.0.0b22")
    return host


# --------------------------------------------------------------------------- the version cache, through the gate


@pytest.mark.parametrize("name", [versions.cache_name(), LEGACY_SHARED_CACHE])
def test_poisoned_version_cache_must_not_weaken_a_no_delete_key(tmp_path: Path, name: str) -> None:
    """A member writes a cache saying the b22 binary is b21, under this user's name or the old shared one.

    Believed, it would make the gate pass --permissions=no-delete to b22's legacy serve, which
    ignores it ("args.permissions is intentionally not forwarded"): a no-delete key that can delete.
    """
    host = _b22_host(tmp_path)
    key = ["--client", "alice", "--append-only"]
    honest = host.run("borg serve", key)
    assert honest.returncode == int(Kind.NOT_ALLOWED), honest.stderr  # the gate detected b22 and refused

    binary = str(host.binary("borg"))
    cache = host.state_dir / name
    cache.unlink(missing_ok=True)  # a member may unlink the user's own cache (no sticky bit) and plant theirs
    cache.write_text(json.dumps({binary: {"identity": _identity(host.binary("borg")), "version": "2.0.0b21"}}))
    _as_other_user(cache)

    outcome = host.run("borg serve", key)
    served = outcome.record["argv"] if outcome.record else None
    assert outcome.returncode == int(Kind.NOT_ALLOWED), f"served a no-delete key by a legacy b22 serve: {served}"


def test_version_cache_symlink_is_not_followed(tmp_path: Path) -> None:
    """Every other state file is opened O_NOFOLLOW through the checked dir fd; so is the cache."""
    host = _b22_host(tmp_path)
    elsewhere = tmp_path / "attacker-owned.json"
    binary = str(host.binary("borg"))
    elsewhere.write_text(json.dumps({binary: {"identity": _identity(host.binary("borg")), "version": "2.0.0b21"}}))
    _as_other_user(elsewhere)
    (host.state_dir / versions.cache_name()).symlink_to(elsewhere)

    outcome = host.run("borg serve", ["--client", "alice", "--append-only"])
    assert outcome.returncode == int(Kind.NOT_ALLOWED), outcome.record and outcome.record["argv"]


def test_fifo_as_version_cache_does_not_hang_the_gate(tmp_path: Path) -> None:
    host = Host(tmp_path / "host", binaries={"borg": ""})
    os.mkfifo(host.state_dir / versions.cache_name())
    outcome = _run_bounded(host, "borg serve", ["--client", "alice"])
    assert outcome.record is not None, outcome.stderr  # served as without the FIFO: detected, not cached


# --------------------------------------------------------------------------- the version cache, unit by unit


def _spec(binary: Path) -> BinarySpec:
    return BinarySpec("borg", str(binary))


def _plant(state: Path, binary: Path, version: str, mode: int) -> Path:
    cache = state / versions.cache_name()
    cache.write_text(json.dumps({str(binary): {"identity": _identity(binary), "version": version}}))
    cache.chmod(mode)
    return cache


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666], ids=oct)
def test_a_cache_others_can_write_is_not_believed(tmp_path: Path, mode: int) -> None:
    """This user's own file, but group- or world-writable: anyone in the group could have written it."""
    binary = fake_borg(tmp_path / "bin", "2.0.0b22")
    _plant(tmp_path, binary, "2.0.0b21", mode)
    assert resolve(_spec(binary), str(tmp_path)).version == BorgVersion.parse("2.0.0b22")
    assert detections(binary) == 1


def test_an_owned_private_cache_is_believed(tmp_path: Path) -> None:
    """The other side of the check: a 0644 cache of this user's is the cache, and saves the --version."""
    binary = fake_borg(tmp_path / "bin", "2.0.0b22")
    _plant(tmp_path, binary, "2.0.0b21", 0o644)
    assert resolve(_spec(binary), str(tmp_path)).version == BorgVersion.parse("2.0.0b21")
    assert detections(binary) == 0


def test_a_cache_with_a_second_name_is_not_believed(tmp_path: Path) -> None:
    """A hard link: the name is a second door to another file of this user's, not the cache it wrote."""
    binary = fake_borg(tmp_path / "bin", "2.0.0b22")
    cache = _plant(tmp_path, binary, "2.0.0b21", 0o644)
    os.link(cache, tmp_path / "elsewhere")
    assert resolve(_spec(binary), str(tmp_path)).version == BorgVersion.parse("2.0.0b22")
    assert detections(binary) == 1


def test_a_cache_owned_by_another_uid_is_not_believed_and_is_replaced(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "2.0.0b22")
    cache = _plant(tmp_path, binary, "2.0.0b21", 0o644)
    _as_other_user(cache)
    assert resolve(_spec(binary), str(tmp_path)).version == BorgVersion.parse("2.0.0b22")
    st = cache.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o644)
    assert json.loads(cache.read_text())[str(binary)]["version"] == "2.0.0b22"


def test_an_oversized_cache_is_not_read(tmp_path: Path) -> None:
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    entry = {str(binary): {"identity": _identity(binary), "version": "1.4.5"}}
    padded = json.dumps(entry).replace("{", "{" + " " * versions.MAX_CACHE_BYTES, 1)
    (tmp_path / versions.cache_name()).write_text(padded)
    assert resolve(_spec(binary), str(tmp_path)).version == BorgVersion.parse("1.2.4")


def test_the_cache_is_written_private_whatever_the_umask(tmp_path: Path) -> None:
    """The gate runs with umask 007 for the shared slot files: a 0660 cache would be ignored next time."""
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    old = os.umask(0o007)
    try:
        resolve(_spec(binary), str(tmp_path))
    finally:
        os.umask(old)
    assert (tmp_path / versions.cache_name()).stat().st_mode & 0o777 == 0o644
    resolve(_spec(binary), str(tmp_path))
    assert detections(binary) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", versions.cache_name()]  # no temp file left


def test_each_user_has_its_own_cache(tmp_path: Path) -> None:
    assert versions.cache_name(1000) == "borg-versions-1000.json"
    assert versions.cache_name() == f"borg-versions-{os.geteuid()}.json"


def test_an_unsafe_state_dir_costs_a_detection_not_a_cache(tmp_path: Path) -> None:
    """A symlinked state dir is refused by the slots; the version lookup only stops caching there."""
    binary = fake_borg(tmp_path / "bin", "1.2.4")
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    for _ in range(2):
        assert resolve(_spec(binary), str(tmp_path / "state")).version == BorgVersion.parse("1.2.4")
    assert detections(binary) == 2
    assert list((tmp_path / "real").iterdir()) == []


# --------------------------------------------------------------------------- the log file


def test_fifo_as_log_file_does_not_hang_the_gate(tmp_path: Path) -> None:
    """A FIFO with no reader in place of gate.jsonl would block an O_WRONLY open forever.

    /var/log/borg-gate is 2770 root:borg-gate, so any member can replace gate.jsonl by a FIFO;
    every gate would then hang at its first event, before any refusal or exec.
    """
    host = Host(tmp_path / "host")
    os.mkfifo(host.log_file)
    outcome = _run_bounded(host, "borg serve", ["--client", "alice"])
    assert outcome.record is not None, outcome.stderr  # served: the log is a sink, not a gate


def test_a_fifo_with_a_reader_gets_no_line_and_counts_as_a_sink_failure(tmp_path: Path) -> None:
    """A member holding the FIFO's read end would see every event (and could stall the writer): refused once open."""
    fifo = tmp_path / "gate.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log = EventLog(connection.current(SSHD_ENV), str(fifo))
        log.emit("connection.refused", reason="test")
        assert log.failures == 1
        assert os.read(reader, 4096) == b""  # no writer left and nothing written: end of file
    finally:
        os.close(reader)
    assert events.append_line(str(fifo), b"x\n") == f"{fifo}: No such device or address"  # no reader: ENXIO


def test_a_regular_log_file_is_still_appended(tmp_path: Path) -> None:
    log_file = tmp_path / "gate.jsonl"
    for n in range(2):
        assert events.append_line(str(log_file), f"{n}\n".encode()) is None
    assert log_file.read_text() == "0\n1\n"
    assert log_file.stat().st_mode & 0o777 == events.LOG_MODE


def test_a_write_error_on_a_regular_log_file_is_reported(tmp_path: Path) -> None:
    """/dev/full is now refused before any write: a file past RLIMIT_FSIZE still gives a real write error."""
    log_file = tmp_path / "gate.jsonl"
    log_file.write_bytes(b"x" * 8192)
    probe = "import sys; from borg_gate.base import events; print(events.append_line(sys.argv[1], b'line\\n'))"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: EFBIG instead

    out = subprocess.run(
        [sys.executable, "-c", probe, str(log_file)], preexec_fn=small_files, capture_output=True, text=True, check=True
    )
    assert out.stdout == f"{log_file}: File too large\n"
    assert log_file.stat().st_size == 8192
