"""Every borg client x server pair this platform has, through sshd and the gate, as a host serving several borgs.

Servers and clients: Debian's own borg and borg2 (1.2.4 and 2.0.0b5 on Debian 12, 1.4.0 and
2.0.0b19 on Debian 13) and the PyPI borgs tests/borgs/build makes here (1.4.5, 2.0.0b22, and
2.0.0b25 where OpenSSL >= 3.2, i.e. not on Debian 12), all named in one [borg.binaries]. The
pairs borg supports do a whole repository life; the pairs it does not support fail, and each
test says how (borg's own error, or the gate's refusal). OUTCOMES is the matrix the README shows.

How a client picks its server, as borg's source has it: ssh:// clients up to 2.0.0b21 send
``<--remote-path or BORG_REMOTE_PATH or "borg"> serve``; 2.0b22+ clients send ``<BORG_REMOTE_PATH
or "borg"> serve --rest --backend FILE:<path>`` (repository.rest_serve_command; b22 ignores
--remote-path, b23 removed it and --rsh) for a ``rest://`` URL (b22) or an ``ssh://`` one (b25,
where rest:// is gone and ssh:// is REST over ssh unless --from-borg1); their ssh comes from
BORGSTORE_RSH (b23+ copies BORG_RSH there when unset), which borgstore uses verbatim: the URL's
port must be in it (-p). The gate maps the last path component of that word to
[borg.binaries]; plain ``borg`` means the key's --borg, else [borg] default.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import platform_facts
from tests.borg_cli import Cli, borg_error
from tests.e2e import harness
from tests.e2e.harness import ClientKey, Result, Site

USER = "bgate-a"
CLIENT = "mx"
DEB1, DEB2 = platform_facts.debian_borg(), platform_facts.debian_borg2()
PYPI_NAMES = {"1.4.5": "borg-1.4", "2.0.0b22": "borg-2.0b22", "2.0.0b25": "borg-2.0b25"}
ALL_PYPI = tuple(PYPI_NAMES)


@pytest.fixture(scope="session")
def pypi_borgs() -> dict[str, str]:
    """The PyPI borgs this platform builds, built once per machine (a few minutes the first time)."""
    build = platform_facts.borg_build()
    return {version: str(build.ensure(version)) for version in build.buildable()}


@dataclass(frozen=True)
class Borg:
    """One borg, as client and as a server binary named in [borg.binaries]."""

    version: str
    name: str  # its name in [borg.binaries]
    path: str

    @property
    def cli(self) -> Cli:
        return Cli(self.version)


def borgs(pypi: Mapping[str, str]) -> dict[str, Borg]:
    out = {DEB1: Borg(DEB1, "borg", platform_facts.BORG1), DEB2: Borg(DEB2, "borg2", platform_facts.BORG2)}
    out.update({v: Borg(v, PYPI_NAMES[v], path) for v, path in pypi.items()})
    return out


def need(pypi: Mapping[str, str], *versions: str) -> None:
    """A platform fact, not a missing install step: the build said this platform cannot have it."""
    for version in versions:
        if version in ALL_PYPI and version not in pypi:
            platform_facts.lacks(version)
            raise AssertionError(f"borg {version} should build here but was not built")


def write_config(site: Site, servers: Mapping[str, Borg]) -> None:
    """Both ways of naming a binary: a bare path (version detected) and { path, version }.

    Names with a dot are quoted: bare, TOML would read ``borg-1.4`` as a table ``borg-1``.
    """
    site.write_config()
    lines = [site.config_path.read_text().split("[borg.binaries]")[0], "[borg.binaries]"]
    for borg in servers.values():
        bare = borg.cli.family == "1"
        spec = f'"{borg.path}"' if bare else f'{{ path = "{borg.path}", version = "{borg.version}" }}'
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
        return self.client.cli.url(f"{USER}@127.0.0.1:{self.site.sshd.port}", path)

    def borg(self, *args: str, cwd: Path | None = None) -> Result:
        env = dict(self.env)
        if self.client.cli.rest:
            ssh = ["ssh", *harness.ssh_options(self.key), "-p", str(self.site.sshd.port)]
            env["BORGSTORE_RSH"] = shlex.join(ssh)
        return self.site.borg([*self.remote_path, *args], self.key, borg=self.client.path, env=env, cwd=cwd)

    def run(self, argv: list[str], cwd: Path | None = None) -> Result:
        return self.borg(*argv, cwd=cwd)

    def init(self, repo: str) -> Result:
        return self.run(self.client.cli.init(repo))

    def create(self, repo: str, archive: str, src: Path) -> Result:
        return self.run(self.client.cli.create(repo, archive, str(src)))

    def names(self, repo: str) -> list[str]:
        return self.run(self.client.cli.names(repo)).check().stdout.split()

    def extract(self, repo: str, archive: str, into: Path) -> Result:
        into.mkdir()
        return self.run(self.client.cli.extract(repo, archive), cwd=into)

    def delete(self, repo: str, archive: str) -> Result:
        return self.run(self.client.cli.delete(repo, archive))

    def compact(self, repo: str) -> Result:
        return self.run(self.client.cli.compact(repo))


def session(site: Site, pypi: Mapping[str, str], client: str, key_options: str = "") -> Session:
    servers = borgs(pypi)
    write_config(site, servers)
    key = site.key(CLIENT)
    repos = site.repo_dir(CLIENT, owner=USER)
    site.authorize(USER, (key, f"--client {CLIENT} {key_options}".strip()))
    return Session(site, servers[client], key, repos)


def served_by(site: Site) -> set[str]:
    return {e["binary"] for e in site.events("session.started")}


# ---------------------------------------------------------------------------- the matrix

WORKS = "works"
CLOSED = "Connection closed by remote host. Is borg working on the server?"
TOO_OLD = "Borg server is too old for info. Required version 2.0.0a3"


def no_rest(server: str) -> str:
    name = {DEB1: "borg", DEB2: "borg2", **PYPI_NAMES}.get(server, "?")  # "?": a version this platform lacks
    return f"borg-gate: {name} (borg {server}) does not serve rest:// repositories"


# (client, server) -> WORKS or what the client shows; for every version either Debian has. Pairs
# whose versions this platform lacks are not run.
OUTCOMES: dict[tuple[str, str], str] = {
    # borg 1.x among themselves
    **{(c, s): WORKS for c in ("1.2.4", "1.4.0", "1.4.5") for s in ("1.2.4", "1.4.0", "1.4.5")},
    # Debian 12's borg2 2.0.0b5
    ("2.0.0b5", "2.0.0b5"): WORKS,
    ("1.2.4", "2.0.0b5"): "UnpackException: 32 exceeds max_bin_len(0)",  # borg 2 RPC, 1.x msgpack
    ("1.4.5", "2.0.0b5"): "TypeError: expected bytes, str found",  # b5's traceback, shown as "Borg server: …"
    ("2.0.0b5", "1.2.4"): TOO_OLD,
    ("2.0.0b5", "1.4.5"): TOO_OLD,
    ("2.0.0b5", "2.0.0b22"): CLOSED,
    # Debian 13's borg2 2.0.0b19: borg 2 repositories over ssh:// with the RPC protocol
    ("2.0.0b19", "2.0.0b19"): WORKS,
    ("1.4.0", "2.0.0b19"): CLOSED,
    ("1.4.5", "2.0.0b19"): CLOSED,
    ("2.0.0b19", "1.4.0"): "RPC method close is not valid",  # after b19's own error on the 1.x reply
    ("2.0.0b19", "1.4.5"): "RPC method close is not valid",
    **{("2.0.0b19", s): "This borg version only accepts version 3 repos" for s in ("2.0.0b22", "2.0.0b25")},
    # b22's ssh:// serve only serves legacy repositories to b22 itself; b25 likewise
    **{(c, s): CLOSED for c in ("1.2.4", "1.4.0", "1.4.5") for s in ("2.0.0b22", "2.0.0b25")},
    # rest:// clients: only a rest:// serve will do, the gate refuses the others
    **{(c, s): no_rest(s) for c in ("2.0.0b22", "2.0.0b25") for s in ("1.2.4", "1.4.0", "1.4.5", DEB2)},
    ("2.0.0b22", "2.0.0b22"): WORKS,
    ("2.0.0b22", "2.0.0b25"): WORKS,
    ("2.0.0b25", "2.0.0b25"): WORKS,
    ("2.0.0b25", "2.0.0b22"): "failed to persist the chunk index during close",  # at the second create
}


def pairs() -> list[tuple[str, str]]:
    here = [DEB1, DEB2, *ALL_PYPI]
    return [(c, s) for c in here for s in here]


# How each working pair reaches its server: every way once (plain borg, --remote-path, BORG_REMOTE_PATH, --borg)
HOW = {
    (DEB1, DEB1): "default",  # plain `borg serve` -> [borg] default
    (DEB1, "1.4.5"): "remote-path",  # --remote-path /usr/local/bin/borg-1.4: the name counts, not the path
    ("1.4.5", DEB1): "env",  # BORG_REMOTE_PATH=borg
    (DEB2, DEB2): "remote-path",  # --remote-path borg2 (gone from the client in b23)
}


@pytest.mark.parametrize(("client", "server"), pairs(), ids=[f"{c}-to-{s}" for c, s in pairs()])
def test_pair(site: Site, pypi_borgs: dict[str, str], tmp_path: Path, client: str, server: str) -> None:
    need(pypi_borgs, client, server)
    target = borgs(pypi_borgs)[server]
    rest = Cli(client).rest
    how = HOW.get((client, server), "env" if rest else "key")
    s = session(site, pypi_borgs, client, key_options=f"--borg {target.name}" if how == "key" else "")
    if how == "remote-path":
        path = f"/usr/local/bin/{target.name}" if s.client.cli.family == "1" else target.name
        s.remote_path = ["--remote-path", path]
    elif how == "env":
        s.env["BORG_REMOTE_PATH"] = target.name
    expected = OUTCOMES.get((client, server))
    if expected != WORKS:
        src = harness.make_tree(tmp_path / "src")
        steps = [
            lambda: s.init(s.url("r")),
            lambda: s.create(s.url("r"), "a1", src),
            lambda: s.create(s.url("r"), "a2", src),
        ]
        for step in steps:  # the first step that fails: some pairs fail only once there is data to move
            result = step()
            if result.returncode != 0:
                break
        assert expected is not None, f"pair not in OUTCOMES; the client showed: {result.stderr[:2000]}"
        assert borg_error(result.returncode), result
        assert expected in result.stderr, result.stderr
        if expected.startswith("borg-gate: "):
            assert "stdio server exited with code 211" in result.stderr  # rest clients show the gate's exit code
            assert [e["exit_code"] for e in site.events("connection.refused")] == [211]
        else:
            assert served_by(site) == {target.path}  # the gate served it; the two borgs did not agree
        return

    src = harness.make_tree(tmp_path / "src")
    repo = s.url("main")
    s.init(repo).check()
    s.create(repo, "a1", src).check()
    s.create(repo, "a2", src).check()
    assert s.names(repo) == ["a1", "a2"]
    s.extract(repo, "a1", tmp_path / "out").check()
    assert harness.tree_digest(tmp_path / "out" / src.relative_to("/")) == harness.tree_digest(src)
    s.run(s.client.cli.check(repo)).check()
    s.run(s.client.cli.prune_keep_last(repo, 1)).check()
    left = ["a1", "a2"] if s.client.cli.prunes_per_series() else ["a2"]
    assert s.names(repo) == left
    for archive in left:
        s.delete(repo, archive).check()
    if not s.client.cli.compacts_by_itself():
        s.compact(repo).check()
    assert s.names(repo) == []

    assert served_by(site) == {target.path}  # every connection went to the chosen binary
    assert not site.events("connection.refused")


@pytest.mark.parametrize("client", ["2.0.0b22"])
def test_rest_client_over_ssh_is_refused_by_the_client_itself(
    site: Site, pypi_borgs: dict[str, str], client: str
) -> None:
    """2.0.0b22 reaches borg 2 repositories with rest:// only (b25 went back to ssh://, as REST over ssh)."""
    need(pypi_borgs, client)
    s = session(site, pypi_borgs, client, key_options=f"--borg {PYPI_NAMES[client]}")
    ssh_url = f"ssh://{USER}@127.0.0.1:{site.sshd.port}{s.repos / 'r'}"
    result = s.run(s.client.cli.init(ssh_url))
    assert borg_error(result.returncode), result
    assert "ssh:// is no longer supported for current repositories; use rest:// instead" in result.stderr
    assert not site.events()  # it never connected


