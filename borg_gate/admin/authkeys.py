"""authorized_keys lines as OpenSSH's sshd reads them, and as a shell runs their ``command=``.

The rules mirror OpenSSH 10.0 (auth2-pubkeyfile.c, authfile.c, auth-options.c, sshkey.c), and
so Debian 13's sshd; Debian 12's 9.2 reads lines the same way but still knows DSA keys, which its
default PubkeyAcceptedAlgorithms never accepts (OpenSSH 7.0+): a DSA line is useless to both:
- the file is split at ``\\n`` only (getline); a NUL ends the line (C strings); leading spaces
  and tabs are skipped; empty lines and lines starting with ``#`` are ignored;
- sshd first tries to read a key at the start of the line, and only when that fails reads
  options up to the first space or tab outside double quotes (``\\"`` never toggles quoting);
- options are case-insensitive, flags are matched as prefixes (``restrictx`` is an error, not
  ``restrict``), ``no-`` negates the negatable ones, values are double-quoted and only ``\\"``
  is unescaped, later flags override earlier ones (``restrict,pty`` has a pty);
- a key is ``type base64 [comment]``; the base64 must decode (whitespace inside is skipped,
  as b64_pton does, which is how a CRLF line still works) to a blob whose own type matches
  the line's and whose fields are well formed; the comment is never read by sshd.
A line sshd cannot use becomes a :class:`BadLine` with sshd's reason.

sshd runs the ``command=`` text as ``$SHELL -c TEXT``. :func:`split_command` gives the argv a
POSIX shell (or bash) makes of it in the simple cases, and refuses everything that the shell
would treat specially: separators, pipes, redirections, expansions, globs, comments.

Pure functions only; reading and writing files is the callers' job.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

# --------------------------------------------------------------------------- key types


@dataclass(frozen=True)
class KeyType:
    name: str  # as written on the line (peek_type_nid accepts these)
    family: str  # the key the blob holds; line and blob must agree on it
    curve: str | None = None  # ECDSA: nistp256 / nistp384 / nistp521
    cert: bool = False
    sk: bool = False  # FIDO keys carry an application string after the public key


def _types() -> dict[str, KeyType]:
    plain = [
        KeyType("ssh-ed25519", "ed25519"),
        KeyType("sk-ssh-ed25519@openssh.com", "sk-ed25519", sk=True),
        KeyType("ssh-rsa", "rsa"),
        KeyType("rsa-sha2-256", "rsa"),  # signature names, accepted as RSA key types by sshkey_read
        KeyType("rsa-sha2-512", "rsa"),
        KeyType("ecdsa-sha2-nistp256", "ecdsa", "nistp256"),
        KeyType("ecdsa-sha2-nistp384", "ecdsa", "nistp384"),
        KeyType("ecdsa-sha2-nistp521", "ecdsa", "nistp521"),
        KeyType("sk-ecdsa-sha2-nistp256@openssh.com", "sk-ecdsa", "nistp256", sk=True),
        KeyType("webauthn-sk-ecdsa-sha2-nistp256@openssh.com", "sk-ecdsa", "nistp256", sk=True),
    ]
    certs = [
        KeyType(t.name.replace("@openssh.com", "") + "-cert-v01@openssh.com", t.family + "-cert", t.curve, True, t.sk)
        for t in plain
        if not t.name.startswith("webauthn")
    ]
    return {t.name: t for t in plain + certs}


KEY_TYPES: Final = _types()
# Types sshd 10 no longer knows (DSA went in 10.0); 7.0 to 9.x read them but never accepted them by default.
RETIRED_TYPES: Final = {
    name: "DSA key (ssh-dss): OpenSSH 10 cannot read DSA keys, and 7.0 to 9.x accept them only if"
    " re-enabled; make an ed25519 key"
    for name in ("ssh-dss", "ssh-dss-cert-v01@openssh.com")
}
# The type names ssh-keygen writes; what authorize prints for a key.
CANONICAL: Final = {
    "ed25519": "ssh-ed25519",
    "sk-ed25519": "sk-ssh-ed25519@openssh.com",
    "rsa": "ssh-rsa",
    "sk-ecdsa": "sk-ecdsa-sha2-nistp256@openssh.com",
}

# NIST curves: field prime p, coefficient b (a = -3), group order n; for the on-curve check
# that OpenSSL does when sshd loads an ECDSA key.
CURVES: Final = {
    "nistp256": (
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    "nistp384": (
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
        0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
    "nistp521": (
        (1 << 521) - 1,
        0x051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
        0x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409,
    ),
}
MAX_BIGNUM: Final = 16384 // 8  # sshbuf's limit, bytes
MIN_RSA_BITS: Final = 1024  # sshkey_check_rsa_length
ED25519_PK_SIZE: Final = 32


class KeyFormatError(ValueError):
    """Not a public key sshd would load; the message says why."""


class OptionsError(ValueError):
    """An option string sshd would refuse; the message is sshd's reason."""


