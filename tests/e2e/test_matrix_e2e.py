"""Issue 5: every borg client x server pair, through sshd and the gate, as a host serving several borgs.

Servers: Debian's borg 1.2.4 and borg2 2.0.0b5, and borg 1.4.5 and 2.0.0b22 built from PyPI
(tests/borgs/build, cached in /var/cache/borg-gate-tests), all named in one [borg.binaries].
Clients: the same four. The pairs borg supports do a whole repository life; the pairs it
does not support fail, and each test says how (borg's own error, or the gate's refusal).

How a client picks its server, as borg's source has it (tags 1.2.4 .. 2.0.0b22): ssh://
clients send ``<--remote-path or BORG_REMOTE_PATH or "borg"> serve``; a 2.0b22 rest:// client
sends ``<BORG_REMOTE_PATH or "borg"> serve --rest --backend FILE:<path>`` and ignores
--remote-path (repository.rest_serve_command), and its ssh comes from BORGSTORE_RSH, which
borgstore 0.5 uses verbatim: the URL's port must be in it (-p). The gate maps the last path
component of that word to [borg.binaries]; plain ``borg`` means the key's --borg, else
[borg] default.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e import harness
from tests.e2e.harness import ClientKey, Result, Site

BUILD = harness.REPO_ROOT / "tests" / "borgs" / "build"
USER = "bgate-a"
CLIENT = "mx"


@pytest.fixture(scope="session")
def pypi_borgs() -> dict[str, str]:
    """borg 1.4.5 and 2.0.0b22 from PyPI, built once per machine (a few minutes the first time)."""
    out = subprocess.run([harness.SYSTEM_PYTHON, str(BUILD)], capture_output=True, text=True, check=True)
    return dict(line.split() for line in out.stdout.splitlines())


@dataclass(frozen=True)
class Borg:
    """One borg, as client and as a server binary named in [borg.binaries]."""

    version: str
    name: str  # its name in [borg.binaries]
    path: str

    @property
    def family(self) -> str:
        return "1" if self.version.startswith("1.") else self.version  # "1", "2.0.0b5", "2.0.0b22"


def borgs(pypi: Mapping[str, str]) -> dict[str, Borg]:
    return {
        "1.2.4": Borg("1.2.4", "borg", harness.BORG1),
        "1.4.5": Borg("1.4.5", "borg-1.4", pypi["1.4.5"]),
        "2.0.0b5": Borg("2.0.0b5", "borg2", harness.BORG2),
        "2.0.0b22": Borg("2.0.0b22", "borg-2.0b22", pypi["2.0.0b22"]),
    }


def write_config(site: Site, servers: Mapping[str, Borg]) -> None:
    """Both ways of naming a binary: a bare path (version detected) and { path, version }.

    Names with a dot are quoted: bare, TOML would read ``borg-1.4`` as a table ``borg-1``.
    """
    site.write_config()
    lines = [site.config_path.read_text().split("[borg.binaries]")[0], "[borg.binaries]"]
    for borg in servers.values():
        spec = f'"{borg.path}"' if borg.family == "1" else f'{{ path = "{borg.path}", version = "{borg.version}" }}'
        lines.append(f'"{borg.name}" = {spec}')
    site.write_config("\n".join(lines) + "\n")


@dataclass
class Session:
    """One client borg talking to the site as ``USER`` with one key."""

    site: Site
    client: Borg
    key: ClientKey
    repos: Path
    env: dict[str, str] = field(default_factory=dict)
    remote_path: list[str] = field(default_factory=list)  # ["--remote-path", NAME] or []

    def url(self, name: str | Path) -> str:
        path = name if isinstance(name, Path) else self.repos / name
        port = self.site.sshd.port
        if self.client.family == "2.0.0b22":
            return f"rest://{USER}@127.0.0.1:{port}/{path}"  # "//abs/path": absolute
        return f"ssh://{USER}@127.0.0.1:{port}{path}"

    def borg(self, *args: str, cwd: Path | None = None) -> Result:
        env = dict(self.env)
        if self.client.family == "2.0.0b22":
            ssh = ["ssh", *harness.ssh_options(self.key), "-p", str(self.site.sshd.port)]
            env["BORGSTORE_RSH"] = shlex.join(ssh)
        return self.site.borg([*self.remote_path, *args], self.key, borg=self.client.path, env=env, cwd=cwd)

    # The same operations in each client family's words.
    def init(self, repo: str) -> Result:
        verb = {"1": ["init"], "2.0.0b5": ["rcreate"], "2.0.0b22": ["repo-create"]}[self.client.family]
        return self._run(repo, [*verb, "--encryption=none"])

    def create(self, repo: str, archive: str, src: Path) -> Result:
        return self._run(repo, ["create"], archive, [str(src)])

    def names(self, repo: str) -> list[str]:
        verb = {
            "1": ["list", "--short"],
            "2.0.0b5": ["rlist", "--short"],
            "2.0.0b22": ["repo-list", "--format={archive}{NL}"],  # its --short lists archive ids
        }[self.client.family]
        return self._run(repo, verb).check().stdout.split()

    def extract(self, repo: str, archive: str, into: Path) -> Result:
        into.mkdir()
        return self._run(repo, ["extract"], archive, cwd=into)

    def check(self, repo: str) -> Result:
        return self._run(repo, ["check"])

    def prune_keep_last(self, repo: str, n: int) -> Result:
        keep = "--keep" if self.client.family == "2.0.0b22" else "--keep-last"
        return self._run(repo, ["prune", f"{keep}={n}"])

    def delete(self, repo: str, archive: str) -> Result:
        if self.client.family == "2.0.0b5":
            return self._run(repo, ["delete", "-a", archive])
        return self._run(repo, ["delete"], archive)

    def compact(self, repo: str) -> Result:
        return self._run(repo, ["compact"])

    def _run(
        self,
        repo: str,
        verb: list[str],
        archive: str | None = None,
        rest: list[str] | None = None,
        *,
        cwd: Path | None = None,
    ) -> Result:
        if self.client.family == "1":
            target = f"{repo}::{archive}" if archive else repo
            return self.borg(*verb, target, *(rest or []), cwd=cwd)
        return self.borg("-r", repo, *verb, *([archive] if archive else []), *(rest or []), cwd=cwd)


def session(site: Site, pypi: Mapping[str, str], client: str, key_options: str = "") -> Session:
    servers = borgs(pypi)
    write_config(site, servers)
    key = site.key(CLIENT)
    repos = site.repo_dir(CLIENT, owner=USER)
    site.authorize(USER, (key, f"--client {CLIENT} {key_options}".strip()))
    return Session(site, servers[client], key, repos)


def served_by(site: Site) -> set[str]:
    return {e["binary"] for e in site.events("session.started")}


# ---------------------------------------------------------------------------- pairs borg supports

# (client, server, how the client reaches that server)
SUPPORTED = [
    ("1.2.4", "1.2.4", "default"),  # plain `borg serve` -> [borg] default
    ("1.2.4", "1.4.5", "remote-path"),  # --remote-path /usr/local/bin/borg-1.4: the name counts, not the path
    ("1.4.5", "1.2.4", "env"),  # BORG_REMOTE_PATH=borg
    ("1.4.5", "1.4.5", "key"),  # the key line's --borg borg-1.4
    ("2.0.0b5", "2.0.0b5", "remote-path"),  # --remote-path borg2
    ("2.0.0b22", "2.0.0b22", "env"),  # rest://: only BORG_REMOTE_PATH counts
]


@pytest.mark.parametrize(("client", "server", "how"), SUPPORTED, ids=[f"{c}-to-{s}-{h}" for c, s, h in SUPPORTED])
def test_supported(site: Site, pypi_borgs: dict[str, str], tmp_path: Path, client: str, server: str, how: str) -> None:
    target = borgs(pypi_borgs)[server]
    s = session(site, pypi_borgs, client, key_options=f"--borg {target.name}" if how == "key" else "")
    if how == "remote-path":
        s.remote_path = ["--remote-path", f"/usr/local/bin/{target.name}" if s.client.family == "1" else target.name]
    elif how == "env":
        s.env["BORG_REMOTE_PATH"] = target.name
    src = harness.make_tree(tmp_path / "src")
    repo = s.url("main")

    s.init(repo).check()
    s.create(repo, "a1", src).check()
    s.create(repo, "a2", src).check()
    assert s.names(repo) == ["a1", "a2"]
    s.extract(repo, "a1", tmp_path / "out").check()
    assert harness.tree_digest(tmp_path / "out" / src.relative_to("/")) == harness.tree_digest(src)
    s.check(repo).check()
    s.prune_keep_last(repo, 1).check()
    assert s.names(repo) == ["a2"]
    s.delete(repo, "a2").check()
    if s.client.family != "2.0.0b5":  # b5 compacts by itself
        s.compact(repo).check()
    assert s.names(repo) == []

    assert served_by(site) == {target.path}  # every connection went to the chosen binary
    assert not site.events("connection.refused")


# ---------------------------------------------------------------------------- pairs borg does not support

# (client, server, what the client shows): borg's own incompatibility, or the gate's refusal
UNSUPPORTED = [
    ("1.2.4", "2.0.0b5", "UnpackException: 32 exceeds max_bin_len(0)"),  # borg 2 RPC, 1.x msgpack
    ("1.4.5", "2.0.0b5", "TypeError: expected bytes, str found"),  # b5's traceback, shown as "Borg server: …"
    ("1.2.4", "2.0.0b22", "Connection closed by remote host. Is borg working on the server?"),  # b22 legacy serve
    ("1.4.5", "2.0.0b22", "Connection closed by remote host. Is borg working on the server?"),
    ("2.0.0b5", "1.2.4", "Borg server is too old for info. Required version 2.0.0a3"),
    ("2.0.0b5", "1.4.5", "Borg server is too old for info. Required version 2.0.0a3"),
    ("2.0.0b5", "2.0.0b22", "Connection closed by remote host. Is borg working on the server?"),
    ("2.0.0b22", "1.2.4", "borg-gate: borg (borg 1.2.4) does not serve rest:// repositories"),
    ("2.0.0b22", "1.4.5", "borg-gate: borg-1.4 (borg 1.4.5) does not serve rest:// repositories"),
    ("2.0.0b22", "2.0.0b5", "borg-gate: borg2 (borg 2.0.0b5) does not serve rest:// repositories"),
]


@pytest.mark.parametrize(("client", "server", "shown"), UNSUPPORTED, ids=[f"{c}-to-{s}" for c, s, _ in UNSUPPORTED])
def test_unsupported(site: Site, pypi_borgs: dict[str, str], client: str, server: str, shown: str) -> None:
    target = borgs(pypi_borgs)[server]
    s = session(site, pypi_borgs, client, key_options=f"--borg {target.name}")
    result = s.init(s.url("r"))
    assert result.returncode == 2, result
    assert shown in result.stderr, result.stderr
    if s.client.family == "2.0.0b22":
        assert "stdio server exited with code 211" in result.stderr  # rest clients show the gate's exit code
        assert [e["exit_code"] for e in site.events("connection.refused")] == [211]
    else:
        assert served_by(site) == {target.path}  # the gate served it; the two borgs did not agree


def test_borg22_client_over_ssh_is_refused_by_the_client_itself(site: Site, pypi_borgs: dict[str, str]) -> None:
    s = session(site, pypi_borgs, "2.0.0b22", key_options="--borg borg-2.0b22")
    ssh_url = f"ssh://{USER}@127.0.0.1:{site.sshd.port}{s.repos / 'r'}"
    result = s.borg("-r", ssh_url, "repo-create", "--encryption=none")
    assert result.returncode == 2
    assert "ssh:// is no longer supported for current repositories; use rest:// instead" in result.stderr
    assert not site.events()  # it never connected


def test_borg22_rest_client_ignores_remote_path(site: Site, pypi_borgs: dict[str, str]) -> None:
    """rest:// sends BORG_REMOTE_PATH or plain borg: --remote-path borg-2.0b22 reaches [borg] default."""
    s = session(site, pypi_borgs, "2.0.0b22")
    s.remote_path = ["--remote-path", "borg-2.0b22"]
    result = s.init(s.url("r"))
    assert result.returncode == 2
    assert "borg-gate: borg (borg 1.2.4) does not serve rest:// repositories" in result.stderr
    assert [e["command"] for e in site.events("connection.refused")] == [
        f"borg serve --rest --backend FILE:{s.repos / 'r'}"
    ]