def test_borg22_rest_client_ignores_remote_path(site: Site, pypi_borgs: dict[str, str]) -> None:
    """rest:// sends BORG_REMOTE_PATH or plain borg: --remote-path borg-2.0b22 reaches [borg] default."""
    s = session(site, pypi_borgs, "2.0.0b22")
    s.remote_path = ["--remote-path", "borg-2.0b22"]
    result = s.init(s.url("r"))
    assert borg_error(result.returncode), result
    assert no_rest(DEB1) in result.stderr
    assert [e["command"] for e in site.events("connection.refused")] == [
        f"borg serve --rest --backend FILE:{s.repos / 'r'}"
    ]


def test_borg25_client_has_no_remote_path_or_rsh(site: Site, pypi_borgs: dict[str, str]) -> None:
    """b23 removed the client's --remote-path and --rsh: only BORG_REMOTE_PATH and BORG_RSH/BORGSTORE_RSH remain."""
    need(pypi_borgs, "2.0.0b25")
    s = session(site, pypi_borgs, "2.0.0b25")
    for option in (["--remote-path", "borg-2.0b25"], ["--rsh", "ssh"]):
        s.remote_path = option
        result = s.init(s.url("r"))
        assert borg_error(result.returncode) and "error: " in result.stderr, result.stderr  # argparse's, before any ssh
    assert not site.events()


