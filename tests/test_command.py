"""Vetting SSH_ORIGINAL_COMMAND: what real clients send is accepted, everything else refused.

The accepted table is what borg clients put on the line (BORG-FACTS, checked against
borg's remote.py / repository.py at tags 1.1.18, 1.2.4, 2.0.0b22); the hostile table is
what an attacker or a misconfigured client tries. Properties: nothing crashes the parser,
and an accepted request carries only vetted options. The rewritten argv checked under the
real borg grammars lives in test_policy.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from borg_gate.base import patterns
from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import command
from borg_gate.conn.command import ClientRequest, parse_command

# --------------------------------------------------------------------------- accepted: real clients

# (client, SSH_ORIGINAL_COMMAND, program, vetted serve options, dropped)
ACCEPTED = [
    # borg 1.1.x: env prefix when the hostname is not unique, always --umask
    ("1.1", "BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=077", "borg", [], ["--umask=077"]),
    ("1.1", "BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=077 --info", "borg", ["--info"], ["--umask=077"]),
    ("1.1", "borg serve --umask=077 --debug", "borg", ["--debug"], ["--umask=077"]),
    (
        "1.1",
        "BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=077 --debug --debug-topic=borg.debug.repository",
        "borg",
        ["--debug", "--debug-topic=borg.debug.repository"],
        ["--umask=077"],
    ),
    (
        "1.1",
        "BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=027 --error --storage-quota=1000000000",
        "borg",
        ["--error"],
        ["--umask=027", "--storage-quota=1000000000"],
    ),
    ("1.1", "borg serve --umask=077 --critical", "borg", ["--critical"], ["--umask=077"]),
    # borg 1.2.x / 1.4.x: no env prefix, no --umask
    ("1.2", "borg serve", "borg", [], []),
    ("1.2", "borg serve --info", "borg", ["--info"], []),
    ("1.2", "borg serve --debug", "borg", ["--debug"], []),
    ("1.2", "borg serve --error", "borg", ["--error"], []),
    ("1.2", "borg serve --critical", "borg", ["--critical"], []),
    ("1.2", "borg serve --storage-quota=1000000000", "borg", [], ["--storage-quota=1000000000"]),
    (
        "1.2",
        "borg serve --debug --debug-topic=borg.debug.repository --debug-topic=borg.debug.repository.compaction",
        "borg",
        ["--debug", "--debug-topic=borg.debug.repository", "--debug-topic=borg.debug.repository.compaction"],
        [],
    ),
    ("1.4", "/usr/local/bin/borg-1.4 serve --info", "borg-1.4", ["--info"], []),
    ("1.4", "borg-1.4 serve", "borg-1.4", [], []),
    # borg 2.0 b1-b21 over ssh://: like 1.2; a borg2 remote path names the binary
    ("2.0b5", "borg2 serve --info", "borg2", ["--info"], []),
    ("2.0b5", "/usr/bin/borg2 serve", "borg2", [], []),
    ("2.0b15", "borg serve --storage-quota=500000000000", "borg", [], ["--storage-quota=500000000000"]),
    (
        "2.0b21",
        "borg serve --debug --debug-topic=borg.debug.repository",
        "borg",
        ["--debug", "--debug-topic=borg.debug.repository"],
        [],
    ),
    # borg 2.0 b22+ rest://: the repository path is on the line
    (
        "2.0b22",
        "borg serve --rest --backend FILE:/srv/borg/alice/repo",
        "borg",
        ["--rest", "--backend=FILE:/srv/borg/alice/repo"],
        [],
    ),
    (
        "2.0b22",
        "borg2 serve --info --rest --backend FILE:/srv/borg/alice/repo",
        "borg2",
        ["--info", "--rest", "--backend=FILE:/srv/borg/alice/repo"],
        [],
    ),
    ("2.0b22", "borg serve --rest --backend=FILE:/~/repo", "borg", ["--rest", "--backend=FILE:/~/repo"], []),
    # argparse spellings a client could use: -v / --verbose mean --info; the last level wins
    ("any", "borg serve -v", "borg", ["--info"], []),
    ("any", "borg serve --verbose", "borg", ["--info"], []),
    ("any", "borg serve --warning", "borg", ["--warning"], []),
    ("any", "borg serve --debug --info", "borg", ["--info"], []),
    ("any", "borg serve --debug-topic repository", "borg", ["--debug-topic=repository"], []),
    ("any", "borg serve --umask 077", "borg", [], ["--umask=077"]),
    # words before argv[0] are dropped, never applied (borg itself does the same)
    ("any", "LD_PRELOAD=/tmp/evil.so PATH=/tmp borg serve", "borg", [], []),
]


@pytest.mark.parametrize(("client", "text", "program", "options", "dropped"), ACCEPTED)
def test_real_client_commands_are_accepted(
    client: str, text: str, program: str, options: list[str], dropped: list[str]
) -> None:
    request = parse_command(text)
    assert request.program == program
    assert request.serve_options() == options
    assert list(request.dropped) == dropped


def test_rest_request_exposes_its_path() -> None:
    request = parse_command("borg serve --rest --backend FILE:/srv/borg/alice/repo")
    assert request.rest
    assert request.backend == "FILE:/srv/borg/alice/repo"
    assert request.backend_path == "/srv/borg/alice/repo"
    assert parse_command("borg serve").backend_path is None


# --------------------------------------------------------------------------- refused: hostile

LONG = "borg serve " + "--info " * (command.MAX_COMMAND_LENGTH // 7 + 1)

# (what, SSH_ORIGINAL_COMMAND, a word the reason must contain)
HOSTILE = [
    ("interactive login", None, "interactive login"),
    ("empty", "", "empty command"),
    ("blank", "   ", "empty command"),
    ("only env words", "BORG_HOSTNAME_IS_UNIQUE=no", "empty command"),
    ("sh -c", "sh -c 'borg serve'", "only borg serve"),
    ("bash -c", "/bin/bash -c id", "only borg serve"),
    ("scp upload", "scp -t /srv/borg", "only borg serve"),
    ("scp download", "scp -f /etc/shadow", "only borg serve"),
    ("rsync", "rsync --server -vlogDtpre.iLsfxC . /srv/borg", "only borg serve"),
    ("sftp-server", "/usr/lib/openssh/sftp-server", "only borg serve"),
    ("internal-sftp", "internal-sftp", "only borg serve"),
    ("borg list", "borg list /srv/borg/alice/repo", "only borg serve"),
    ("borg init", "borg init -e none /srv/x", "only borg serve"),
    ("bare borg", "borg", "only borg serve"),
    ("borg --version", "borg --version", "only borg serve"),
    ("option before serve", "borg --foo serve", "only borg serve"),
    ("remote-path with options", "borg --debug-profile=/tmp/x serve", "only borg serve"),
    ("restrict-to-path /", "borg serve --restrict-to-path /", "set by the server"),
    ("restrict-to-path=/", "borg serve --restrict-to-path=/", "set by the server"),
    ("restrict-to-repository", "borg serve --restrict-to-repository=/srv", "set by the server"),
    ("append-only", "borg serve --append-only", "set by the server"),
    ("permissions all", "borg serve --permissions all", "set by the server"),
    ("permissions=all", "borg serve --permissions=all", "set by the server"),
    ("debug-profile", "borg serve --debug-profile /tmp/x", "set by the server"),
    ("socket", "borg serve --socket=/tmp/s", "set by the server"),
    ("remote-path", "borg serve --remote-path=/tmp/x", "not allowed"),
    ("rsh", "borg serve --rsh 'sh -c id'", "not allowed"),
    ("lock-wait", "borg serve --lock-wait 5", "not allowed"),
    ("bypass-lock", "borg serve --bypass-lock", "not allowed"),
    ("unknown option", "borg serve --frobnicate", "not allowed"),
    ("help", "borg serve --help", "not allowed"),
    ("short help", "borg serve -h", "not allowed"),
    ("level with a value", "borg serve --info=yes", "not allowed"),
    ("rest with a value", "borg serve --rest=1 --backend FILE:/x", "not allowed"),
    ("double dash", "borg serve -- --info", "not allowed"),
    ("positional", "borg serve /srv/borg", "unexpected argument"),
    ("serve twice", "borg serve serve", "unexpected argument"),
    ("semicolon word", "borg serve ; id", "unexpected argument"),
    ("semicolon glued", "borg serve;id", "only borg serve"),
    ("and-and", "borg serve && id", "unexpected argument"),
    ("pipe", "borg serve | sh", "unexpected argument"),
    ("redirect", "borg serve > /tmp/x", "unexpected argument"),
    ("command substitution", "borg serve $(id)", "unexpected argument"),
    ("backticks", "borg serve `id`", "unexpected argument"),
    ("substitution as program", "$(id) serve", "only borg serve"),
    ("backticks as program", "`id` serve", "only borg serve"),
    ("variable as program", "$SHELL serve", "only borg serve"),
    ("quoted program with space", "'borg serve'", "only borg serve"),
    ("program with a trailing slash", "borg/ serve", "only borg serve"),
    ("unbalanced single quote", "borg serve 'oops", "cannot parse"),
    ("unbalanced double quote", 'borg serve "oops', "cannot parse"),
    ("trailing backslash", "borg serve \\", "cannot parse"),
    ("newline", "borg serve\nid", "control character"),
    ("newline in option", "borg serve --info\n", "control character"),
    ("carriage return", "borg serve\r", "control character"),
    ("tab", "borg\tserve", "control character"),
    ("escape", "borg serve \x1b[2J", "control character"),
    ("delete", "borg serve\x7f", "control character"),
    ("NUL", "borg serve\x00", "control character"),
    ("unicode line separator", "borg serve\u2028id", "control character"),
    ("next line", "borg serve\u0085", "control character"),
    ("no-break space", "borg\u00a0serve", "control character"),
    ("surrogate escape (non-UTF-8 byte)", "borg serve \udcff", "control character"),
    ("over-long", LONG, "too long"),
    ("too many env words", " ".join(f"V{i}=x" for i in range(command.MAX_ENV_WORDS + 1)) + " borg serve", "too many"),
    ("too many debug topics", "borg serve" + " --debug-topic=t" * (command.MAX_DEBUG_TOPICS + 1), "too many"),
    ("bad debug topic", "borg serve --debug-topic=-x", "bad value"),
    ("debug topic with a slash", "borg serve --debug-topic=../../x", "bad value"),
    ("debug topic missing", "borg serve --debug-topic", "needs a value"),
    ("bad umask", "borg serve --umask=0o777", "bad value"),
    ("bad quota", "borg serve --storage-quota=lots", "bad value"),
    ("rest without backend", "borg serve --rest", "go together"),
    ("backend without rest", "borg serve --backend FILE:/srv/borg/x", "go together"),
    ("sftp backend", "borg serve --rest --backend sftp://host/x", "only FILE:"),
    ("lower-case file backend", "borg serve --rest --backend file:/srv/x", "only FILE:"),
    ("s3 backend", "borg serve --rest --backend s3:bucket/x", "only FILE:"),
    ("rest backend", "borg serve --rest --backend REST:http://evil/", "only FILE:"),
    ("empty FILE: backend", "borg serve --rest --backend FILE:", "only FILE:"),
    ("backend missing", "borg serve --rest --backend", "needs a value"),
]


@pytest.mark.parametrize(("what", "text", "why"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_commands_are_refused(what: str, text: str | None, why: str) -> None:
    with pytest.raises(Refusal) as info:
        parse_command(text)
    assert info.value.kind is Kind.BAD_COMMAND
    assert why in info.value.reason
    assert "\n" not in info.value.reason and len(info.value.reason) < 300


def test_refusal_reason_shows_untrusted_text_tamed() -> None:
    with pytest.raises(Refusal) as info:
        parse_command("borg serve --" + "x" * 5000)
    assert len(info.value.reason) < 200
    with pytest.raises(Refusal) as info:
        parse_command("rm\u200b serve")  # zero-width space: a format character, shown escaped
    assert "\u200b" not in info.value.reason


# --------------------------------------------------------------------------- properties

# Words clients, attackers and fuzzers put on the line; joined, quoted and mixed below.
VOCABULARY = [
    "borg",
    "borg2",
    "borg-1.4",
    "/usr/bin/borg",
    "/usr/local/bin/borg-1.4",
    "../borg",
    "sh",
    "-c",
    "serve",
    "list",
    "--info",
    "--debug",
    "--error",
    "--critical",
    "--warning",
    "-v",
    "--verbose",
    "--debug-topic",
    "--debug-topic=borg.debug.repository",
    "repository",
    "--umask=077",
    "--umask",
    "077",
    "--storage-quota=10G",
    "--storage-quota",
    "1000000000",
    "--rest",
    "--backend",
    "FILE:/srv/borg/alice/repo",
    "FILE:/srv/../etc",
    "FILE:~/repo",
    "sftp://x/y",
    "--restrict-to-path=/",
    "--restrict-to-path",
    "/",
    "--append-only",
    "--permissions=all",
    "--permissions",
    "all",
    "--debug-profile=/tmp/x",
    "--remote-path=sh",
    "--rsh=sh",
    "--lock-wait=1",
    "--",
    "-",
    ";",
    "&&",
    "|",
    "$(id)",
    "`id`",
    "'",
    '"',
    "\\",
    "=",
    "X=1",
    "BORG_HOSTNAME_IS_UNIQUE=no",
    "LD_PRELOAD=/tmp/x.so",
    "#",
    "~",
    "*",
    "{client}",
    "\n",
    "\t",
    "\x00",
]

words = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=12))
structured = st.lists(words, max_size=12).map(" ".join)
any_text = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF) | st.sampled_from(" borgserve-"), max_size=40),
    structured,
    st.tuples(st.sampled_from(["borg serve ", "borg2 serve ", "X=1 borg serve "]), structured).map("".join),
)

LOG_WORDS = frozenset(command.LOG_FLAGS.values())


def assert_vetted(request: ClientRequest) -> None:
    """Only vetted option forms; nothing a client could use to widen what borg serves."""
    assert patterns.binary_name(request.program)
    opts = request.serve_options()
    i = 0
    while i < len(opts):
        opt = opts[i]
        name, _, value = opt.partition("=")
        if opt in LOG_WORDS or opt == "--rest":
            pass
        elif name == "--debug-topic":
            assert patterns.debug_topic(value)
        elif name == "--backend":
            assert request.rest and value.startswith("FILE:") and len(value) > len("FILE:")
            assert all(ch == " " or ch.isprintable() for ch in value)
        else:
            raise AssertionError(f"unvetted option {opt!r} in {opts}")
        i += 1
    assert not any(o.partition("=")[0] in command.SERVER_ONLY for o in opts)
    assert request.rest == (request.backend is not None)
    assert sum(o in LOG_WORDS for o in opts) <= 1


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_no_input_crashes_the_parser_and_accepted_ones_are_vetted(text: str | None) -> None:
    try:
        request = parse_command(text)
    except Refusal as refusal:
        assert refusal.kind is Kind.BAD_COMMAND
        assert refusal.reason and all(ch.isprintable() for ch in refusal.reason)
        return
    assert_vetted(request)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["--info", "--debug", "--debug-topic=a.b", "--umask=077", "-v"]), max_size=6))
def test_accepted_requests_round_trip(options: list[str]) -> None:
    """The vetted form parses back to the same request: the gate and borg read it alike."""
    request = parse_command("borg serve " + " ".join(options))
    again = parse_command("borg serve " + " ".join(request.serve_options()))
    assert again.serve_options() == request.serve_options()
    assert again.log_level == request.log_level and again.debug_topics == request.debug_topics


# --------------------------------------------------------------------------- splitting without shlex

# shlex's specials, its whitespace, the whitespace only str.split() knows, and plain word characters.
SPLIT_ALPHABET = "'\"\\ \t\r\n" + "\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000" + "#$;ab=-/\x00\xe9"


def _shlex_split(text: str) -> list[str] | str:
    """shlex's words, or its refusal's message."""
    import shlex

    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        return f"ValueError: {exc}"


def _split_words(text: str) -> list[str] | str:
    try:
        return command.split_words(text)
    except ValueError as exc:
        return f"ValueError: {exc}"


@settings(max_examples=3000)
@given(st.text(SPLIT_ALPHABET, max_size=40) | st.text(max_size=40))
@example("borg serve --info --umask=077")
@example("borg2 serve --rest --backend FILE:/srv/borg/alice/repo")
@example("borg\x0bserve\xa0--info")
@example("borg serve ''")
@example("borg serve 'oops")
@example("borg serve \\")
@example('"a\\')
@example(" \t\r\n ")
def test_split_words_splits_as_shlex_does(text: str) -> None:
    assert _split_words(text) == _shlex_split(text)


@given(st.text(max_size=12).map(lambda t: "FILE:"[: len(t) % 6] + t) | st.sampled_from(["FILE:", "FILE:\n", "file:/x"]))
def test_file_backend_is_the_expression_it_replaced(text: str) -> None:
    import re

    assert command.file_backend(text) == bool(re.fullmatch(r"FILE:.+", text, re.DOTALL))