# ---------------------------------------------------------------------------- keys that may not delete


def test_append_only_key_on_borg1_keeps_deletions_recoverable(
    site: Site, pypi_borgs: dict[str, str], tmp_path: Path
) -> None:
    """borg 1.x --append-only: delete "succeeds", but the data stays until rolled back (borg's docs)."""
    s = session(site, pypi_borgs, "1.4.5", key_options="--borg borg-1.4 --append-only")
    src = harness.make_tree(tmp_path / "src")
    repo = s.url("main")
    s.init(repo).check()
    s.create(repo, "a1", src).check()
    s.create(repo, "a2", src).check()
    before_delete = last_transaction(s.repos / "main")

    s.delete(repo, "a1").check()
    s.compact(repo).check()  # compaction is a no-op in append-only mode
    assert s.names(repo) == ["a2"]
    assert all("--append-only" in e["argv"] for e in site.events("session.started"))

    # The sysadmin's rollback, as borg documents it: drop what came after the good transaction.
    roll_back(s.repos / "main", before_delete)
    local = subprocess.run(
        [s.client.path, "list", "--short", str(s.repos / "main")],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "BORG_BASE_DIR": str(tmp_path / "base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        },
    )
    assert local.stdout.split() == ["a1", "a2"]


def last_transaction(repo: Path) -> int:
    return int((repo / "transactions").read_text().splitlines()[-1].split(",")[0].split()[1])


def roll_back(repo: Path, transaction: int) -> None:
    for pattern in ("hints.*", "index.*", "integrity.*"):
        for path in repo.glob(pattern):
            path.unlink()
    for segment in (repo / "data").glob("*/*"):
        if segment.name.isdigit() and int(segment.name) > transaction:
            segment.unlink()


def test_no_delete_key_on_borg22_rest_refuses_deleting(site: Site, pypi_borgs: dict[str, str], tmp_path: Path) -> None:
    """2.0b22 --permissions=no-delete: backups go in, nothing comes out; repo-create needs another key."""
    s = session(site, pypi_borgs, "2.0.0b22", key_options="--borg borg-2.0b22 --append-only")
    admin = Session(site, s.client, site.key("admin"), s.repos)
    site.authorize(
        USER,
        (s.key, f"--client {CLIENT} --borg borg-2.0b22 --append-only"),
        (admin.key, f"--client {CLIENT} --borg borg-2.0b22"),
    )
    src = harness.make_tree(tmp_path / "src")
    repo = s.url("main")
    refused = s.init(repo)
    assert refused.returncode == 2
    assert "PermissionDenied: backend" in refused.stderr
    admin.init(repo).check()
    s.create(repo, "a1", src).check()
    s.create(repo, "a2", src).check()
    deleted = s.delete(repo, "a1")
    assert deleted.returncode == 2
    assert "PermissionDenied" in deleted.stderr
    assert s.names(repo) == ["a1", "a2"]
    started = site.events("session.started")
    assert {"--permissions=no-delete" in e["argv"] for e in started} == {True, False}  # both keys were used
    assert all("--permissions=no-delete" in e["argv"] for e in started if e["key"] == fingerprint(s.key))


def fingerprint(key: ClientKey) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(key.private)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


# ---------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("client", ["1.4.5", "2.0.0b5"])
def test_outside_confinement_refused_by_borg(site: Site, pypi_borgs: dict[str, str], client: str) -> None:
    s = session(site, pypi_borgs, client, key_options=f"--borg {borgs(pypi_borgs)[client].name}")
    outside = site.repo_dir("other", owner=USER) / "r"
    result = s.init(s.url(outside))
    assert result.returncode == 2
    assert f"Repository path not allowed: {outside}" in result.stderr
    assert not outside.exists()


def test_rest_path_outside_confinement_refused_by_gate(site: Site, pypi_borgs: dict[str, str], tmp_path: Path) -> None:
    s = session(site, pypi_borgs, "2.0.0b22", key_options="--borg borg-2.0b22")
    other = site.repo_dir("other", owner=USER)
    (s.repos / "link").symlink_to(other)
    for path in (other / "r", s.repos / ".." / "other" / "r2", s.repos / "link" / "r3"):
        result = s.init(s.url(path))
        assert result.returncode == 2
        assert "stdio server exited with code 211" in result.stderr
        assert f"borg-gate: repository path not allowed: {Path(path).resolve()}" in result.stderr
    assert list(other.iterdir()) == []
    assert not site.events("session.started")  # refused before borg ran, before taking a slot


# ---------------------------------------------------------------------------- binaries the host lacks


@pytest.mark.parametrize("client", ["1.2.4", "2.0.0b5", "2.0.0b22"])
def test_unknown_binary_refused_naming_the_hosts(site: Site, pypi_borgs: dict[str, str], client: str) -> None:
    s = session(site, pypi_borgs, client)
    s.env["BORG_REMOTE_PATH"] = "borg-1.1"
    result = s.init(s.url("r"))
    assert result.returncode == 2
    assert "borg-gate: this server has no 'borg-1.1'; it offers: borg, borg-1.4, borg-2.0b22, borg2" in result.stderr
    assert [e["exit_code"] for e in site.events("connection.refused")] == [211]


def test_borg1_repository_transfers_to_borg22(site: Site, pypi_borgs: dict[str, str], tmp_path: Path) -> None:
    """borg's migration path: a 2.0b22 client holds rest:// (new) and legacy ssh:// (old) at once.

    Both go to 2.0b22's serve (BORG_REMOTE_PATH): ``--rest`` for the new repository, legacy
    mode reading the borg 1.x one. In 2.0b22 the "/" after ssh://host is a separator, so an
    absolute path needs "//", as for rest://.
    """
    old = session(site, pypi_borgs, "1.2.4")
    src = harness.make_tree(tmp_path / "src")
    old.init(old.url("v1")).check()
    old.create(old.url("v1"), "from-1.2", src).check()

    new = Session(site, borgs(pypi_borgs)["2.0.0b22"], old.key, old.repos, env={"BORG_REMOTE_PATH": "borg-2.0b22"})
    legacy = f"ssh://{USER}@127.0.0.1:{site.sshd.port}/{old.repos / 'v1'}"
    repo = new.url("v2")
    new.borg("-r", repo, "repo-create", "--encryption=none", "--other-repo", legacy, "--from-borg1").check()
    new.borg("-r", repo, "transfer", "--other-repo", legacy, "--from-borg1").check()
    assert new.names(repo) == ["from-1.2"]
    new.extract(repo, "from-1.2", tmp_path / "out").check()
    assert harness.tree_digest(tmp_path / "out" / src.relative_to("/")) == harness.tree_digest(src)
    started = site.events("session.started")
    commands = {e["command"].split(" --backend")[0] for e in started if e["binary"] == new.client.path}
    assert commands == {"borg-2.0b22 serve", "borg-2.0b22 serve --rest"}
