"""connection.py: the facts gathered once per connection, checked against sshd's and ssh-keygen's."""

from __future__ import annotations

import base64
import binascii
import hashlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_gate.base import connection


@pytest.mark.parametrize("key_type", ["ed25519", "rsa", "ecdsa"])
def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, key_type: str) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(key)], check=True)
    key_type_name, blob = Path(f"{key}.pub").read_text().split()[:2]
    # sshd's SSH_USER_AUTH file: one line per method used, the key as in authorized_keys
    auth = tmp_path / "auth"
    auth.write_text(f"publickey {key_type_name} {blob}\n")
    expected = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], check=True, capture_output=True, text=True)
    assert connection.key_fingerprint(str(auth)) == expected.stdout.split()[1]


def test_builtin_digest_equals_hashlib() -> None:
    for data in (b"", b"abc", bytes(range(256)) * 100):
        assert connection._sha256(data) == hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    "content",
    ["", "password\n", "publickey ssh-ed25519 !!!notbase64\n", "publickey\n", "keyboard-interactive\n"],
)
def test_no_fingerprint_without_a_readable_key(tmp_path: Path, content: str) -> None:
    auth = tmp_path / "auth"
    auth.write_text(content)
    assert connection.key_fingerprint(str(auth)) is None
    assert connection.key_fingerprint(str(tmp_path / "missing")) is None
    assert connection.key_fingerprint(None) is None


def test_ssh_connection_is_split_into_ip_and_port() -> None:
    conn = connection.current({"SSH_CONNECTION": "192.0.2.7 50022 192.0.2.1 22", "SSH_ORIGINAL_COMMAND": "borg serve"})
    assert (conn.remote_ip, conn.remote_port, conn.command) == ("192.0.2.7", 50022, "borg serve")
    assert len(conn.id) == 16
    odd = connection.current({"SSH_CONNECTION": "garbage"})
    assert (odd.remote_ip, odd.remote_port, odd.command) == (None, None, None)


@given(st.text(alphabet="ABCQUJDabc019+/=$ \n-_", max_size=24))
def test_the_key_blob_is_decoded_as_b64decode_validate_would(text: str) -> None:
    """connection uses binascii's strict mode (the base64 module imports re); same bytes, same refusals."""
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except ValueError:
        expected = None
    try:
        got: bytes | None = binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        got = None
    assert got == expected
