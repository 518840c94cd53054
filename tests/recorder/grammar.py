"""The target borg's real command-line grammar, for checking the argv the gate builds.

A ``Grammar`` is one long-running parser process per borg version (see borg_parse.py):
borg 1.2.4 and 2.0.0b5 from Debian, 1.4.5 and 2.0.0b22 built from PyPI source by
tests/borgs/build (cached; built on first use).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
BUILD = HERE.parent / "borgs" / "build"
SYSTEM_PYTHON = "/usr/bin/python3"

# version -> (interpreter, extra sys.path entry); None interpreter: built by tests/borgs/build
DEBIAN: dict[str, tuple[str, str]] = {
    "1.2.4": (SYSTEM_PYTHON, ""),
    "2.0.0b5": (SYSTEM_PYTHON, "/usr/lib/borgbackup2"),
}
BUILT = ("1.4.5", "2.0.0b22")
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
