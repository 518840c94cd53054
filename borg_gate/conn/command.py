"""Vetting the client's SSH_ORIGINAL_COMMAND: only ``borg serve`` with options real clients send.

Pure: text in, a ClientRequest or a Refusal out. What is accepted is a table, checked
against what borg clients 1.1 to 2.0b25 put on the line (see BORG-FACTS): log level
flags, ``--debug-topic``, ``--umask=``/``--storage-quota=`` (accepted and dropped, as borg
itself ignores them from a client) and 2.0b22+'s ``--rest --backend FILE:<path>``.
Everything else, from ``sh -c`` to ``--restrict-to-path /``, is refused.
"""

from __future__ import annotations

from borg_gate.base import patterns
from borg_gate.base.errors import bad_command, shown
from borg_gate.base.values import frozen

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

MAX_COMMAND_LENGTH: Final = 4096
MAX_DEBUG_TOPICS: Final = 32

# A program name as a client may ask for it (patterns.binary_name): basename of
# --remote-path / BORG_REMOTE_PATH. Words sshd passes before argv[0] (borg 1.1's
# BORG_HOSTNAME_IS_UNIQUE=no, patterns.env_assignment) are dropped, never applied.
MAX_ENV_WORDS: Final = 8

LOG_LEVELS: Final[dict[str, str]] = {
    "--critical": "critical",
    "--error": "error",
    "--warning": "warning",
    "--info": "info",
    "-v": "info",
    "--verbose": "info",
    "--debug": "debug",
}


def file_backend(text: str) -> bool:
    """``FILE:.+`` (DOTALL): the only borgstore backend a restricted borg serve --rest accepts."""
    return text.startswith("FILE:") and len(text) > len("FILE:")


# Options that take a value, with the check the value must pass.
VALUE_OPTIONS: Final[dict[str, Callable[[str], bool]]] = {
    "--debug-topic": patterns.debug_topic,
    "--umask": patterns.umask,
    "--storage-quota": patterns.storage_quota,
    "--backend": file_backend,
}

# Options a client must never set: they belong to the key line and config.
SERVER_ONLY: Final = frozenset(
    {
        "--restrict-to-path",
        "--restrict-to-repository",
        "--append-only",
        "--permissions",
        "--socket",
        "--debug-profile",
    }
)

LOG_FLAGS: Final = {
    "critical": "--critical",
    "error": "--error",
    "warning": "--warning",
    "info": "--info",
    "debug": "--debug",
}


@frozen
class ClientRequest:
    """What the client asked for, reduced to the parts the gate passes on."""

    program: str  # basename of the client's argv[0], e.g. "borg", "borg2", "borg-1.4"
    log_level: str | None = None
    debug_topics: tuple[str, ...] = ()
    rest: bool = False
    backend: str | None = None  # "FILE:<path>", rest mode only
    dropped: tuple[str, ...] = ()  # accepted from the client and deliberately not passed on

    @property
    def backend_path(self) -> str | None:
        return None if self.backend is None else self.backend.removeprefix("FILE:")

    def serve_options(self) -> list[str]:
        """The vetted client options, as borg serve will get them on its argv."""
        opts: list[str] = []
        if self.log_level is not None:
            opts.append(LOG_FLAGS[self.log_level])
        opts.extend(f"--debug-topic={topic}" for topic in self.debug_topics)
        if self.rest:
            assert self.backend is not None
            opts.extend(["--rest", f"--backend={self.backend}"])
        return opts


def _check_characters(text: str) -> None:
    if len(text) > MAX_COMMAND_LENGTH:
        raise bad_command(f"command too long ({len(text)} characters, at most {MAX_COMMAND_LENGTH})")
    for ch in text:
        if ch != " " and not ch.isprintable():
            raise bad_command(f"control character {ch!a} in command")


# The only characters shlex's POSIX split treats differently from any other non-blank one.
SHLEX_SPECIAL: Final = ("'", '"', "\\")


def split_words(text: str) -> list[str]:
    """``shlex.split(text, comments=False, posix=True)``, without importing shlex for plain words.

    What clients send (``borg serve --info``, ``borg serve --rest --backend FILE:/p``) has no
    quotes and no backslash; then shlex only splits at runs of its whitespace, ' \\t\\r\\n'.
    Not ``str.split()``: it also splits at \\x0b, \\x0c, \\x1c-\\x1f, \\x85, \\xa0 and other
    Unicode spaces, which shlex keeps inside a word. Raises shlex's ValueError where it does.
    """
    if any(ch in text for ch in SHLEX_SPECIAL):
        import shlex  # quoting is never sent by a borg client: only such text pays for the import

        return shlex.split(text, comments=False, posix=True)
    return [word for word in text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split(" ") if word]


def _split(text: str) -> list[str]:
    try:
        return split_words(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise bad_command(f"cannot parse command: {exc}") from None


def parse_command(text: str | None) -> ClientRequest:
    """Vet SSH_ORIGINAL_COMMAND; raise Refusal(BAD_COMMAND) for anything but a vetted borg serve."""
    if text is None:
        raise bad_command("interactive login is not allowed: this key only runs borg serve")
    _check_characters(text)
    words = _split(text)
    env_words = 0
    while words and patterns.env_assignment(words[0]):
        words.pop(0)
        env_words += 1
    if env_words > MAX_ENV_WORDS:
        raise bad_command("too many VAR=value words before the command")
    if not words:
        raise bad_command("empty command: this key only runs borg serve")
    program = words[0].rsplit("/", 1)[-1]
    if not patterns.binary_name(program):
        raise bad_command(f"only borg serve is allowed here, not {shown(words[0], 60)!r}")
    if len(words) < 2 or words[1] != "serve":
        got = shown(" ".join(words[:2]), 60)
        raise bad_command(f"only borg serve is allowed here, not {got!r}")
    return _parse_serve_options(program, words[2:])


def _parse_serve_options(program: str, args: list[str]) -> ClientRequest:
    log_level: str | None = None
    topics: list[str] = []
    dropped: list[str] = []
    rest = False
    backend: str | None = None
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        name, eq, value = word.partition("=")
        if word in LOG_LEVELS:
            log_level = LOG_LEVELS[word]  # argparse semantics: the last one wins
        elif word == "--rest":
            rest = True
        elif name in VALUE_OPTIONS:
            if not eq:
                if i >= len(args):
                    raise bad_command(f"option {name} needs a value")
                value = args[i]
                i += 1
            if not VALUE_OPTIONS[name](value):
                if name == "--backend":
                    raise bad_command(f"only FILE: backends are served, not {shown(value, 60)!r}")
                raise bad_command(f"bad value for {name}: {shown(value, 60)!r}")
            if name == "--debug-topic":
                topics.append(value)
                if len(topics) > MAX_DEBUG_TOPICS:
                    raise bad_command("too many --debug-topic options")
            elif name == "--backend":
                backend = value
            else:
                dropped.append(f"{name}={value}")
        elif name in SERVER_ONLY:
            raise bad_command(f"option {name} is set by the server, not by the client")
        elif word.startswith("-"):
            raise bad_command(f"option not allowed: {shown(name, 60)}")
        else:
            raise bad_command(f"unexpected argument to borg serve: {shown(word, 60)!r}")
    if rest != (backend is not None):
        raise bad_command("--rest and --backend go together")
    return ClientRequest(
        program=program,
        log_level=log_level,
        debug_topics=tuple(topics),
        rest=rest,
        backend=backend,
        dropped=tuple(dropped),
    )
