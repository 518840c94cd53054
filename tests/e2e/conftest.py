"""Fixtures for the end-to-end suite: see harness.py."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import harness


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_base() -> Iterator[Path]:
    if os.geteuid() != 0:  # scripts (demo, bench) call harness.require_root, which exits instead
        pytest.skip("needs root: the end-to-end suite runs sshd and creates test users (CI runs as root)")
    for user in harness.USERS:
        harness.ensure_user(user)
    with harness.e2e_base() as base:
        yield base


@pytest.fixture(scope="session")
def gate_bin() -> Path:
    return harness.install_gate(harness.CACHE)


@pytest.fixture(scope="session")
def sshd(e2e_base: Path) -> Iterator[harness.Sshd]:
    server = harness.Sshd(e2e_base / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


_site_numbers = itertools.count(1)


@pytest.fixture
def site(sshd: harness.Sshd, gate_bin: Path, e2e_base: Path, request: pytest.FixtureRequest) -> harness.Site:
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")[:60]
    name = f"{next(_site_numbers):03d}-{name}"  # unique even when long test ids share a prefix
    root = e2e_base / "sites" / name
    root.parent.mkdir(exist_ok=True)
    root.parent.chmod(0o755)
    s = harness.Site(sshd=sshd, gate=gate_bin, root=root)
    s.setup()
    return s
