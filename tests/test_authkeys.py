"""authorized_keys lines read as sshd 10 reads them (and 9.2, but for DSA), and command= split as sh and bash split it.

Keys come from ssh-keygen; fingerprints are compared with ssh-keygen -l. The shell is checked
against the real /bin/sh (dash) and /bin/bash: whatever split_command accepts, they run as the
same argv, and whatever shell_word quotes, they give back unchanged. Whether sshd itself agrees
on hostile lines is checked end to end in tests/e2e/test_authorize_e2e.py.
"""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borg_gate.admin import authkeys
from borg_gate.admin.authkeys import BadLine, KeyLine, parse_file, parse_line
from tests import platform_facts
from tests.sshkeys import dsa_line

KEYGEN_TYPES = {  # ssh-keygen arguments; DSA is gone from OpenSSH 10 (tests/sshkeys.dsa_line builds one)
    "ed25519": ["-t", "ed25519"],
    "rsa": ["-t", "rsa", "-b", "2048"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """name -> the .pub line ssh-keygen wrote (without newline)."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, args in KEYGEN_TYPES.items():
        path = d / name
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
        out[name] = Path(f"{path}.pub").read_text().strip()
    return out


def keyline(text: str) -> KeyLine:
    parsed = parse_line(text, 1)
    assert isinstance(parsed, KeyLine), parsed
    return parsed


def badline(text: str) -> BadLine:
    parsed = parse_line(text, 1)
    assert isinstance(parsed, BadLine), parsed
    return parsed


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("name", list(KEYGEN_TYPES))
def test_every_keygen_type_parses_with_keygens_fingerprint(keys: dict[str, str], name: str, tmp_path: Path) -> None:
    kl = keyline(keys[name])
    assert kl.options.items == ()
    assert kl.key.comment == f"{name}@test"
    pub = tmp_path / "k.pub"
    pub.write_text(keys[name] + "\n")
    listed = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout
    assert listed.split()[1] == kl.key.fingerprint
    assert kl.key.render() == keys[name]


def test_key_types_are_the_installed_opensshs() -> None:
    """Every type this OpenSSH lists (ssh -Q key) is read; DSA only where OpenSSH still has it (< 10)."""
    listed = platform_facts.ssh_key_types()
    assert {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"} <= set(authkeys.KEY_TYPES)
    assert listed - {"ssh-dss", "ssh-dss-cert-v01@openssh.com"} <= set(authkeys.KEY_TYPES)
    assert ("ssh-dss" in listed) == (float(platform_facts.sshd_version()) < 10), platform_facts.sshd_version()


@pytest.mark.parametrize("options", ["", 'command="borg-gate --client a",restrict '])
def test_dsa_line_is_unusable_as_on_sshd_10(options: str) -> None:
    line = badline(options + dsa_line())
    assert "DSA key (ssh-dss): OpenSSH 10 cannot read DSA keys" in line.reason


def test_rsa_signature_names_are_rsa_key_types(keys: dict[str, str]) -> None:
    _, b64, comment = keys["rsa"].split(" ", 2)
    for name in ("rsa-sha2-256", "rsa-sha2-512"):
        assert keyline(f"{name} {b64} {comment}").key.key_type.family == "rsa"
    assert keyline(keys["rsa"]).key.rsa_bits == 2048


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def test_blob_type_must_match_the_line(keys: dict[str, str]) -> None:
    ed = blob_of(keys["ed25519"])
    assert "ssh-ed25519 key, the line says ssh-rsa" in badline(f"ssh-rsa {b64(ed)} x").reason
    p384 = blob_of(keys["ecdsa384"])
    assert "curve 'nistp384' does not match" in badline(f"ecdsa-sha2-nistp256 {b64(p384)}").reason


def test_broken_blobs_are_bad_lines(keys: dict[str, str]) -> None:
    ed = blob_of(keys["ed25519"])
    cases = {
        "truncated": ed[:-1],
        "trailing data": ed + b"\0",
        "unknown type": struct.pack(">I", 7) + b"ssh-foo" + ed[19:],
        "short ed25519": ed[:15] + struct.pack(">I", 31) + ed[19:-1],
    }
    what_reason = {
        "truncated": "key blob is truncated",
        "trailing data": "key blob has trailing data",
        "unknown type": "key blob holds an unknown key type 'ssh-foo'",
        "short ed25519": "ed25519 key is not 32 bytes",
    }
    for what, blob in cases.items():
        assert badline(f"ssh-ed25519 {b64(blob)} x").reason == what_reason[what], what
    assert "base64" in badline("ssh-ed25519 AAAA!!!! x").reason
    # the last character's spare bits must be zero, as b64_pton checks
    text = b64(blob_of(keys["ecdsa256"]))
    assert text.endswith("=") and not text.endswith("==")  # 2 spare bits in the last character
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    spare = alphabet[alphabet.index(text[-2]) + 1]
    assert base64.b64decode(text[:-2] + spare + "=") == base64.b64decode(text)  # Python alone would accept it
    assert "base64" in badline(f"ecdsa-sha2-nistp256 {text[:-2]}{spare}=").reason
    assert "base64" in badline(f"ecdsa-sha2-nistp256 {text[:-1]}").reason  # padding is required


def test_ecdsa_point_off_the_curve_is_refused(keys: dict[str, str]) -> None:
    blob = bytearray(blob_of(keys["ecdsa256"]))
    blob[-1] ^= 1
    assert "not on curve" in badline(f"ecdsa-sha2-nistp256 {b64(bytes(blob))}").reason


def test_short_rsa_is_refused_as_sshd_does(tmp_path: Path) -> None:
    e = struct.pack(">I", 3) + b"\x01\x00\x01"
    n = (1 << 1000) | 1
    raw = n.to_bytes(126, "big")
    blob = struct.pack(">I", 7) + b"ssh-rsa" + e + struct.pack(">I", len(raw)) + raw
    assert "shorter than 1024" in badline(f"ssh-rsa {b64(blob)}").reason


# --------------------------------------------------------------------------- options


def test_gate_line(keys: dict[str, str]) -> None:
    kl = keyline(f'command="borg-gate --client web1",restrict {keys["ed25519"]}')
    assert kl.options.command == "borg-gate --client web1"
    assert kl.options.restrict
    assert not any(kl.options.allowed().values())
    assert kl.options_text == 'command="borg-gate --client web1",restrict'


def test_escaped_quotes_and_spaces_inside_values(keys: dict[str, str]) -> None:
    kl = keyline(f'command="echo \\"a b\\" \\\\x",no-pty {keys["ed25519"]}')
    assert kl.options.command == 'echo "a b" \\\\x'  # only \" is an escape for sshd
    assert kl.options.allowed()["pty"] is False


def test_options_are_case_insensitive_and_later_flags_win(keys: dict[str, str]) -> None:
    k = keys["ed25519"]
    assert keyline(f'COMMAND="x",RESTRICT {k}').options.command == "x"
    assert keyline(f"restrict,pty {k}").options.allowed() == {
        "port-forwarding": False,
        "agent-forwarding": False,
        "x11-forwarding": False,
        "pty": True,
        "user-rc": False,
    }
    assert keyline(f"pty,restrict {k}").options.allowed()["pty"] is False
    no_star = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty,no-user-rc"
    opts = keyline(f'{no_star},command="x" {k}').options
    assert not any(opts.allowed().values()) and not opts.restrict


def test_sshd_quirks_of_the_option_grammar(keys: dict[str, str]) -> None:
    k = keys["ed25519"]
    assert keyline(f",restrict {k}").options.restrict  # an empty option is skipped
    assert keyline(f"restrict, {k}").options.restrict  # a comma before the space is accepted
    assert keyline(f"restrict\t{k}").options.restrict
    assert keyline(f"  \t restrict {k}").options.restrict
    assert "unknown key option" in badline(f"restrictx {k}").reason  # prefix match, then junk
    assert "unknown key option" in badline(f"no-restrict {k}").reason
    assert "unknown key option" in badline(f"bogus {k}").reason
    with pytest.raises(authkeys.OptionsError, match="unexpected end-of-options"):
        authkeys.parse_options("restrict,")
    assert "multiple" in badline(f'command="a",command="b" {k}').reason
    assert "missing start quote" in badline(f"command=x {k}").reason
    assert "quote is not closed" in badline(f'command="x {k}').reason
    assert "invalid expires time" in badline(f'expiry-time="20241301" {k}').reason
    assert keyline(f'expiry-time="20991231Z",restrict {k}').options.first("expiry-time") == "20991231Z"
    assert "invalid environment" in badline(f'environment="1 2" {k}').reason
    assert keyline(f'environment="A_1=x y" {k}').options.first("environment") == "A_1=x y"
    assert "permission port" in badline(f'permitopen="host" {k}').reason
    assert keyline(f'permitlisten="8080",permitopen="[::1]:22" {k}').options.values("permitopen") == ["[::1]:22"]


def test_blank_and_comment_lines_are_nothing(keys: dict[str, str]) -> None:
    for text in ("", "   ", "\t", "# " + keys["ed25519"], "  #x", "\r", " \r "):
        assert parse_line(text, 1) is None


# --------------------------------------------------------------------------- hostile content


def test_options_smuggled_in_the_comment_are_not_options(keys: dict[str, str]) -> None:
    kl = keyline(f'{keys["ed25519"]} command="borg-gate --client x",restrict')
    assert kl.options.items == ()
    assert kl.options.command is None
    assert kl.key.comment.startswith("ed25519@test command=")


def test_newline_inside_quotes_splits_the_line_as_sshd_does(keys: dict[str, str]) -> None:
    data = f'command="borg-gate --client a\n{keys["ed25519"]}",restrict\n'.encode()
    first, second = parse_file(data)
    assert isinstance(first, BadLine) and first.number == 1
    assert isinstance(second, KeyLine) and second.number == 2
    assert second.options.command is None  # the key is usable, without any forced command


def test_crlf_lines_still_work(keys: dict[str, str]) -> None:
    bare = keys["ed25519"].rsplit(" ", 1)[0]
    data = f'command="borg-gate --client a",restrict {keys["ed25519"]}\r\n{bare}\r\n# c\r\n\r\n'.encode()
    one, two = parse_file(data)
    assert isinstance(one, KeyLine) and isinstance(two, KeyLine)
    assert one.options.command == "borg-gate --client a"
    assert one.key.comment == "ed25519@test\r"
    assert two.key.blob == one.key.blob  # the \r ends up in the base64 token, which b64_pton skips


def test_nul_ends_the_line(keys: dict[str, str]) -> None:
    kl = keyline(f'command="borg-gate --client a",restrict {keys["ed25519"]}\0 junk')
    assert kl.key.comment == "ed25519@test"
    assert parse_line("\0" + keys["ed25519"], 1) is None


def test_very_long_lines(keys: dict[str, str]) -> None:
    long_comment = "c" * (1 << 20)
    assert keyline(f"restrict {keys['ed25519']} {long_comment}").key.comment.endswith("c" * 100)
    value = "x" * 200_000
    kl = keyline(f'command="{value}",restrict {keys["ed25519"]}')
    assert kl.options.command == value
    many = ",".join(["no-pty"] * 50_000)
    assert keyline(f"{many} {keys['ed25519']}").options.allowed()["pty"] is False
    assert "quote is not closed" in badline('command="' + "a" * 500_000).reason


def test_undecodable_bytes_survive(keys: dict[str, str]) -> None:
    data = b'command="borg-gate --client a \xff",restrict ' + keys["ed25519"].encode() + b"\n"
    (kl,) = parse_file(data)
    assert isinstance(kl, KeyLine)
    assert kl.options.command is not None and kl.options.command.encode("utf-8", "surrogateescape").endswith(b"\xff")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([*'ab ,="\\\t#\r-', "restrict", "command=", "no-pty"]), max_size=30).map("".join))
def test_parser_never_crashes(keys: dict[str, str], prefix: str) -> None:
    for text in (prefix, prefix + " " + keys["ed25519"], keys["ed25519"] + prefix):
        parsed = parse_line(text, 1)
        assert parsed is None or isinstance(parsed, KeyLine | BadLine)


# --------------------------------------------------------------------------- writing lines

OPTION_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r\0"), max_size=40)


@given(OPTION_TEXT)
def test_quote_option_value_round_trips_or_refuses(value: str) -> None:
    try:
        quoted = authkeys.quote_option_value(value)
    except ValueError:
        assert '\\"' in value or value.endswith("\\")
        return
    back, end = authkeys.dequote(quoted + ",rest", 0)
    assert back == value
    assert end == len(quoted)
    assert authkeys.advance_past_options(quoted + " k") == len(quoted) or " " not in quoted


def test_format_line_is_what_the_issue_shows(keys: dict[str, str]) -> None:
    key = keyline(keys["ed25519"]).key
    line = authkeys.format_line(["borg-gate", "--client", "web1"], key)
    assert line == f'command="borg-gate --client web1",restrict {keys["ed25519"]}'
    spaced = authkeys.format_line(["/opt/borg gate/bin/borg-gate", "--restrict-to-path", "/srv/a b/{client}"], key)
    assert spaced.startswith("command=\"'/opt/borg gate/bin/borg-gate' --restrict-to-path '/srv/a b/{client}'\",")
    with pytest.raises(ValueError):
        authkeys.shell_word("it's")


# --------------------------------------------------------------------------- the shell

SHELLS = ["/bin/sh", "/bin/bash"]


def shell_argv(shell: str, text: str) -> list[str]:
    """The words the shell makes of text (as arguments; a for list expands the same way)."""
    out = subprocess.run(
        [shell, "-c", f"for w in {text}\ndo printf '%s\\0' \"$w\"; done"],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return out.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("borg-gate --client a", ["borg-gate", "--client", "a"]),
        ("  borg-gate\t--client   a  ", ["borg-gate", "--client", "a"]),
        ("exec /usr/bin/borg-gate", ["/usr/bin/borg-gate"]),
        ("borg-gate --restrict-to-path '/srv/a b'", ["borg-gate", "--restrict-to-path", "/srv/a b"]),
        ('borg-gate --restrict-to-path "/srv/a b"', ["borg-gate", "--restrict-to-path", "/srv/a b"]),
        ("borg-gate a\\ b ''", ["borg-gate", "a b", ""]),
        ("borg-gate /srv/{client}", ["borg-gate", "/srv/{client}"]),
        ('borg-gate "a\\"b" "c\\\\d" "e\\f"', ["borg-gate", 'a"b', "c\\d", "e\\f"]),
    ],
)
def test_split_command(text: str, words: list[str]) -> None:
    assert authkeys.split_command(text) == words


@pytest.mark.parametrize(
    "text",
    [
        "cd /srv; borg serve",
        "borg serve && sh",
        "borg serve | tee",
        "borg serve > /tmp/x",
        "borg serve < /dev/null",
        "borg-gate $HOME",
        'borg-gate "$HOME"',
        "borg-gate `id`",
        "borg-gate $(id)",
        "borg-gate *",
        "borg-gate a?",
        "borg-gate [ab]",
        "borg-gate ~/x",
        "borg-gate # comment",
        "borg-gate /srv/{a,b}",
        "borg-gate /srv/{1..3}",
        "borg-gate 'open",
        'borg-gate "open',
        "borg-gate trailing\\",
        "borg-gate a\nsh",
        "FOO=1 borg-gate",
        "if true; then sh; fi",
        "exec -a sshd borg-gate",
        "",
        "   ",
        "(borg-gate)",
    ],
)
def test_split_command_refuses_shell_syntax(text: str) -> None:
    with pytest.raises(authkeys.ShellError):
        authkeys.split_command(text)


SHELL_ALPHABET = st.sampled_from([*"ab -/.{},'\"\\=:%@+_!^~#*?[]$;&|<>()\t", "{client}", "{a..b}", "é"])


@settings(max_examples=150, deadline=None)
@given(st.lists(SHELL_ALPHABET, min_size=1, max_size=25).map("".join))
def test_accepted_commands_are_split_as_sh_and_bash_split_them(text: str) -> None:
    try:
        words = authkeys.split_command("printf-dummy " + text)
    except authkeys.ShellError:
        return
    for shell in SHELLS:
        assert shell_argv(shell, text) == words[1:], shell


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12), min_size=1, max_size=4))
def test_shell_words_come_back_unchanged_from_sh_and_bash(words: list[str]) -> None:
    try:
        text = " ".join(authkeys.shell_word(w) for w in words)
    except ValueError:
        assert any(ch in "'\"\\" or not ch.isprintable() for w in words for ch in w)
        return
    assert authkeys.split_command("x " + text)[1:] == words
    for shell in SHELLS:
        assert shell_argv(shell, text) == words, shell
