"""The one rendering of untrusted text for a terminal: no control character gets through.

Files in the shared state dir, the log and key files are written by people the reader of
``status`` or ``check`` (often root) does not trust. A raw ESC, CSI (U+009B), DEL or bidi
override from such a file would reach root's terminal as an escape sequence (retitle,
clear screen, rewrite earlier lines). Every character ``str.isprintable`` rejects (C0, DEL,
C1, line and paragraph separators, format characters such as U+202E, unassigned and
surrogate code points) is shown as a Python-style escape instead. The backslash is left as
it is, so the rendering is idempotent: a layer may apply it to text another layer already
rendered (a refusal reason inside a check finding) without doubling anything.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final


_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped; printable text is returned unchanged."""
    if text.isprintable():
        return text  # the common case, at C speed
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
