"""Entry point: a connection (key options only) or an admin command (status, metrics, repos, check, authorize).

Admin modules are imported only when asked for, so a connection pays for none of them.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from typing import Final

ADMIN: Final = {
    "status": "borg_gate.admin.status",
    "metrics": "borg_gate.admin.metrics",
    "repos": "borg_gate.admin.repos",
    "check": "borg_gate.admin.check",
    "authorize": "borg_gate.admin.authorize",
    "hold": "borg_gate.admin.hold",
    "release": "borg_gate.admin.hold",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ADMIN:
        import importlib  # with warnings: a connection needs neither

        module = importlib.import_module(ADMIN[args[0]])
        result: int = module.main(args[1:], release=True) if args[0] == "release" else module.main(args[1:])
        return result
    from borg_gate.conn import interrupt

    interrupt.install()  # first: a Ctrl-C while the connection's modules load is a refusal too
    from borg_gate.conn import gate

    gate.main(args)
