"""Structured JSON events, one line each, for monitoring.

Rendered with the standard library: structlog's import alone (~45 ms) would cost more
than the gate's whole per-connection budget. Each event is one ``write`` to a file opened
with O_APPEND, so concurrent gates never interleave lines; the file is opened by path
per connection so logrotate works. A sink that fails never breaks a backup and never
touches stdout.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from borg_gate.connection import Connection


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


class EventLog:
    def __init__(self, conn: Connection, log_file: str | None) -> None:
        self.conn = conn
        self.log_file = log_file or None
        self.context: dict[str, Any] = {}
        self.failures = 0

    def bind(self, **fields: Any) -> None:
        """Fields carried by every later event of this connection (client, binary, …)."""
        self.context.update(fields)

    def render(self, event: str, fields: dict[str, Any]) -> bytes:
        c = self.conn
        record: dict[str, Any] = {
            "ts": _iso(time.time()),
            "event": event,
            "conn": c.id,
            "user": c.unix_user,
            "remote_ip": c.remote_ip,
            "remote_port": c.remote_port,
            "key": c.fingerprint,
            "command": c.command,
            "pid": os.getpid(),
        }
        record.update(self.context)
        record.update(fields)
        # ensure_ascii keeps every line one line whatever a client smuggles into its command
        return (json.dumps(record, ensure_ascii=True, default=str, separators=(",", ":")) + "\n").encode()

    def emit(self, event: str, **fields: Any) -> None:
        if self.log_file is None:
            return
        line = self.render(event, fields)
        try:
            fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            self.failures += 1
            return
        try:
            os.write(fd, line)
        except OSError:
            self.failures += 1
        finally:
            os.close(fd)