def test_borg25_client_takes_borg_rsh_when_borgstore_rsh_is_unset(site: Site, pypi_borgs: dict[str, str]) -> None:
    """b23+ hands BORG_RSH to borgstore (repository.propagate_rsh): a plain BORG_RSH reaches the gate."""
    need(pypi_borgs, "2.0.0b25")
    s = session(site, pypi_borgs, "2.0.0b25", key_options="--borg borg-2.0b25")
    rsh = shlex.join(["ssh", *harness.ssh_options(s.key), "-p", str(site.sshd.port)])
    result = site.borg(s.client.cli.init(s.url("r")), s.key, borg=s.client.path, env={"BORG_RSH": rsh})
    result.check()
    assert served_by(site) == {s.client.path}


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


@pytest.mark.parametrize("version", ["2.0.0b22", "2.0.0b25"])
def test_no_delete_key_on_rest_refuses_deleting(
    site: Site, pypi_borgs: dict[str, str], tmp_path: Path, version: str
) -> None:
    """2.0b22+ --permissions=no-delete: backups go in, nothing comes out; repo-create needs another key."""
    need(pypi_borgs, version)
    name = PYPI_NAMES[version]
    s = session(site, pypi_borgs, version, key_options=f"--borg {name} --append-only")
    admin = Session(site, s.client, site.key("admin"), s.repos)
    site.authorize(
        USER,
        (s.key, f"--client {CLIENT} --borg {name} --append-only"),
        (admin.key, f"--client {CLIENT} --borg {name}"),
    )
    src = harness.make_tree(tmp_path / "src")
    repo = s.url("main")
    refused = s.init(repo)
    assert borg_error(refused.returncode), refused
    denied = "PermissionDenied: backend" if version == "2.0.0b22" else "via borg serve on the remote host: backend"
    assert denied in refused.stderr
    admin.init(repo).check()
    s.create(repo, "a1", src).check()
    s.create(repo, "a2", src).check()
    deleted = s.delete(repo, "a1")
    assert borg_error(deleted.returncode), deleted
    assert "PermissionDenied" in deleted.stderr
    assert s.names(repo) == ["a1", "a2"]
    started = site.events("session.started")
    assert {"--permissions=no-delete" in e["argv"] for e in started} == {True, False}  # both keys were used
    assert all("--permissions=no-delete" in e["argv"] for e in started if e["key"] == fingerprint(s.key))
    assert all("--permissions=all" in e["argv"] for e in started if e["key"] == fingerprint(admin.key))


