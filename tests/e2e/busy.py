"""Busy-host helpers shared by tests/e2e/test_busy_host_e2e.py and bench/samerepo.py.

Many real borg clients against one site at once: each client is its own "host" (its own key,
its own BORG_BASE_DIR, so borg's client-side cache and security dirs are not shared, as on 30
real hosts), all started together, every result kept.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e import harness
from tests.e2e.harness import ClientKey, Result, Site

USER = "bgate-a"  # every client logs in as this unix user: one repository, one owner
B22 = "2.0.0b22"
BUILD = harness.REPO_ROOT / "tests" / "borgs" / "build"


def borg_version(borg: str) -> str:
    """What an installed borg says it is (``borg 1.2.4`` -> ``1.2.4``)."""
    out = subprocess.run([borg, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def built_borg(version: str = B22) -> str:
    """A borg built from PyPI by tests/borgs/build (cached in /var/cache/borg-gate-tests)."""
    out = subprocess.run([harness.SYSTEM_PYTHON, str(BUILD), version], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def forced_line(key: ClientKey, argv: Sequence[str]) -> str:
    """An authorized_keys line forcing ``argv`` (a plain borg serve, no gate) for ``key``."""
    return f'command="{shlex.join(argv)}",restrict {key.public_line}'


@dataclass(frozen=True)
class Client:
    """One backup host: a key and a borg, talking to ``site`` as USER."""

    site: Site
    key: ClientKey
    borg: str
    rest: bool = False  # a 2.0b22+ client using rest:// (else ssh://)

    def url(self, repo: Path) -> str:
        port = self.site.sshd.port
        return f"rest://{USER}@127.0.0.1:{port}/{repo}" if self.rest else f"ssh://{USER}@127.0.0.1:{port}{repo}"

    def env(self, rsh: Sequence[str] = ("ssh",)) -> dict[str, str]:
        """The client's environment; ``rsh`` is what runs ssh (a rest:// client's BORGSTORE_RSH)."""
        env = {}
        if self.rest:  # borgstore takes its ssh from BORGSTORE_RSH, verbatim: the port goes in it
            env["BORGSTORE_RSH"] = shlex.join([*rsh, *harness.ssh_options(self.key), "-p", str(self.site.sshd.port)])
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 600,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        return self.site.borg(args, self.key, borg=self.borg, env=env or self.env(), timeout=timeout, cwd=cwd)

    def start_backup(self, repo: Path, archive: str, log: Path) -> Running:
        """A ``borg create … -`` that runs until :meth:`Running.finish`: it backs up its stdin."""
        if self.rest:
            args = ["-r", self.url(repo), "create", archive, "-"]
        else:
            args = ["create", f"{self.url(repo)}::{archive}", "-"]
        return Running(self, [self.borg, *args], log)

    # the same operations in both families' words
    def init(self, repo: Path) -> Result:
        if self.rest:
            return self.run(["-r", self.url(repo), "repo-create", "--encryption=none"])
        return self.run(["init", "--encryption=none", self.url(repo)])

    def create(self, repo: Path, archive: str, src: Path, *extra: str) -> Result:
        if self.rest:
            return self.run(["-r", self.url(repo), "create", *extra, archive, str(src)])
        return self.run(["create", *extra, f"{self.url(repo)}::{archive}", str(src)])

    def extract(self, repo: Path, archive: str, into: Path) -> Result:
        into.mkdir(parents=True)
        if self.rest:
            return self.run(["-r", self.url(repo), "extract", archive], cwd=into)
        return self.run(["extract", f"{self.url(repo)}::{archive}"], cwd=into)

    def names(self, repo: Path) -> list[str]:
        if self.rest:
            out = self.run(["-r", self.url(repo), "repo-list", "--format={archive}{NL}"]).check()
        else:
            out = self.run(["list", "--short", self.url(repo)]).check()
        return sorted(out.stdout.split())


class Running:
    """A client borg started in the background, its stderr going to a file read as it grows."""

    def __init__(self, client: Client, cmd: list[str], log: Path, cwd: Path | None = None) -> None:
        self.cmd = cmd
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=client.site.borg_env(client.key, client.env()),
                cwd=cwd,
            )

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, data: bytes = b"the stdin of a backup\n" * 1000, timeout: float = 300) -> Result:
        """End its input; it commits the archive and exits."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(data)
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = 300) -> Result:
        rc = self.proc.wait(timeout)
        return Result(self.cmd, rc, "", self.log.read_text(errors="replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def source(path: Path, mib: int = 16) -> Path:
    """A tree to back up whose ``borg create`` holds the repository lock for longer than borg's 1 s lock wait."""
    harness.make_tree(path, files=200)
    (path / "big.bin").write_bytes(os.urandom(mib << 20))  # random: no dedup, no compression shortcut
    return path


def together(jobs: Sequence[Callable[[], Result]]) -> list[Result]:
    """Run all ``jobs`` at once (released by one barrier) and return their results in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[Result | None] = [None] * len(jobs)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = jobs[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class Outcome:
    results: list[Result]

    @property
    def ok(self) -> int:
        return sum(r.returncode == 0 for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.ok

    def errors(self) -> collections.Counter[str]:
        """The failures' last stderr lines (borg's error), counted."""
        return collections.Counter(error_line(r) for r in self.results if r.returncode != 0)

    def summary(self) -> str:
        lines = [f"{self.ok} of {len(self.results)} succeeded, {self.failed} failed"]
        lines += [f"    {n} x {line}" for line, n in self.errors().most_common()]
        return "\n".join(lines)


def error_line(result: Result) -> str:
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    told = [line for line in lines if "lock" in line.lower() or "error" in line.lower()]
    return (told or lines or [f"exit {result.returncode}, no stderr"])[-1][:200]


def same_repo_creates(clients: Sequence[Client], repo: Path, src: Path) -> Outcome:
    """Every client ``borg create``s into ``repo`` at once, without --lock-wait (borg's default)."""
    return Outcome(together([lambda c=c, i=i: c.create(repo, f"host{i}", src) for i, c in enumerate(clients)]))


def creates_and_a_check(clients: Sequence[Client], repo: Path, src: Path) -> Outcome:
    """All but the last client ``borg create`` into ``repo`` while the last runs ``borg check``, at once.

    borg 2 takes a shared lock for create and an exclusive one for check and compact
    (2.0.0b22 src/borg/archiver/create_cmd.py:43, check_cmd.py:16, compact_cmd.py:532): creates
    alone do not collide there, an exclusive command among them does.
    """
    jobs: list[Callable[[], Result]] = [
        lambda c=c, i=i: c.create(repo, f"host{i}", src) for i, c in enumerate(clients[:-1])
    ]
    last = clients[-1]
    jobs.append(lambda: last.run(["-r", last.url(repo), "check"] if last.rest else ["check", last.url(repo)]))
    return Outcome(together(jobs))


def serve_plainly(site: Site, clients: Sequence[Client], repo: Path) -> None:
    """Every client's key forces a plain ``borg serve --restrict-to-repository REPO``: no gate.

    rest:// needs ``--rest`` in the forced command: borg takes the serve mode from it, never
    from the client (2.0.0b22 src/borg/archiver/__init__.py:348-350).
    """
    lines = []
    for c in clients:
        serve = [c.borg, "serve", *(["--rest"] if c.rest else []), f"--restrict-to-repository={repo}"]
        lines.append(forced_line(c.key, serve))
    site.sshd.write_keys(USER, lines)


def serve_through_gate(site: Site, clients: Sequence[Client], repo: Path, **limits: object) -> None:
    """Every client's key runs the gate, confined to exactly ``repo``: the repository queue applies."""
    rest = any(c.rest for c in clients)
    b22 = {c.borg for c in clients if c.rest}
    site.write_config(
        limits={"max_sessions": 2 * len(clients), "max_sessions_per_client": 4, "wait": 600, **limits},
        borg__binaries={"borg22": {"path": b22.pop(), "version": B22}} if rest else {},
    )
    which = "--borg borg22 " if rest else ""
    site.sshd.write_keys(
        USER,
        [site.key_line(c.key, f"--client {c.key.name} {which}--restrict-to-repository {repo}") for c in clients],
    )
