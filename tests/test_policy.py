"""Policy: the exact borg serve argv, checked against the target borg's real parser.

Tables pin the translation per borg version (permissions, quota, rest); the property
builds random key lines, configs and client commands, and checks every accepted argv
with the real argument parser of Debian's borg and borg2 and the PyPI borgs built here
(1.4.5, 2.0.0b22, and 2.0.0b25 where OpenSSL allows): it must parse
as ``serve``, with exactly the key's confinement, permission and quota, the binary from
the config, and from the client nothing but its vetted log options (and, in rest mode,
its backend). An independent oracle says what should be accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from borg_gate.base.config import BinarySpec, Config, parse_config
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import policy
from borg_gate.conn.command import ClientRequest, parse_command
from borg_gate.conn.keyopts import PERMISSIONS, KeyOptions, Permission, parse_key_options
from borg_gate.conn.versions import Borg, BorgVersion
from tests import platform_facts
from tests.recorder.grammar import VERSIONS, Grammar


def borg(version: str, name: str = "borg") -> Borg:
    return Borg(BinarySpec(name, f"/opt/{name}/bin/borg", version), BorgVersion.parse(version))


def refusal_kind(fn: Any, *args: Any) -> Kind | None:
    try:
        fn(*args)
    except Refusal as refusal:
        return refusal.kind
    return None


# --------------------------------------------------------------------------- permissions per version

NO = Kind.NOT_ALLOWED
# version, rest, permission -> options, or the refusal kind
PERMISSION_TABLE = [
    # borg 1.x and 2.0b1-b9: only "no delete" exists, spelled --append-only
    ("1.1.18", False, Permission.NO_DELETE, ["--append-only"]),
    ("1.2.4", False, Permission.NO_DELETE, ["--append-only"]),
    ("1.4.5", False, Permission.NO_DELETE, ["--append-only"]),
    ("1.2.4", False, Permission.WRITE_ONLY, NO),
    ("1.2.4", False, Permission.READ_ONLY, NO),
    ("2.0.0b5", False, Permission.NO_DELETE, ["--append-only"]),
    ("2.0.0b5", False, Permission.READ_ONLY, NO),
    ("2.0.0b9", False, Permission.NO_DELETE, ["--append-only"]),
    # 2.0b10-b15: serve rejects --append-only ("not supported (yet?)"); b16-b17: restrict options only
    ("2.0.0b10", False, Permission.NO_DELETE, NO),
    ("2.0.0b15", False, Permission.NO_DELETE, NO),
    ("2.0.0b16", False, Permission.NO_DELETE, NO),
    ("2.0.0b17", False, Permission.NO_DELETE, NO),
    ("2.0.0b17", False, Permission.READ_ONLY, NO),
    # 2.0b18-b21: --permissions binds only the repositories the client opens as borg 2, so refuse
    ("2.0.0b18", False, Permission.NO_DELETE, NO),
    ("2.0.0b18", False, Permission.WRITE_ONLY, NO),
    ("2.0.0b21", False, Permission.READ_ONLY, NO),
    # 2.0b22+: --permissions only applies to rest mode; legacy serve ignores it, so refuse there
    ("2.0.0b22", True, Permission.NO_DELETE, ["--permissions=no-delete"]),
    ("2.0.0b22", True, Permission.READ_ONLY, ["--permissions=read-only"]),
    ("2.0.0b22", False, Permission.NO_DELETE, NO),
    ("2.0.0b22", False, Permission.WRITE_ONLY, NO),
    ("2.0.0rc1", True, Permission.WRITE_ONLY, ["--permissions=write-only"]),
    ("2.0.0", False, Permission.NO_DELETE, NO),
]


@pytest.mark.parametrize(("version", "rest", "permission", "expected"), PERMISSION_TABLE)
def test_permission_translation(version: str, rest: bool, permission: Permission, expected: Any) -> None:
    target = borg(version)
    if isinstance(expected, Kind):
        with pytest.raises(Refusal) as info:
            policy.permission_options(permission, target, rest)
        assert info.value.kind is expected
        assert permission.value in info.value.reason and version in info.value.reason
    else:
        assert policy.permission_options(permission, target, rest) == expected


@pytest.mark.parametrize("version", ["1.2.4", "2.0.0b5", "2.0.0b18", "2.0.0b22"])
@pytest.mark.parametrize("rest", [False, True])
def test_permission_all_adds_nothing_but_is_stated_to_rest_serve(version: str, rest: bool) -> None:
    """serve --rest without --permissions would take BORG_REPO_PERMISSIONS: the gate always says it."""
    stated = ["--permissions=all"] if rest and version == "2.0.0b22" else []
    assert policy.permission_options(Permission.ALL, borg(version), rest) == stated


@pytest.mark.parametrize(
    ("version", "allowed"),
    [
        *[(v, True) for v in ("1.1.18", "1.2.4", "1.4.5", "2.0.0b5", "2.0.0b9")],
        *[(v, False) for v in ("2.0.0b10", "2.0.0b15", "2.0.0b16", "2.0.0b18", "2.0.0b22", "2.0.0")],
    ],
)
def test_quota_only_where_supported(version: str, allowed: bool) -> None:
    assert policy.quota_options(None, borg(version)) == []
    if allowed:
        assert policy.quota_options(500 * 10**9, borg(version)) == ["--storage-quota=500000000000"]
    else:
        assert refusal_kind(policy.quota_options, 500 * 10**9, borg(version)) is Kind.NOT_ALLOWED


@pytest.mark.parametrize("version", ["1.2.4", "2.0.0b5", "2.0.0b21"])
def test_rest_refused_by_a_borg_without_it(version: str) -> None:
    request = parse_command("borg serve --rest --backend FILE:/srv/borg/alice/repo")
    where = policy.Confinement(("/srv/borg/alice",))
    assert refusal_kind(policy.serve_argv, request, borg(version), where, KeyOptions()) is Kind.NOT_ALLOWED


def test_unconfined_argv_is_refused() -> None:
    request = parse_command("borg serve")
    kind = refusal_kind(policy.serve_argv, request, borg("1.2.4"), policy.Confinement(), KeyOptions())
    assert kind is Kind.MISCONFIGURED


# --------------------------------------------------------------------------- confinement and {client}


def test_key_restrictions_expand_client() -> None:
    key = parse_key_options(
        ["--restrict-to-path", "/srv/borg/{client}", "--restrict-to-repository", "/srv/shared/{client}.borg"]
    )
    where = policy.confinement(key, Config(), "alice")
    assert where.paths == ("/srv/borg/alice",)
    assert where.repositories == ("/srv/shared/alice.borg",)
    assert where.options() == ["--restrict-to-path=/srv/borg/alice", "--restrict-to-repository=/srv/shared/alice.borg"]


def test_key_without_restrictions_gets_repos_root() -> None:
    where = policy.confinement(KeyOptions(), Config(repos_root="/backup/{client}/repos"), "bob")
    assert where == policy.Confinement(("/backup/bob/repos",))


def test_key_restrictions_replace_repos_root() -> None:
    key = parse_key_options(["--restrict-to-repository", "/srv/one"])
    assert policy.confinement(key, Config(repos_root="/srv/borg/{client}"), "bob").paths == ()


def test_key_with_no_confinement_at_all_is_refused() -> None:
    with pytest.raises(Refusal) as info:
        policy.confinement(KeyOptions(), Config(repos_root=""), "alice")
    assert info.value.kind is Kind.MISCONFIGURED
    assert "no confinement" in info.value.reason


@pytest.mark.parametrize("path", ["/srv/{user}", "/srv/{client", "/srv/{{client}}", "/srv/{}"])
def test_only_client_placeholder_expands(path: str) -> None:
    key = KeyOptions(restrict_to_paths=(path,))
    assert refusal_kind(policy.confinement, key, Config(), "alice") is Kind.MISCONFIGURED


@pytest.mark.parametrize("user", ["../root", "a/b", "", ".hidden", "-x", "x" * 65, "ali ce", "élan", "a\nb"])
def test_hostile_unix_user_needs_an_explicit_client(user: str) -> None:
    assert refusal_kind(policy.client_name, KeyOptions(), user) is Kind.MISCONFIGURED
    assert policy.client_name(KeyOptions(client="alice"), user) == "alice"


def test_unix_user_is_the_default_client() -> None:
    assert policy.client_name(KeyOptions(), "backup-host1.example") == "backup-host1.example"


# --------------------------------------------------------------------------- which binary

CFG = parse_config(
    """