def test_append_only_key_on_debians_borg2(site: Site, pypi_borgs: dict[str, str], tmp_path: Path) -> None:
    """What Debian's borg2 can enforce: 2.0.0b5 (b1-b9) has --append-only; 2.0.0b19 (b18-b21) cannot.

    b19's serve takes --permissions but applies it only when the client opens a borg 2
    repository (remote.py ``if not v1_or_v2``): a client opening a borg 1.x repository under the
    confinement could delete. So the gate refuses such a key there, saying why.
    """
    s = session(site, pypi_borgs, DEB2, key_options="--borg borg2 --append-only")
    result = s.init(s.url("main"))
    if s.client.cli.family == "2-rcreate":
        result.check()
        assert all("--append-only" in e["argv"] for e in site.events("session.started"))
        return
    assert borg_error(result.returncode), result
    assert (
        f"borg-gate: this key is no-delete, which borg2 (borg {DEB2}) cannot enforce: its --permissions"
        " skips borg 1.x repositories" in result.stderr
    )
    assert [e["exit_code"] for e in site.events("connection.refused")] == [211]


def fingerprint(key: ClientKey) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(key.private)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


# ---------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("client", ["1.4.5", DEB2])
def test_outside_confinement_refused_by_borg(site: Site, pypi_borgs: dict[str, str], client: str) -> None:
    s = session(site, pypi_borgs, client, key_options=f"--borg {borgs(pypi_borgs)[client].name}")
    outside = site.repo_dir("other", owner=USER) / "r"
    result = s.init(s.url(outside))
    assert borg_error(result.returncode), result
    assert f"Repository path not allowed: {outside}" in result.stderr
    assert not outside.exists()


