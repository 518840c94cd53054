"""Signals before exec: any of them ends the connection with a documented exit code, never a traceback.

Installed as the gate's first step (cli.main, before the connection's modules are imported).
A signal whose default would end the process (SIGINT from a client's Ctrl-C on a pty, SIGHUP
when sshd loses the client, SIGTERM at shutdown, SIGQUIT, SIGUSR1/2, SIGALRM, the real-time
signals...) raises :class:`Interrupted` once, at whatever the gate is doing; the gate turns it
into a refusal "client gone" (214): one ``borg-gate:`` line, one logged event. A second signal,
or one that arrives while a refusal is already on its way out, ends the process at once with
the code that refusal was going to use (or 214), saying nothing more: at most one line.

Left alone: SIGKILL and SIGSTOP (nothing can catch them); SIGSEGV, SIGBUS, SIGFPE, SIGILL,
SIGABRT, SIGSYS (a real fault cannot be resumed from Python; they mean a crash); signals
ignored or harmless by default (SIGPIPE and SIGXFSZ, which Python ignores so writes fail with
an error instead; SIGCHLD, SIGWINCH, SIGURG, SIGCONT; the stop signals). execve resets every
caught signal to its default, so after exec signals belong to borg serve. The interpreter's
own start, before the first line of the gate runs, is the one window left (Python's default
SIGINT handler).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found,unused-ignore]  # no stubs: the C module behind signal
import os

from borg_gate.base.errors import Kind

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Collection
    from types import FrameType
    from typing import Final

CLIENT_GONE: Final = int(Kind.CLIENT_GONE)
ENDING: Final = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGALRM,
    _signal.SIGVTALRM,
    _signal.SIGPROF,
    _signal.SIGIO,
    _signal.SIGPWR,
    _signal.SIGXCPU,
    _signal.SIGSTKFLT,
    _signal.SIGTRAP,
)


class Interrupted(BaseException):
    """A signal ended the connection before exec. BaseException: no ``except Exception`` may swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        import signal  # its Signals enum: only an interrupted connection pays for it

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"  # real-time signals have no name in the enum


class _State:
    raised = False
    exit_code: int | None = None  # set once a refusal is on its way out


_state = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state.exit_code is not None or _state.raised:
        os._exit(_state.exit_code if _state.exit_code is not None else CLIENT_GONE)
    _state.raised = True
    raise Interrupted(signum)


SIGNALS: Final = (*(int(s) for s in ENDING), *range(_signal.SIGRTMIN, _signal.SIGRTMAX + 1))


def install() -> None:
    # _signal, the C module: signal.signal's enum round trip costs ~9 us a call (0.4 ms for these 45)
    for signum in SIGNALS:
        _signal.signal(signum, _handler)


def defer() -> None:
    """Hold these signals back across an exec into the waiter (session): exec resets handlers, not the mask.

    The waiter's :func:`resume` delivers what came meanwhile, to its own handlers: a Ctrl-C or
    SIGHUP while the waiter's interpreter starts is a refusal too, not a traceback.
    """
    _signal.pthread_sigmask(_signal.SIG_BLOCK, SIGNALS)


def resume() -> None:
    """Let the signals :func:`defer` held back in again (after :func:`install`, or after a failed exec)."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, SIGNALS)


def leaving(exit_code: int) -> None:
    """A refusal is being said and logged: a signal from now on only ends the process, with this code."""
    _state.exit_code = exit_code


def release(keep: Collection[int] = ()) -> None:
    """Back to the defaults but ``keep``, for a supervisor that runs beside borg serve (it handles those)."""
    for signum in SIGNALS:
        if signum not in keep:
            _signal.signal(signum, _signal.SIG_DFL)
