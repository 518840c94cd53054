"""Policy: from the key line, the config and the vetted request to the exact borg serve argv.

Pure functions only. The client picks nothing here beyond its vetted log options and,
among the binaries the config lists, which one serves it; paths, restrictions and
permissions come from the key line and the config.
"""

from __future__ import annotations

from borg_gate.base import patterns
from borg_gate.base.config import BinarySpec, Config
from borg_gate.base.errors import misconfigured, not_allowed, shown
from borg_gate.base.values import frozen
from borg_gate.conn.command import ClientRequest
from borg_gate.conn.keyopts import KeyOptions, Permission
from borg_gate.conn.slots import Budget as Budget  # the slots' input, decided here
from borg_gate.conn.versions import Borg


@frozen
class Confinement:
    """Where a key's borg serve may open repositories; borg enforces it, the gate checks rest paths."""

    paths: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.paths or self.repositories)

    def options(self) -> list[str]:
        return [f"--restrict-to-path={p}" for p in self.paths] + [
            f"--restrict-to-repository={p}" for p in self.repositories
        ]


@frozen
class ServePlan:
    """Everything needed to exec borg serve for one connection."""

    client: str
    borg: Borg
    argv: tuple[str, ...]
    confinement: Confinement
    permission: Permission
    budget: Budget
    supervise: bool


def client_name(key: KeyOptions, unix_user: str) -> str:
    name = key.client if key.client is not None else unix_user
    if not patterns.client_name(name):
        raise misconfigured(f"unix user {shown(name, 40)!r} is not a valid client name: give --client on the key line")
    return name


def choose_binary(request: ClientRequest, key: KeyOptions, config: Config) -> BinarySpec:
    """The client's argv[0] basename picks among configured binaries; plain ``borg`` means the key's."""
    if request.program == "borg":
        name = key.borg or config.borg_default
        spec = config.binaries.get(name)
        if spec is None:
            raise misconfigured(f"key line: --borg {name} names no binary in [borg.binaries]")
        return spec
    spec = config.binaries.get(request.program)
    if spec is None:
        offered = ", ".join(sorted(config.binaries))
        raise not_allowed(f"this server has no {request.program!r}; it offers: {offered}")
    return spec


def _expand(path: str, client: str) -> str:
    expanded = path.replace("{client}", client)
    if "{" in expanded or "}" in expanded:
        raise misconfigured(f"confinement {shown(path, 80)!r}: only {{client}} may be expanded")
    return expanded


def confinement(key: KeyOptions, config: Config, client: str) -> Confinement:
    """The key's own restrictions, else the config's repos.root; none at all is refused."""
    if key.restrict_to_paths or key.restrict_to_repositories:
        return Confinement(
            tuple(_expand(p, client) for p in key.restrict_to_paths),
            tuple(_expand(p, client) for p in key.restrict_to_repositories),
        )
    if config.repos_root:
        return Confinement((_expand(config.repos_root, client),))
    raise misconfigured("key has no confinement: give --restrict-to-path on the key line or [repos] root")


def permission_options(permission: Permission, borg: Borg, rest: bool) -> list[str]:
    """Translate the key's permission for this borg, or refuse: never silently weaker."""
    feats = borg.features
    if rest and feats.rest:
        # Always stated, "all" too: without --permissions, serve --rest takes BORG_REPO_PERMISSIONS
        # from its environment, and only the key may say what this connection may do.
        return [f"--permissions={permission.value}"]
    if permission is Permission.ALL:
        return []
    if feats.permissions and feats.permissions_legacy_serve:
        return [f"--permissions={permission.value}"]
    if permission is Permission.NO_DELETE and feats.append_only:
        return ["--append-only"]
    if feats.rest:
        why = " outside rest:// mode"
    elif feats.permissions:
        why = ": its --permissions skips borg 1.x repositories, which the client may ask to open"
    else:
        why = ""
    raise not_allowed(
        f"this key is {permission.value}, which {borg.spec.name} (borg {borg.version}) cannot enforce{why}"
    )


def quota_options(quota: int | None, borg: Borg) -> list[str]:
    if quota is None:
        return []
    if not borg.features.storage_quota:
        raise not_allowed(f"this key has a storage quota, which {borg.spec.name} (borg {borg.version}) cannot enforce")
    return [f"--storage-quota={quota}"]


def key_serve_options(key: KeyOptions, borg: Borg, rest: bool) -> list[str]:
    """borg serve's options for all a key says that each borg takes its own way, or refused.

    The translations keyopts.OPTIONS names (translated_by), in one place: the connection and
    check apply the same ones, in the same order, so check refuses with the connection's reason.
    """
    return [*permission_options(key.permission, borg, rest), *quota_options(key.storage_quota, borg)]


def serve_argv(request: ClientRequest, borg: Borg, where: Confinement, key: KeyOptions) -> tuple[str, ...]:
    if request.rest and not borg.features.rest:
        raise not_allowed(f"{borg.spec.name} (borg {borg.version}) does not serve rest:// repositories")
    if not where:
        raise misconfigured("refusing an unconfined borg serve")
    # The gate says which protocol itself: a borg whose serve has --legacy (borg #9766) serves
    # rest:// by default, every other one legacy; the client's words decide nothing here.
    mode = ["--legacy"] if borg.legacy_option and not request.rest else []
    return (
        borg.spec.path,
        "serve",
        *mode,
        *request.serve_options(),
        *where.options(),
        *key_serve_options(key, borg, request.rest),
    )


def budget(key: KeyOptions, config: Config) -> Budget:
    per_client = key.max_sessions if key.max_sessions is not None else config.max_sessions_per_client
    per_repo = key.max_sessions_per_repo if key.max_sessions_per_repo is not None else config.max_sessions_per_repo
    return Budget(
        max_sessions=config.max_sessions,
        max_sessions_per_client=per_client,
        wait=key.wait if key.wait is not None else config.wait,
        reserved_sessions=config.reserved_sessions,
        priority=key.priority,
        max_sessions_per_repo=per_repo,
    )


def queued_repository(request: ClientRequest, where: Confinement) -> str | None:
    """The repository this connection will open, where the gate knows it before exec, else None.

    A rest:// client names it (FILE: path, checked against the confinement before this); an
    ssh:// client names it only inside the protocol, so only a key confined to exactly one
    repository tells. The caller resolves it (realpath): one queue per repository, however spelt.
    """
    if request.backend_path is not None:
        return request.backend_path
    if len(where.repositories) == 1 and not where.paths:
        return where.repositories[0]
    return None


def plan(request: ClientRequest, key: KeyOptions, config: Config, borg: Borg, client: str) -> ServePlan:
    where = confinement(key, config, client)
    return ServePlan(
        client=client,
        borg=borg,
        argv=serve_argv(request, borg, where, key),
        confinement=where,
        permission=key.permission,
        budget=budget(key, config),
        supervise=key.supervise or config.mode == "supervise",
    )
