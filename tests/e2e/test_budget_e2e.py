"""Issue 3 end to end: the session budget holds through a real sshd with real borg 1.2 clients and servers."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.e2e import harness
from tests.e2e.harness import Site

CLIENTS = {"alice": "bgate-a", "bob": "bgate-b", "carol": "bgate-c"}


def serving(repos: Path) -> list[str]:
    """Clients of the borg serve processes of this site that are alive together right now.

    A /proc scan takes a while, so each process found is read again afterwards: one still
    ``borg serve`` then was alive when the scan ended, together with all the others kept.
    While its cmdline reads, a process still holds its memory and hence its descriptors (the
    kernel drops memory before files on exit): it still holds its slots.
    """

    def client(pid: str) -> str | None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        borg = harness.BORG1.encode()  # a Python script: argv[0] is its interpreter
        if not any(argv[i : i + 2] == [borg, b"serve"] for i in range(3)):
            return None
        for arg in argv:
            text = arg.decode(errors="replace")
            if text.startswith(f"--restrict-to-path={repos}/"):
                return text.rsplit("/", 1)[-1]
        return None

    found = {pid: c for pid in os.listdir("/proc") if pid.isdigit() and (c := client(pid))}
    return [c for pid, c in found.items() if client(pid) == c]


def test_12_parallel_init_and_create_from_3_clients_keep_both_limits(site: Site, tmp_path: Path) -> None:
    site.write_config(limits={"max_sessions": 2, "max_sessions_per_client": 1, "wait": 600})
    keys = {name: site.key(name) for name in CLIENTS}
    for name, user in CLIENTS.items():
        site.authorize(user, (keys[name], f"--client {name}"))
    jobs = []
    for name, user in CLIENTS.items():
        repos = site.repo_dir(name, owner=user)
        jobs += [(name, site.repo_url(user, repos / f"repo{n}")) for n in range(4)]
    src = harness.make_tree(tmp_path / "src")

    samples: list[list[str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):  # a pause, so the sampler leaves the 2 cores to borg
            samples.append(serving(site.repos))

    def init_and_create(job: tuple[str, str]) -> list[harness.Result]:
        name, repo = job
        made = site.borg(["init", "--encryption=none", repo], keys[name])
        return [made, site.borg(["create", f"{repo}::one", str(src)], keys[name])]

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = [r for pair in pool.map(init_and_create, jobs) for r in pair]
    finally:
        stop.set()
        sampler.join()

    for result in results:
        result.check()
    for running in samples:
        assert len(running) <= 2, running
        assert all(running.count(c) <= 1 for c in running), running
    assert max(len(r) for r in samples) == 2  # the sampler did see the host budget full
    assert len(site.events("session.started")) == 12 + 12
    assert site.events("session.queued"), "12 clients against 2 slots and nobody waited?"
    said = "Remote: borg-gate: waiting for a session slot"
    assert any(said in r.stderr for r in results), [r.stderr for r in results]