@pytest.mark.parametrize("version", ["2.0.0b22", "2.0.0b25"])
def test_rest_path_outside_confinement_refused_by_gate(site: Site, pypi_borgs: dict[str, str], version: str) -> None:
    need(pypi_borgs, version)
    s = session(site, pypi_borgs, version, key_options=f"--borg {PYPI_NAMES[version]}")
    other = site.repo_dir("other", owner=USER)
    (s.repos / "link").symlink_to(other)
    for path in (other / "r", s.repos / ".." / "other" / "r2", s.repos / "link" / "r3"):
        result = s.init(s.url(path))
        assert borg_error(result.returncode), result
        assert "stdio server exited with code 211" in result.stderr
        assert f"borg-gate: repository path not allowed: {Path(path).resolve()}" in result.stderr
    assert list(other.iterdir()) == []
    assert not site.events("session.started")  # refused before borg ran, before taking a slot


# ---------------------------------------------------------------------------- binaries the host lacks


@pytest.mark.parametrize("client", [DEB1, DEB2, "2.0.0b22"])
def test_unknown_binary_refused_naming_the_hosts(site: Site, pypi_borgs: dict[str, str], client: str) -> None:
    s = session(site, pypi_borgs, client)
    s.env["BORG_REMOTE_PATH"] = "borg-1.1"
    result = s.init(s.url("r"))
    assert borg_error(result.returncode), result
    offers = ", ".join(sorted(b.name for b in borgs(pypi_borgs).values()))
    assert f"borg-gate: this server has no 'borg-1.1'; it offers: {offers}" in result.stderr
    assert [e["exit_code"] for e in site.events("connection.refused")] == [211]


@pytest.mark.parametrize("version", ["2.0.0b22"])  # b25 has no unencrypted mode to take a 1.x "none" key to
def test_borg1_repository_transfers_to_rest(
    site: Site, pypi_borgs: dict[str, str], tmp_path: Path, version: str
) -> None:
    """borg's migration path: a 2.0b22+ client holds rest:// (new) and legacy ssh:// (old) at once.

    Both go to its own serve (BORG_REMOTE_PATH): ``--rest`` for the new repository, legacy
    mode reading the borg 1.x one. Since 2.0b22 the "/" after ssh://host is a separator, so an
    absolute path needs "//", as for rest://.
    """
    need(pypi_borgs, version)
    name = PYPI_NAMES[version]
    old = session(site, pypi_borgs, DEB1)
    src = harness.make_tree(tmp_path / "src")
    old.init(old.url("v1")).check()
    old.create(old.url("v1"), "from-1", src).check()

    new = Session(site, borgs(pypi_borgs)[version], old.key, old.repos, env={"BORG_REMOTE_PATH": name})
    legacy = f"ssh://{USER}@127.0.0.1:{site.sshd.port}/{old.repos / 'v1'}"  # "//abs": b13+ parsing
    repo = new.url("v2")
    new.run([*new.client.cli.init(repo), "--other-repo", legacy, "--from-borg1"]).check()
    new.borg("-r", repo, "transfer", "--other-repo", legacy, "--from-borg1").check()
    assert new.names(repo) == ["from-1"]
    new.extract(repo, "from-1", tmp_path / "out").check()
    assert harness.tree_digest(tmp_path / "out" / src.relative_to("/")) == harness.tree_digest(src)
    started = site.events("session.started")
    commands = {e["command"].split(" --backend")[0] for e in started if e["binary"] == new.client.path}
    assert commands == {f"{name} serve", f"{name} serve --rest"}
