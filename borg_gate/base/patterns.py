"""Every form of word the gate accepts, in one table: client names, binary names, versions, sizes.

These were regular expressions. ``re`` (with the enum and functools it imports) costs every
connection about 4.5 ms of CPU, half a bare interpreter's start (bench/overhead), for a
dozen anchored character-class patterns that ``str`` methods say as exactly. Each check
below names the expression it is equal to, and tests/test_patterns.py holds them to it
(hypothesis, against ``re.fullmatch``). Only ASCII counts as a letter or digit here, as in
the expressions (``str.isdigit`` would take ``"٣"``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final

DIGITS: Final = "0123456789"
LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ALNUM: Final = LETTERS + DIGITS
SIZE_UNITS: Final = "KMGTP"


def word(text: str, first: str, rest: str, max_len: int) -> bool:
    """``[first][rest]{0,max_len-1}``: one character of ``first``, then only characters of ``rest``."""
    return 0 < len(text) <= max_len and text[0] in first and not text[1:].strip(rest)


def digits(text: str, least: int = 1, most: int = 1 << 30) -> bool:
    """``[0-9]{least,most}``."""
    return least <= len(text) <= most and not text.strip(DIGITS)


def client_name(text: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``: a client, as the key line or config names it."""
    return word(text, ALNUM, ALNUM + "._-", 64)


def binary_name(text: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9._+-]{0,63}``: a borg binary's name in the config, a client's program word."""
    return word(text, ALNUM, ALNUM + "._+-", 64)


def debug_topic(text: str) -> bool:
    """``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``."""
    return word(text, ALNUM + "_", ALNUM + "_.-", 128)


def umask(text: str) -> bool:
    """``0?[0-7]{3}``."""
    return len(text) in (3, 4) and (len(text) == 3 or text[0] == "0") and not text.strip("01234567")


def borg_env_name(text: str) -> bool:
    """``BORG_[A-Z0-9_]{1,64}``."""
    return text.startswith("BORG_") and word(text[5:], LETTERS[:26] + DIGITS + "_", LETTERS[:26] + DIGITS + "_", 64)


def env_assignment(text: str) -> bool:
    """``[A-Za-z_][A-Za-z0-9_]*=.*`` (DOTALL): a ``NAME=value`` word before the program."""
    name, sep, _ = text.partition("=")
    return bool(sep) and word(name, LETTERS + "_", ALNUM + "_", len(name))


def storage_quota(text: str) -> bool:
    """``[0-9]{1,20}(\\.[0-9]{1,6})?[KMGTP]?``: borg serve's --storage-quota, as a client may send it."""
    if text[-1:] and text[-1] in SIZE_UNITS:
        text = text[:-1]
    whole, dot, fraction = text.partition(".")
    return digits(whole, 1, 20) and (not dot or digits(fraction, 1, 6))


def size(text: str) -> tuple[str, str] | None:
    """``([0-9]+(?:\\.[0-9]+)?)([KMGTP]?)``: (number, unit) of a key line's --storage-quota, or None."""
    unit = text[-1] if text[-1:] and text[-1] in SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    whole, dot, fraction = number.partition(".")
    if digits(whole) and (not dot or digits(fraction)):
        return number, unit
    return None


PRERELEASES: Final = ("a", "b", "rc")


def version(text: str) -> tuple[int, int, int, str | None, int | None, int | None] | None:
    """``([0-9]+)\\.([0-9]+)\\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\\.dev([0-9]+))?``, as numbers, or None.

    (major, minor, patch, "a"/"b"/"rc" or None, its number or None, dev number or None).
    """
    rest = text
    dev: int | None = None
    head, sep, tail = rest.rpartition(".dev")
    if sep and digits(tail):
        rest, dev = head, int(tail)
    parts = rest.split(".")
    if len(parts) != 3 or not digits(parts[0]) or not digits(parts[1]):
        return None
    patch, pre, pre_n = parts[2], None, None
    for tag in PRERELEASES:
        number, found, n = patch.partition(tag)
        if found and digits(number) and digits(n):
            patch, pre, pre_n = number, tag, int(n)
            break
    if not digits(patch):
        return None
    return int(parts[0]), int(parts[1]), int(patch), pre, pre_n, dev
