"""Issue 22: temp names in the shared state dir cannot be squatted, and a failed cache write is never silent.

Every file the gate and root replace lives in a dir another member can write. The old temp
names were ``NAME.<pid>.tmp``: with pid_max at 32,768 a member could plant them all, and the
victim's caches were never written again, silently. Here the member plants the very names the
old scheme would use for the victim's pid, as a file, a symlink and a FIFO, and nothing changes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from borg_gate.admin import counterfiles
from borg_gate.base import configcache, counters, statedir
from borg_gate.conn import reconnects, versions
from tests.hostile_users import MEMBER, VICTIM, popen_as, run_as, shared_dir, uid
from tests.hostile_users import hostile_root as hostile_root  # a fixture
from tests.recorder import Host

# The victim: says its pid, waits until the member has planted, then replaces her files.
VICTIM_WRITES = """
import os, sys
from borg_gate.base import counters, statedir
print(os.getpid(), flush=True)
sys.stdin.readline()
state = sys.argv[1]
fd = statedir.open_dir(state, create=False)
results = [statedir.write_own(fd, name, b'{"fresh": 1}') for name in sys.argv[2:]]
os.close(fd)
results.append(counters.add(state, {counters.CONFIG_ERRORS: 1}))  # her 0644 file: replaced by a fresh 0600 one
print(results, statedir.failed_writes, flush=True)
"""

PLANT = """
import os, sys
state, pid = sys.argv[1], sys.argv[2]
for i, name in enumerate(sys.argv[3:]):
    planted = os.path.join(state, f"{name}.{pid}.tmp")
    if i % 3 == 0:
        open(planted, "w").close()
    elif i % 3 == 1:
        os.symlink("/etc/passwd", planted)
    else:
        os.mkfifo(planted)
"""


def test_names_predicted_from_the_victims_pid_change_nothing(hostile_root: Path) -> None:
    state = shared_dir(hostile_root / "state")
    victim = uid(VICTIM)
    caches = [versions.cache_name(victim), reconnects.file_name(victim), f"config-{victim}-0123456789abcdef.cache"]
    counts = f"{counters.PREFIX}{victim}.json"
    # her counters file as an older gate left it (0644): the writer replaces it through a temp name
    made = run_as(VICTIM, f"import os; os.close(os.open({str(state / counts)!r}, os.O_CREAT | os.O_WRONLY, 0o644))")
    assert made.returncode == 0, made.stderr
    proc = popen_as(VICTIM, VICTIM_WRITES, str(state), *caches)
    assert proc.stdout is not None and proc.stdin is not None
    pid = proc.stdout.readline().strip()
    planted = run_as(MEMBER, PLANT, str(state), pid, *caches, counts)
    assert planted.returncode == 0, planted.stderr
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "[True, True, True, True] []", out
    for name in caches:
        st = os.stat(state / name, follow_symlinks=False)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == victim and (state / name).read_bytes() == b'{"fresh": 1}'
    st = os.stat(state / counts)
    assert st.st_uid == victim and stat.S_IMODE(st.st_mode) == counters.FILE_MODE
    assert json.loads((state / counts).read_text())["values"][counters.CONFIG_ERRORS] == 1
    assert Path("/etc/passwd").stat().st_size > 0  # nothing written through her symlink


def test_temp_names_are_random_and_never_collide() -> None:
    names = {statedir.temp_name("x.json") for _ in range(10_000)}
    assert len(names) == 10_000
    assert all(n.startswith(".x.json.") and n.endswith(".tmp") and len(n) == len(".x.json.") + 16 + 4 for n in names)


def test_a_cache_that_cannot_be_written_is_logged_once_and_counted(tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    # a directory where the config cache goes (as a member could make one): the rename over it fails
    (host.state_dir / configcache.file_name(str(host.config_path))).mkdir()
    outcome = host.run("borg serve", ["--client", "alice"])
    assert outcome.record is not None, outcome.stderr  # served all the same
    events = host.events()
    failed = [e for e in events if "write_failed" in e]
    assert len(failed) == 1 and configcache.file_name(str(host.config_path)) in failed[0]["write_failed"][0]
    values = counterfiles.load(str(host.state_dir)).values
    assert values[counters.series(counters.SINK_FAILURES, sink="cache")] == 1
    assert not [n for n in os.listdir(host.state_dir) if n.endswith(".tmp")]  # no temp file left behind
