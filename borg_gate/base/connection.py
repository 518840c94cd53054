"""Who is connecting: facts from sshd's environment and the kernel, gathered once per connection."""

from __future__ import annotations

import binascii  # base64's C half: the base64 module imports re (~4 ms a connection)
import os
import pwd
import time

from borg_gate.base.values import frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Mapping


def _sha256(data: bytes) -> bytes:
    # CPython's built-in _sha256 (3.11; _sha2 from 3.12) spares every connection hashlib's
    # OpenSSL load (~3-5 ms); hashlib is the fallback where neither exists.
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    digest: bytes = sha256(data).digest()
    return digest


@frozen
class Connection:
    id: str  # one transaction id for all of a connection's events (gitolite's lesson)
    unix_user: str
    uid: int
    remote_ip: str | None
    remote_port: int | None
    fingerprint: str | None  # SHA256:… of the key used, when sshd has ExposeAuthInfo yes
    command: str | None  # SSH_ORIGINAL_COMMAND as received
    started: float  # wall clock, for logs
    started_mono: float  # monotonic, for durations


def key_fingerprint(user_auth_file: str | None) -> str | None:
    """SHA256 fingerprint of the first publickey in sshd's SSH_USER_AUTH file, as ssh-keygen -l prints."""
    if not user_auth_file:
        return None
    try:
        with open(user_auth_file, encoding="ascii", errors="replace") as fh:
            text = fh.read(65536)
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "publickey":
            try:
                blob = binascii.a2b_base64(words[2], strict_mode=True)  # b64decode(validate=True)
            except ValueError:
                return None
            digest = binascii.b2a_base64(_sha256(blob), newline=False).decode().rstrip("=")
            return f"SHA256:{digest}"
    return None


def current(environ: Mapping[str, str]) -> Connection:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    ip: str | None = None
    port: int | None = None
    parts = environ.get("SSH_CONNECTION", "").split()
    if len(parts) == 4:
        ip = parts[0]
        port = int(parts[1]) if parts[1].isdigit() else None
    return Connection(
        id=os.urandom(8).hex(),
        unix_user=user,
        uid=uid,
        remote_ip=ip,
        remote_port=port,
        fingerprint=key_fingerprint(environ.get("SSH_USER_AUTH")),
        command=environ.get("SSH_ORIGINAL_COMMAND"),
        started=time.time(),
        started_mono=time.monotonic(),
    )
