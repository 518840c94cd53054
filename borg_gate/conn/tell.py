"""How a connection ends before exec: the client's one stderr line, the refusal's event and exit code.

Shared by the gate and the waiter it may become (session), so that a refusal reads and is
logged the same whichever process says it.
"""

from __future__ import annotations

import os
import time

from borg_gate.base.errors import Kind, Refusal
from borg_gate.conn import interrupt
from borg_gate.conn.interrupt import Interrupted

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final, NoReturn

    from borg_gate.base.events import EventLog

# The client reads stdout EOF before stderr in the same select pass: exiting at once loses
# the refusal line about half the time (BORG-FACTS). A short pause lets it arrive.
REFUSAL_PAUSE: Final = 0.2


def say(message: str) -> None:
    """One plain stderr line; the borg client shows it as ``Remote: borg-gate: …``."""
    line = "borg-gate: " + " ".join(message.split()) + "\n"
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:  # the client is gone; nobody left to tell
        pass


def refuse(refusal: Refusal, log: EventLog) -> NoReturn:
    interrupt.leaving(int(refusal.kind))  # a signal from here on ends with this code, saying no more
    log.emit(
        "connection.refused",
        kind=refusal.kind.label,
        reason=refusal.reason,
        exit_code=int(refusal.kind),
        **refusal.fields,
    )
    say(refusal.reason)
    if refusal.kind is not Kind.CLIENT_GONE:
        time.sleep(REFUSAL_PAUSE)
    os._exit(int(refusal.kind))


def fail(exc: BaseException, log: EventLog) -> NoReturn:
    """End the connection for ``exc``, raised before exec (call it from the ``except`` that caught it)."""
    if isinstance(exc, Refusal):
        refuse(exc, log)
    if isinstance(exc, Interrupted):
        refuse(Refusal(Kind.CLIENT_GONE, f"interrupted by {exc.name} before borg serve started"), log)
    import traceback  # only a bug pays for it

    log.emit("gate.error", error=repr(exc), traceback=traceback.format_exc())
    refuse(Refusal(Kind.INTERNAL, "internal error, refused (see the gate's log)"), log)
