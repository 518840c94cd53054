"""What this platform has, learned from what is installed: the suite runs on Debian 12 and Debian 13.

Nothing here names one distribution's versions: Debian's borg and borg2 say their versions
(``--version``), ssh says which key types it has (``ssh -Q key``), the system Python says which
OpenSSL it links. A test that needs what a platform cannot have (borg 2.0.0b24+ needs OpenSSL
>= 3.2, which Debian 12 lacks) calls :func:`lacks`, which says why as a platform fact.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import ssl
import subprocess
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
BORG1 = "/usr/bin/borg"  # Debian's borgbackup
BORG2 = "/usr/bin/borg2"  # Debian's borgbackup2


@functools.cache
def borg_build() -> ModuleType:
    """tests/borgs/build as a module: which PyPI borgs this platform builds, and where they are."""
    loader = SourceFileLoader("borg_build", str(REPO_ROOT / "tests" / "borgs" / "build"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("borg_build", loader))
    loader.exec_module(module)
    return module


@functools.cache
def installed_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()[-1]


def debian_borg() -> str:
    """Debian's borgbackup: 1.2.4 on Debian 12, 1.4.0 on Debian 13."""
    return installed_version(BORG1)


def debian_borg2() -> str:
    """Debian's borgbackup2: 2.0.0b5 on Debian 12, 2.0.0b19 on Debian 13."""
    return installed_version(BORG2)


@functools.cache
def borg2_sys_path() -> str:
    """Where Debian's borg2 keeps its own ``borg`` package (its launcher puts it on sys.path)."""
    m = re.search(r"sys\.path\.insert\(0, ['\"]([^'\"]+)['\"]\)", Path(BORG2).read_text())
    return m.group(1) if m else ""


def pypi_versions() -> tuple[str, ...]:
    """The PyPI borgs this platform builds (tests/borgs/build), newest last."""
    return tuple(borg_build().buildable())


def lacks(version: str) -> None:
    """Skip, stating the platform fact, when this platform cannot build borg ``version`` at all."""
    why = borg_build().unbuildable(version)
    if why is not None:
        pytest.skip(f"platform fact: {why}")


def openssl() -> str:
    return ssl.OPENSSL_VERSION


# ssh-keygen arguments per key type name as `ssh -Q key` lists it
KEYGEN: dict[str, list[str]] = {
    "ssh-ed25519": ["-t", "ed25519"],
    "ssh-rsa": ["-t", "rsa", "-b", "2048"],
    "ecdsa-sha2-nistp256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa-sha2-nistp384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa-sha2-nistp521": ["-t", "ecdsa", "-b", "521"],
    "ssh-dss": ["-t", "dsa"],
}


@functools.cache
def ssh_key_types() -> frozenset[str]:
    """The key types this OpenSSH knows (10.0 dropped ssh-dss)."""
    out = subprocess.run(["ssh", "-Q", "key"], capture_output=True, text=True, check=True)
    return frozenset(out.stdout.split())


def keygen_types() -> dict[str, list[str]]:
    """The key types ssh-keygen makes here, by `ssh -Q key` name."""
    return {name: args for name, args in KEYGEN.items() if name in ssh_key_types()}


@functools.cache
def sshd_version() -> str:
    """``OpenSSH_10.0p2 …`` -> ``10.0``: what sshd -V says (it prints to stderr)."""
    out = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True, check=False)
    m = re.search(r"OpenSSH_([0-9]+\.[0-9]+)", out.stderr + out.stdout)
    assert m, out
    return m.group(1)


def borg2_family(version: str) -> str:
    """How a borg 2 client is spoken to: ``rcreate`` words (b1-b9), ``repo-create`` over ssh:// (b10-b21), rest://.

    The names follow borg's changes: b10 renamed rcreate/rlist/rdelete to repo-*, b22 moved
    borg 2 repositories to rest://.
    """
    from borg_gate.conn.versions import BorgVersion

    v = BorgVersion.parse(version)
    if v < BorgVersion.parse("2.0.0a0"):
        return "1"
    if v < BorgVersion.parse("2.0.0b10"):
        return "2-rcreate"
    if v < BorgVersion.parse("2.0.0b22"):
        return "2-ssh"
    return "2-rest"
