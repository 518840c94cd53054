"""The target borg's real command-line grammar, for checking the argv the gate builds.

A ``Grammar`` is one long-running parser process per borg version (see borg_parse.py):
Debian's own borg and borg2 (whatever this platform installed), and the PyPI versions
tests/borgs/build makes here (cached; built on first use).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import platform_facts

HERE = Path(__file__).parent
BUILD = HERE.parent / "borgs" / "build"
SYSTEM_PYTHON = platform_facts.SYSTEM_PYTHON

# version -> (interpreter, extra sys.path entry) of Debian's borgs; the others are built by tests/borgs/build
DEBIAN: dict[str, tuple[str, str]] = {
    platform_facts.debian_borg(): (SYSTEM_PYTHON, ""),
    platform_facts.debian_borg2(): (SYSTEM_PYTHON, platform_facts.borg2_sys_path()),
}
BUILT = tuple(v for v in platform_facts.pypi_versions() if v not in DEBIAN)
VERSIONS = (*DEBIAN, *BUILT)


def built_borg(version: str) -> Path:
    """Path of a borg built from source (builds it on first use, 30-60 s)."""
    out = subprocess.run([SYSTEM_PYTHON, str(BUILD), version], capture_output=True, text=True, check=True)
    got, path = out.stdout.split()
    assert got == version, out.stdout
    return Path(path)


@dataclass
class Parsed:
    ok: bool
    func: str | None
    args: dict[str, Any]
    error: Any


class Grammar:
    def __init__(self, version: str) -> None:
        if version in DEBIAN:
            python, extra = DEBIAN[version]
        else:
            python, extra = str(built_borg(version).with_name("python")), ""
        self.version = version
        self.proc = subprocess.Popen(
            [python, str(HERE / "borg_parse.py"), extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self._readline())
        assert hello["version"] == version, (hello, version)

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"borg {self.version} parser process died")
        return line

    def parse(self, argv: list[str] | tuple[str, ...]) -> Parsed:
        """Parse ``argv`` (argv[0] included, as exec'd) with borg's own parser."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(argv[1:])) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self._readline())
        return Parsed(answer["ok"], answer.get("func"), answer.get("args", {}), answer.get("error"))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
