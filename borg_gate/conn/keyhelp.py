"""The key line's options for people, as argparse, made from keyopts.OPTIONS.

``borg-gate --help`` (or a key line asking for help) and ``borg-gate authorize``'s key flags.
A connection never imports this module: argparse with its re, gettext and shutil costs one
several ms (keyopts), so keyopts.scan imports it only when a word asks for help.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from borg_gate.base.errors import Kind
from borg_gate.conn import keyopts


def add_options(parser: argparse.ArgumentParser) -> None:
    """Every key option, in the table's order, read into its Words attribute as keyopts.scan reads it."""
    for option in keyopts.OPTIONS:
        if option.kind == keyopts.FLAG:
            parser.add_argument(*option.names, action="store_true", help=option.help)
            continue
        parser.add_argument(
            *option.names,
            action="append" if option.kind == keyopts.EACH else "store",
            default=option.unset(),
            metavar=option.metavar,
            type=option.convert,
            choices=option.choices or None,
            help=option.help,
        )


class _Formatter(argparse.HelpFormatter):
    # argparse's default asks shutil for the terminal width: importing shutil (bz2, lzma, …)
    # costs ~2-3 ms for help text a key line's error never prints. os alone can ask.
    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(2).columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=width)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        keyopts._refuse(message)  # a key line's mistake is the host's: a misconfiguration, not a usage dump

    def print_help(self, file: object = None) -> None:
        # stdout is borg's protocol channel: help goes there only for a person at a terminal.
        super().print_help(sys.stdout if sys.stdout.isatty() else sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """``borg-gate [key options]`` for --help: reads a key line as keyopts.scan does (the hypothesis tests)."""
    p = _Parser(
        prog="borg-gate",
        formatter_class=_Formatter,
        description=(
            "Forced command for borg repositories: vets SSH_ORIGINAL_COMMAND, confines the key, "
            "takes a session slot and execs borg serve. Put it in authorized_keys as "
            'command="borg-gate --client NAME …",restrict ssh-ed25519 AAAA…. '
            "Admin commands: borg-gate status | metrics | repos | check | authorize (see borg-gate CMD --help)."
        ),
        epilog=(
            "A refused connection gets one line on stderr and one of these exit codes: "
            + ", ".join(f"{kind.value} {kind.label}" for kind in Kind)
            + "; after exec the exit code is borg serve's."
        ),
        allow_abbrev=False,
    )
    add_options(p)
    return p