class ShellError(ValueError):
    """A command text the shell would not run as one plain argv."""


@dataclass(frozen=True)
class PublicKey:
    type: str  # as on the line
    blob: bytes
    comment: str = ""

    @property
    def key_type(self) -> KeyType:
        return KEY_TYPES[self.type]

    @property
    def blob_type(self) -> str:
        (length,) = struct.unpack(">I", self.blob[:4])
        return self.blob[4 : 4 + length].decode("ascii", "replace")

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """SHA256:… as ssh-keygen -l and sshd's logs show it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    @property
    def rsa_bits(self) -> int | None:
        if self.key_type.family != "rsa":
            return None
        reader = _Reader(self.blob)
        reader.cstring()
        reader.mpint()
        return reader.mpint().bit_length()

    def same_key(self, other: PublicKey) -> bool:
        """What sshkey_equal decides: the same public key, whatever the line calls its type."""
        return self.blob == other.blob

    def render(self, type_name: str | None = None) -> str:
        text = f"{type_name or self.type} {self.base64}"
        return f"{text} {self.comment}" if self.comment else text


# --------------------------------------------------------------------------- key blobs


class _Reader:
    """The SSH wire format of a public key blob (RFC 4251 strings and mpints)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def string(self) -> bytes:
        if len(self.data) - self.pos < 4:
            raise KeyFormatError("key blob is truncated")
        (length,) = struct.unpack(">I", self.data[self.pos : self.pos + 4])
        start = self.pos + 4
        if length > len(self.data) - start:
            raise KeyFormatError("key blob is truncated")
        self.pos = start + length
        return self.data[start : self.pos]

    def cstring(self) -> str:
        raw = self.string()
        if b"\0" in raw:
            raise KeyFormatError("key blob has a NUL inside a string")
        return raw.decode("utf-8", "replace")

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise KeyFormatError("key blob has a negative number")
        if len(raw) > MAX_BIGNUM + 1 or (len(raw) == MAX_BIGNUM + 1 and raw[0] != 0):
            raise KeyFormatError("key blob has a number over 16384 bits")
        return int.from_bytes(raw, "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise KeyFormatError("key blob has trailing data")


def _check_ec_point(curve: str, point: bytes) -> None:
    p, b, n = CURVES[curve]
    size = (p.bit_length() + 7) // 8
    if len(point) != 1 + 2 * size or point[0] != 4:
        raise KeyFormatError(f"ECDSA key is not an uncompressed {curve} point")
    x = int.from_bytes(point[1 : 1 + size], "big")
    y = int.from_bytes(point[1 + size :], "big")
    if x >= p or y >= p or (y * y - (x * x * x - 3 * x + b)) % p:
        raise KeyFormatError(f"ECDSA key is not on curve {curve}")
    half = n.bit_length() // 2
    if x.bit_length() <= half or y.bit_length() <= half or x >= n - 1 or y >= n - 1:
        raise KeyFormatError("ECDSA key has an invalid public value")


def _check_blob(line_type: KeyType, blob: bytes) -> None:
    """sshkey_fromb plus the type check of sshkey_read: raise KeyFormatError when sshd would fail."""
    reader = _Reader(blob)
    name = reader.cstring()
    blob_type = KEY_TYPES.get(name)
    if blob_type is None:
        raise KeyFormatError(f"key blob holds an unknown key type {name[:60]!r}")
    if blob_type.family != line_type.family:
        raise KeyFormatError(f"key blob holds a {name} key, the line says {line_type.name}")
    if blob_type.cert:
        reader.string()  # nonce; the certificate body is beyond what a key line check needs
        return
    family = blob_type.family
    if family in ("ed25519", "sk-ed25519"):
        if len(reader.string()) != ED25519_PK_SIZE:
            raise KeyFormatError("ed25519 key is not 32 bytes")
    elif family == "rsa":
        reader.mpint()
        if reader.mpint().bit_length() < MIN_RSA_BITS:
            raise KeyFormatError(f"RSA key is shorter than {MIN_RSA_BITS} bits")
    else:  # ecdsa, sk-ecdsa
        curve = reader.cstring()
        if curve != blob_type.curve or curve != line_type.curve:
            raise KeyFormatError(f"ECDSA curve {curve[:20]!r} does not match the key type")
        _check_ec_point(curve, reader.string())
    if blob_type.sk:
        reader.cstring()  # the FIDO application, e.g. "ssh:"
    reader.done()


B64_SPACE: Final = re.compile(r"[\n\v\f\r]")  # isspace() minus space and tab, which end the token


def decode_base64(token: str) -> bytes:
    """b64_pton: whitespace skipped, padding required, nothing but the canonical encoding."""
    text = B64_SPACE.sub("", token)
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFormatError("key is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != text:
        raise KeyFormatError("key is not valid base64")
    return blob


def _token(text: str, pos: int) -> int:
    """End of the word starting at pos (strcspn " \\t")."""
    m = WORD_END.search(text, pos)
    return m.start() if m else len(text)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


WORD_END: Final = re.compile(r"[ \t]")


def read_key(text: str) -> PublicKey:
    """sshkey_read: ``type base64 [comment]`` at the start of text, or KeyFormatError."""
    end = _token(text, 0)
    if end == len(text):
        raise KeyFormatError("no key: a key is a type, a space and base64")
    name = text[:end]
    line_type = KEY_TYPES.get(name)
    if name in RETIRED_TYPES:
        raise KeyFormatError(RETIRED_TYPES[name])
    if line_type is None:
        raise KeyFormatError(f"unknown key type {name[:60]!r}")
    start = _skip_space(text, end)
    if start == len(text):
        raise KeyFormatError("key type without key")
    stop = _token(text, start)
    blob = decode_base64(text[start:stop])
    _check_blob(line_type, blob)
    return PublicKey(name, blob, text[_skip_space(text, stop) :])


# --------------------------------------------------------------------------- options

# Flag options in sshauthopt_parse's order, with whether "no-" may negate them.
FLAGS: Final = (
    ("restrict", False),
    ("cert-authority", False),
    ("port-forwarding", True),
    ("agent-forwarding", True),
    ("x11-forwarding", True),
    ("touch-required", True),
    ("verify-required", True),
    ("pty", True),
    ("user-rc", True),
)
VALUED: Final = (
    "command",
    "principals",
    "from",
    "expiry-time",
    "environment",
    "permitopen",
    "permitlisten",
    "tunnel",
)
SINGLE: Final = frozenset({"command", "principals", "from"})  # "multiple … clauses" otherwise
RESTRICTED: Final = ("port-forwarding", "agent-forwarding", "x11-forwarding", "pty", "user-rc")
ENV_MAX: Final = 1024
PERMIT_MAX: Final = 4096
ENV_NAME_RE: Final = re.compile(r"[A-Za-z0-9_]+")
TIME_RE: Final = re.compile(r"([0-9]{8}|[0-9]{12}|[0-9]{14})(Z|UTC)?", re.IGNORECASE)


@dataclass(frozen=True)
class Option:
    name: str  # lowercase: "restrict", "no-pty", "pty", "command", "from", …
    value: str | None = None  # dequoted, for name="value" options


@dataclass(frozen=True)
class Options:
    """A line's options in order, and what sshd makes of them."""

    items: tuple[Option, ...] = ()

    def values(self, name: str) -> list[str]:
        return [o.value for o in self.items if o.name == name and o.value is not None]

    def first(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    @property
    def command(self) -> str | None:
        return self.first("command")

    @property
    def restrict(self) -> bool:
        return any(o.name == "restrict" for o in self.items)

    def allowed(self) -> dict[str, bool]:
        """Each of restrict's features after all flags are applied in order (sshd's defaults: on)."""
        state = dict.fromkeys(RESTRICTED, True)
        for o in self.items:
            if o.name == "restrict":
                state = dict.fromkeys(RESTRICTED, False)
            elif o.name.removeprefix("no-") in state:
                state[o.name.removeprefix("no-")] = not o.name.startswith("no-")
        return state

    def names(self) -> list[str]:
        return [o.name for o in self.items]


def _match_flag(text: str, pos: int) -> tuple[Option, int] | None:
    for flag, negatable in FLAGS:
        at = pos
        negate = negatable and text[at : at + 3].lower() == "no-"
        if negate:
            at += 3
        if text[at : at + len(flag)].lower() == flag:
            return Option(("no-" if negate else "") + flag), at + len(flag)
    return None


def dequote(text: str, pos: int) -> tuple[str, int]:
    """opt_dequote: a double-quoted value at pos, ``\\"`` unescaped; (value, end after quote)."""
    if pos >= len(text) or text[pos] != '"':
        raise OptionsError("missing start quote")
    out = []
    i = pos + 1
    while True:
        m = QUOTE_SCAN.search(text, i)
        if m is None:
            raise OptionsError("missing end quote")
        out.append(text[i : m.start()])
        if m.group() == '"':
            return "".join(out), m.end()
        out.append('"')
        i = m.end()


QUOTE_SCAN: Final = re.compile(r'\\"|"')


def _check_value(name: str, value: str, counts: dict[str, int]) -> None:
    counts[name] = counts.get(name, 0) + 1
    if name in SINGLE and counts[name] > 1:
        raise OptionsError(f'multiple "{name}" clauses')
    if name == "expiry-time" and not _valid_time(value):
        raise OptionsError("invalid expires time")
    if name == "environment":
        if counts[name] > ENV_MAX + 1:
            raise OptionsError("too many environment strings")
        if not ENV_NAME_RE.fullmatch(value.partition("=")[0]) or "=" not in value:
            raise OptionsError("invalid environment string")
    if name in ("permitopen", "permitlisten"):
        if counts[name] > PERMIT_MAX + 1:
            raise OptionsError("too many permission directives")
        _check_permit(value, name == "permitlisten")
    if name == "tunnel" and not re.fullmatch(r"any|[0-9]{1,10}", value, re.IGNORECASE):
        raise OptionsError("invalid tun device")


def _valid_time(value: str) -> bool:
    """parse_absolute_time: YYYYMMDD[HHMM[SS]], optionally Z or UTC, a real date and time."""
    m = TIME_RE.fullmatch(value)
    if m is None:
        return False
    digits = m.group(1)
    try:
        datetime.datetime.strptime(digits, {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)])
    except ValueError:
        return False
    return True


def _check_permit(value: str, bare_port: bool) -> None:
    if bare_port and ":" not in value:
        value = "*:" + value
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise OptionsError("invalid permission hostname")
        rest = value[close + 1 :]
        if rest[:1] not in (":", "/"):
            raise OptionsError("invalid permission hostname")
        port = rest[1:]
    else:
        m = re.search(r"[:/]", value)
        if m is None:
            raise OptionsError("invalid permission port")
        port = value[m.end() :]
    if port != "*" and not (port.isdigit() and 0 < int(port) <= 65535):
        raise OptionsError("invalid permission port")  # sshd also takes service names; not a borg key's business


def parse_options(text: str) -> Options:
    """sshauthopt_parse: options from the start of text up to the first unquoted space or tab."""
    items: list[Option] = []
    counts: dict[str, int] = {}
    pos = 0
    while pos < len(text) and text[pos] not in " \t":
        flag = _match_flag(text, pos)
        if flag is not None:
            items.append(flag[0])
            pos = flag[1]
        else:
            for name in VALUED:
                if text[pos : pos + len(name)].lower() == name and text[pos + len(name) : pos + len(name) + 1] == "=":
                    value, pos = dequote(text, pos + len(name) + 1)
                    _check_value(name, value, counts)
                    items.append(Option(name, value))
                    break
        if pos >= len(text) or text[pos] in " \t":
            break
        if text[pos] != ",":
            raise OptionsError("unknown key option")
        pos += 1
        if pos >= len(text):
            raise OptionsError("unexpected end-of-options")
    return Options(tuple(items))


def advance_past_options(text: str) -> int:
    """sshkey_advance_past_options: index of the first space or tab outside quotes; -1 if a quote is open."""
    quoted = False
    pos = 0
    while True:
        m = OPTIONS_SCAN.search(text, pos)
        if m is None:
            return -1 if quoted else len(text)
        found = m.group()
        pos = m.end()
        if found == '"':
            quoted = not quoted
        elif found in (" ", "\t") and not quoted:
            return m.start()


OPTIONS_SCAN: Final = re.compile(r'\\"|["\t ]')


# --------------------------------------------------------------------------- lines


@dataclass(frozen=True)
class KeyLine:
    """A line sshd would use: its options and its key."""

    number: int
    text: str
    options: Options
    key: PublicKey
    options_text: str = ""  # as written, before the key


@dataclass(frozen=True)
class BadLine:
    """A line sshd skips: the key it names (if any) cannot log in with it."""

    number: int
    text: str
    reason: str


def parse_line(line: str, number: int = 0) -> KeyLine | BadLine | None:
    """One line (without its newline) as auth_check_authkey_line reads it; None for blank and comment lines."""
    line = line.split("\0", 1)[0]
    cp = line[_skip_space(line, 0) :]
    if not cp or cp[0] in "\n#":
        return None
    try:
        return KeyLine(number, line, Options(), read_key(cp))
    except KeyFormatError as exc:
        if cp[: _token(cp, 0)] in KEY_TYPES or cp[: _token(cp, 0)] in RETIRED_TYPES:
            # A key type cannot be read as options either: sshd skips the line for this reason.
            return BadLine(number, line, str(exc))
    end = advance_past_options(cp)
    if end < 0:
        return BadLine(number, line, "invalid key option string (a quote is not closed)")
    try:
        key = read_key(cp[_skip_space(cp, end) :])
    except KeyFormatError as exc:
        if not cp[:end].strip(" \t\r\n\v\f"):
            return None  # only whitespace: sshd finds nothing here either
        return BadLine(number, line, f"no key after the options: {exc}")
    try:
        options = parse_options(cp)
    except OptionsError as exc:
        return BadLine(number, line, f"bad key options: {exc}")
    return KeyLine(number, line, options, key, cp[:end])


def split_lines(data: bytes) -> Iterator[tuple[int, str]]:
    """(number, text) per line as getline gives them; undecodable bytes survive as surrogates."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        yield number, raw.decode("utf-8", "surrogateescape")


def parse_file(data: bytes) -> list[KeyLine | BadLine]:
    out: list[KeyLine | BadLine] = []
    for number, text in split_lines(data):
        parsed = parse_line(text, number)
        if parsed is not None:
            out.append(parsed)
    return out


# --------------------------------------------------------------------------- writing


def quote_option_value(value: str) -> str:
    """``"value"`` as opt_dequote reads it back exactly, or ValueError when no quoting can."""
    if any(ch in "\n\r\0" for ch in value):
        raise ValueError("an option value cannot hold a line break or NUL")
    if '\\"' in value or value.endswith("\\"):
        # sshd has no escape for a backslash: \" always means a quote
        raise ValueError("an option value cannot hold a backslash before a quote or at its end")
    return '"' + value.replace('"', '\\"') + '"'


SHELL_SAFE: Final = re.compile(r"[A-Za-z0-9_./:@%+=-]+")
CLIENT_PLACEHOLDER: Final = "{client}"


def shell_word(word: str) -> str:
    """word quoted so that sh and bash give it back unchanged, and sshd's quoting leaves it alone.

    Single quotes are the only shell quoting without escapes; a word that needs anything
    else (a single quote, a double quote, a backslash, a control character) is refused.
    """
    if word and SHELL_SAFE.fullmatch(word.replace(CLIENT_PLACEHOLDER, "")) and not word.startswith("="):
        return word
    if any(ch in "'\"\\" or not ch.isprintable() for ch in word):
        raise ValueError(f"cannot quote {word[:60]!r} for a key line: it holds a quote, backslash or control character")
    return f"'{word}'"


def format_line(command: Sequence[str], key: PublicKey, extra: Sequence[Option] = ()) -> str:
    """``command="…",restrict[,extra] type base64 comment`` for an argv."""
    text = " ".join(shell_word(w) for w in command)
    opts = [f"command={quote_option_value(text)}", "restrict"]
    opts.extend(o.name if o.value is None else f"{o.name}={quote_option_value(o.value)}" for o in extra)
    return ",".join(opts) + " " + key.render(CANONICAL.get(key.key_type.family, key.type))


# --------------------------------------------------------------------------- the shell

SHELL_KEYWORDS: Final = frozenset(
    [
        "!",
        "{",
        "}",
        "[[",
        "]]",
        "case",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    ]
)
OPERATORS: Final = ";&|<>()"
EXPANSIONS: Final = "$`"
GLOBS: Final = "*?["


def split_command(text: str) -> list[str]:
    """The argv ``sh -c TEXT`` runs, for plain words and quoting only; ShellError for anything else."""
    words: list[str] = []
    word: list[str] = []
    raw: list[str] = []  # the word's unquoted characters, for brace expansion
    in_word = False
    i = 0
    n = len(text)

    def finish() -> None:
        nonlocal in_word
        if in_word:
            unquoted = "".join(raw)
            if re.search(r"\{.*(,|\.\.).*\}", unquoted, re.DOTALL):  # bash, nested or not
                raise ShellError("brace expansion ({a,b} or {x..y}) outside quotes")
            words.append("".join(word))
        word.clear()
        raw.clear()
        in_word = False

    while i < n:
        ch = text[i]
        if ch in " \t":
            finish()
            i += 1
            continue
        if not ch.isprintable():
            raise ShellError(f"control character {ch!a} in the command")
        start = not in_word
        in_word = True
        if ch == "'":
            close = text.find("'", i + 1)
            if close < 0:
                raise ShellError("a single quote is not closed")
            word.append(text[i + 1 : close])
            i = close + 1
        elif ch == '"':
            i = _double_quoted(text, i + 1, word)
        elif ch == "\\":
            if i + 1 >= n:
                raise ShellError("the command ends with a backslash")
            word.append(text[i + 1])
            i += 2
        elif ch in OPERATORS:
            raise ShellError(f"shell operator {ch!r} (;, &, |, <, >, parentheses) in the command")
        elif ch in EXPANSIONS:
            raise ShellError(f"shell expansion {ch!r} in the command")
        elif ch in GLOBS:
            raise ShellError(f"glob character {ch!r} outside quotes in the command")
        elif start and ch in "~#":
            raise ShellError("a word starting with ~ or # (tilde expansion or comment)")
        else:
            word.append(ch)
            raw.append(ch)
            i += 1
    finish()
    if words and (words[0] in SHELL_KEYWORDS or re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0])):
        raise ShellError(f"the command starts with the shell keyword or assignment {words[0][:40]!r}")
    if words and words[0] == "exec":
        words.pop(0)  # `exec prog …` runs prog in the shell's place: the same argv
        if words and words[0].startswith("-"):
            raise ShellError("exec with options (exec -a changes the program's name)")
    if not words:
        raise ShellError("the command is empty")
    return words


def _double_quoted(text: str, i: int, word: list[str]) -> int:
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return i + 1
        if ch in EXPANSIONS:
            raise ShellError(f"shell expansion {ch!r} inside double quotes in the command")
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            word.append(text[i + 1])
            i += 2
            continue
        if not ch.isprintable():
            raise ShellError(f"control character {ch!a} in the command")
        word.append(ch)
        i += 1
    raise ShellError("a double quote is not closed")
