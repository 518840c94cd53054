"""Review findings: permission and quota options the gate passes to a borg that does not enforce them.

Checked against borg's source (bare mirror, ``git show TAG:src/borg/...``):

- 2.0.0b10 to 2.0.0b15 serve_cmd.py: ``if args.append_only: raise CommandError("append-only is not
  supported (yet?)")`` and the same for ``--storage-quota``. The gate's features() says both work
  below 2.0.0b16, so a no-delete or quota key is "served" by a borg that exits at once: fail
  closed, but the client sees borg's error instead of the gate's refusal naming the reason.
- 2.0.0b18 to 2.0.0b21 remote.py RepositoryServer.open: ``if not v1_or_v2: kwargs["permissions"] =
  self.permissions``. The client chooses v1_or_v2 in its RPC ``open``; with it, a borg 1.x
  repository under the confinement is opened as LegacyRepository (delete, put, commit allowed)
  and --permissions does not apply. Same gap as 2.0.0b22's legacy serve, which the gate already
  refuses (permissions_rest_only), but only from b22 on.
"""

from __future__ import annotations

import pytest

from borg_gate.base.config import BinarySpec
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import policy
from borg_gate.conn.keyopts import Permission
from borg_gate.conn.versions import Borg, BorgVersion


def borg(version: str) -> Borg:
    return Borg(BinarySpec("borg2", "/opt/borg2/bin/borg", version), BorgVersion.parse(version))


@pytest.mark.parametrize("version", ["2.0.0b10", "2.0.0b12", "2.0.0b15"])
def test_append_only_is_refused_where_borg_refuses_it(version: str) -> None:
    with pytest.raises(Refusal) as info:
        policy.permission_options(Permission.NO_DELETE, borg(version), rest=False)
    assert info.value.kind is Kind.NOT_ALLOWED


@pytest.mark.parametrize("version", ["2.0.0b10", "2.0.0b15"])
def test_storage_quota_is_refused_where_borg_refuses_it(version: str) -> None:
    with pytest.raises(Refusal) as info:
        policy.quota_options(10**10, borg(version))
    assert info.value.kind is Kind.NOT_ALLOWED


@pytest.mark.parametrize("version", ["2.0.0b18", "2.0.0b21"])
@pytest.mark.parametrize("permission", [Permission.NO_DELETE, Permission.READ_ONLY, Permission.WRITE_ONLY])
def test_legacy_serve_that_skips_permissions_for_v1_repos_is_refused(version: str, permission: Permission) -> None:
    with pytest.raises(Refusal) as info:
        policy.permission_options(permission, borg(version), rest=False)
    assert info.value.kind is Kind.NOT_ALLOWED