[borg]
default = "borg"
[borg.binaries]
borg = "/usr/bin/borg"
borg2 = "/usr/bin/borg2"
"borg-1.4" = { path = "/opt/borg-1.4/bin/borg", version = "1.4.5" }
""",
    "test.toml",
)


@pytest.mark.parametrize(
    ("text", "key_borg", "expected"),
    [
        ("borg serve", None, "/usr/bin/borg"),
        ("borg serve", "borg2", "/usr/bin/borg2"),
        ("/usr/local/bin/borg serve", "borg-1.4", "/opt/borg-1.4/bin/borg"),
        ("borg2 serve", None, "/usr/bin/borg2"),
        ("/home/evil/bin/borg2 serve", "borg", "/usr/bin/borg2"),  # the client's path is never used
        ("/usr/local/bin/borg-1.4 serve", None, "/opt/borg-1.4/bin/borg"),
    ],
)
def test_binary_choice(text: str, key_borg: str | None, expected: str) -> None:
    assert policy.choose_binary(parse_command(text), KeyOptions(borg=key_borg), CFG).path == expected


def test_unknown_binary_is_refused_naming_the_offered_ones() -> None:
    with pytest.raises(Refusal) as info:
        policy.choose_binary(parse_command("borg-1.1 serve"), KeyOptions(), CFG)
    assert info.value.kind is Kind.NOT_ALLOWED
    assert "borg-1.1" in info.value.reason
    assert "borg, borg-1.4, borg2" in info.value.reason


def test_key_naming_an_unconfigured_binary_is_misconfigured() -> None:
    kind = refusal_kind(policy.choose_binary, parse_command("borg serve"), KeyOptions(borg="borg3"), CFG)
    assert kind is Kind.MISCONFIGURED


def test_budget_and_supervise_come_from_key_then_config() -> None:
    cfg = Config(max_sessions=5, max_sessions_per_client=2, wait=30.0, mode="supervise")
    assert policy.budget(KeyOptions(), cfg) == policy.Budget(5, 2, 30.0)
    assert policy.budget(KeyOptions(max_sessions=1, wait=0.0), cfg) == policy.Budget(5, 1, 0.0)
    plan = policy.plan(parse_command("borg serve"), KeyOptions(), cfg, borg("1.2.4"), "alice")
    assert plan.supervise
    plan = policy.plan(parse_command("borg serve"), KeyOptions(supervise=True), Config(), borg("1.2.4"), "alice")
    assert plan.supervise


# --------------------------------------------------------------------------- real grammars


@pytest.fixture(scope="module")
def grammars() -> Iterator[dict[str, Grammar]]:
    started = {version: Grammar(version) for version in VERSIONS}
    yield started
    for g in started.values():
        g.close()


BINARIES = {  # name a client may ask for -> version of the binary serving it
    "borg": platform_facts.debian_borg(),
    "borg2": platform_facts.debian_borg2(),
    **{f"pypi-{v}": v for v in platform_facts.pypi_versions()},
}


def config_with_default(default: str, repos_root: str) -> Config:
    binaries = "\n".join(f'"{n}" = {{ path = "/opt/{n}/bin/borg", version = "{v}" }}' for n, v in BINARIES.items())
    text = f'[repos]\nroot = "{repos_root}"\n[borg]\ndefault = "{default}"\n[borg.binaries]\n{binaries}\n'
    return parse_config(text, "generated.toml")


@dataclass(frozen=True)
class Expected:
    binary: str
    version: BorgVersion
    paths: list[str] | None
    repositories: list[str] | None
    append_only: bool
    permissions: str | None
    quota: int | None


B10, B16, B18, B22 = (BorgVersion.parse(v) for v in ("2.0.0b10", "2.0.0b16", "2.0.0b18", "2.0.0b22"))


def oracle(request: ClientRequest, key: KeyOptions, cfg: Config, client: str) -> Expected | None:
    """What the argv must mean, from the rules in the issue and BORG-FACTS; None: refused."""
    name = (key.borg or cfg.borg_default) if request.program == "borg" else request.program
    if name not in cfg.binaries:
        return None
    version = BorgVersion.parse(BINARIES[name])
    if request.rest and version < B22:
        return None
    if key.restrict_to_paths or key.restrict_to_repositories:
        paths = [p.replace("{client}", client) for p in key.restrict_to_paths]
        repos = [p.replace("{client}", client) for p in key.restrict_to_repositories]
    elif cfg.repos_root:
        paths, repos = [cfg.repos_root.replace("{client}", client)], []
    else:
        return None
    append_only, permissions = False, None
    if version >= B22 and request.rest:
        permissions = key.permission.value  # stated even when "all"
    elif key.permission is not Permission.ALL:
        if version < B10 and key.permission is Permission.NO_DELETE:
            append_only = True
        else:
            return None
    if key.storage_quota is not None and version >= B10:
        return None
    return Expected(
        cfg.binaries[name].path, version, paths or None, repos or None, append_only, permissions, key.storage_quota
    )


key_lines = st.fixed_dictionaries(
    {},
    optional={
        "client": st.sampled_from(["alice", "bob-2", "host.example"]),
        "paths": st.lists(st.sampled_from(["/srv/borg/{client}", "/srv/shared", "/data/{client}/borg"]), max_size=2),
        "repos": st.lists(st.sampled_from(["/srv/one", "/srv/{client}.borg"]), max_size=2),
        "permission": st.sampled_from([["--append-only"]] + [["--permissions", p.value] for p in PERMISSIONS]),
        "quota": st.sampled_from(["10M", "500G", "1.5T"]),
        "borg": st.sampled_from(sorted(BINARIES)),
    },
).map(
    lambda d: [
        *(["--client", d["client"]] if "client" in d else []),
        *[a for p in d.get("paths", []) for a in ("--restrict-to-path", p)],
        *[a for p in d.get("repos", []) for a in ("--restrict-to-repository", p)],
        *d.get("permission", []),
        *(["--storage-quota", d["quota"]] if "quota" in d else []),
        *(["--borg", d["borg"]] if "borg" in d else []),
    ]
)
CLIENT_OPTIONS = [
    *(["--info"], ["--debug"], ["--error"], ["--critical"], ["--warning"], ["-v"]),
    *(["--debug-topic=borg.debug.repository"], ["--debug-topic", "repository"]),
    *(["--umask=077"], ["--storage-quota=1000000000"]),
]
client_options = st.lists(st.sampled_from(CLIENT_OPTIONS), max_size=5).map(lambda opts: [w for o in opts for w in o])
commands = st.builds(
    lambda prefix, program, opts, rest: " ".join(
        [*prefix, program, "serve", *opts, *(["--rest", "--backend", rest] if rest else [])]
    ),
    st.sampled_from([[], ["BORG_HOSTNAME_IS_UNIQUE=no"], ["LD_PRELOAD=/x.so", "PATH=/tmp"]]),
    st.sampled_from(["borg", "borg2", *sorted(BINARIES), "/usr/local/bin/borg", "/tmp/evil/pypi-2.0.0b22", "borg3"]),
    client_options,
    st.one_of(st.none(), st.sampled_from(["FILE:/srv/borg/alice/repo", "FILE:/srv/shared/x", "FILE:/etc"])),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=commands,
    key_argv=key_lines,
    default=st.sampled_from(sorted(BINARIES)),
    repos_root=st.sampled_from(["/srv/borg/{client}", ""]),
)
def test_accepted_argv_parses_under_the_target_borg_with_only_the_keys_powers(
    grammars: dict[str, Grammar], text: str, key_argv: list[str], default: str, repos_root: str
) -> None:
    cfg = config_with_default(default, repos_root)
    key = parse_key_options(key_argv)
    client = policy.client_name(key, "alice")
    request = parse_command(text)
    expected = oracle(request, key, cfg, client)
    try:
        spec = policy.choose_binary(request, key, cfg)
        assert spec.version is not None
        plan = policy.plan(request, key, cfg, Borg(spec, BorgVersion.parse(spec.version)), client)
    except Refusal as refusal:
        assert expected is None, f"refused, the oracle accepts: {refusal.reason}"
        assert refusal.kind in (Kind.NOT_ALLOWED, Kind.MISCONFIGURED)
        event("refused")
        return
    event(f"accepted by {spec.version}")
    assert expected is not None, f"accepted, the oracle refuses: {plan.argv}"
    argv = plan.argv
    assert argv[0] == expected.binary  # from the config, never the client's path
    parsed = grammars[str(expected.version)].parse(argv)
    assert parsed.ok, (argv, parsed.error)
    assert parsed.func == "do_serve"
    args = parsed.args
    assert args["restrict_to_paths"] == expected.paths
    assert args["restrict_to_repositories"] == expected.repositories
    assert args["log_level"] == (request.log_level or "warning")
    assert args["debug_topics"] == list(request.debug_topics)
    if expected.version < B16:
        assert args["append_only"] is expected.append_only
        assert args["storage_quota"] == expected.quota
    else:
        assert "append_only" not in args and "storage_quota" not in args
    if expected.version >= B18:
        assert args["permissions"] == expected.permissions
    if expected.version >= B22:
        assert args["rest"] is request.rest
        assert args["backend"] == request.backend
    # borg serve takes umask and lock_wait from its own defaults, never from the client
    assert args["umask"] == 0o077
    assert "--umask" not in " ".join(argv) and "--lock-wait" not in " ".join(argv)
