"""Test keys: made by this platform's ssh-keygen, and the DSA line OpenSSH 10's can no longer make."""

from __future__ import annotations

import base64
import hashlib
import struct
import subprocess
from pathlib import Path


def keygen(path: Path, args: list[str], comment: str) -> str:
    """A new key pair at ``path``; the .pub line (without newline)."""
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # a leading zero byte keeps it positive
    return _string(raw)


def dsa_line(comment: str = "dsa@test") -> str:
    """A well-formed ``ssh-dss`` public key line, as ssh-keygen -t dsa wrote them (OpenSSH < 10).

    The numbers only have to be well formed (sshd 9.2 reads four mpints; 10 stops at the type).
    """
    seed = hashlib.sha512(comment.encode()).digest()
    p, q, g, y = (int.from_bytes(seed * 2, "big") | 1 << 1023 | 1 for _ in range(4))
    q = int.from_bytes(seed[:20], "big") | 1 << 159 | 1
    blob = _string(b"ssh-dss") + _mpint(p) + _mpint(q) + _mpint(g) + _mpint(y)
    return f"ssh-dss {base64.b64encode(blob).decode()} {comment}"
