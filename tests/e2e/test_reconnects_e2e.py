"""A real 2.0b22+ rest:// client against a full budget: one full wait, then its reconnects refused at once.

borgstore (>= 0.5.5) reconnects up to three times, 5 s apart, when the server closes without
an answer, for any request but ``create`` (``with_reconnect`` in borgstore's backends/rest.py),
so the client lists an existing repository. Another client's borg serve holds the only slot
for the whole test; the rest:// client's first connection queues WAIT seconds and is refused
(213), its reconnects are refused without a wait (borg_gate/conn/reconnects.py). Without the memory
(made unusable here by a root-owned file under its name, which the gate neither believes nor
can replace) the same command takes four full waits and three pauses. The test prints both
figures (run it with -s to see them).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from borg_gate.conn import reconnects
from tests import platform_facts
from tests.borg_cli import Cli
from tests.e2e import harness
from tests.e2e.harness import Site
from tests.waiting import wait_for

USER = "bgate-a"
WAIT = 8.0
RETRIES = 3


def borgstore_version(borg: Path) -> tuple[int, ...]:
    python = borg.with_name("python")
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('borgstore'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(int(p) for p in out.stdout.strip().split(".")[:3])


@pytest.mark.parametrize("memory", [True, False], ids=["memory", "no-memory"])
@pytest.mark.parametrize("version", ["2.0.0b22", "2.0.0b25"])
def test_rest_client_refused_at_the_deadline_is_not_queued_again(
    site: Site, tmp_path: Path, version: str, memory: bool
) -> None:
    platform_facts.lacks(version)
    borg = Path(str(platform_facts.borg_build().ensure(version)))
    retries = RETRIES if borgstore_version(borg) >= (0, 5, 5) else 0
    name = f"borg-{version}"
    site.write_config(
        limits={"max_sessions": 1, "max_sessions_per_client": 1, "wait": WAIT},
        borg__binaries={name: {"path": str(borg), "version": version}},
    )
    holder, client = site.key("holder"), site.key("rc")
    site.repo_dir("holder", owner=USER)
    repos = site.repo_dir("rc", owner=USER)
    site.authorize(USER, (holder, "--client holder"), (client, f"--client rc --borg {name}"))
    rsh = {"BORGSTORE_RSH": shlex.join(["ssh", *harness.ssh_options(client), "-p", str(site.sshd.port)])}
    url = Cli(version).url(f"{USER}@127.0.0.1:{site.sshd.port}", repos / "r")
    site.borg(Cli(version).init(url), client, borg=str(borg), env=rsh).check()
    if not memory:
        (site.state_dir / reconnects.file_name(harness.uid_gid(USER)[0])).write_text("{}")
    ssh = ["ssh", *harness.ssh_options(holder), "-T", "-p", str(site.sshd.port), f"{USER}@127.0.0.1", "borg serve"]
    held = subprocess.Popen(ssh, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # its borg serve holds the only slot, waiting for its first request
        wait_for(lambda: any(e.get("client") == "holder" for e in site.events("session.started")), "the holder")
        start = time.monotonic()
        result = site.borg(Cli(version).names(url), client, borg=str(borg), env=rsh, timeout=600)
        took = time.monotonic() - start
    finally:
        assert held.stdin is not None
        held.stdin.close()
        held.wait(timeout=60)
    assert result.returncode == 2
    assert "server busy: 1/1 sessions in use" in result.stderr, result.stderr
    refused = [e for e in site.events("connection.refused") if e.get("client") == "rc"]
    assert [e["exit_code"] for e in refused] == [213] * (1 + retries)
    if memory:
        assert [bool(e.get("reconnect")) for e in refused] == [False] + [True] * retries
        assert refused[0]["waited"] >= WAIT and all(e["waited"] < 1 for e in refused[1:])
    else:
        assert not any(e.get("reconnect") for e in refused) and all(e["waited"] >= WAIT for e in refused)
    print(
        f"\nborg {version} (borgstore {'.'.join(map(str, borgstore_version(borg)))}), wait {WAIT:g} s,"
        f" {'with' if memory else 'without'} the reconnect memory: {len(refused)} refusals,"
        f" {sum(e['waited'] for e in refused):.1f} s queued, the command took {took:.1f} s"
    )
