"""Run by a target borg's own interpreter: parse argv lines with borg's real argument parser.

    <borg's python> borg_parse.py [extra sys.path entry]

Reads one JSON list per line (argv without argv[0], e.g. ["serve", "--info", ...]) and
answers one JSON object per line: {"ok": true, "func": ..., "args": {...}} with the serve
attributes borg will act on, or {"ok": false, "error": "<argparse's complaint>"}. It uses
borg's Archiver.parse_args, exactly what ``borg serve`` runs on its argv, with the parser
built once (building it costs 30-60 ms; parsing with it is what borg does per start).
Imports nothing from borg_gate or the tests: it runs under the target borg's interpreter.
"""

import contextlib
import io
import json
import sys

if len(sys.argv) > 1 and sys.argv[1]:
    sys.path.insert(0, sys.argv[1])

from borg import __version__
from borg.archiver import Archiver

ATTRS = (
    "restrict_to_paths",
    "restrict_to_repositories",
    "append_only",
    "storage_quota",
    "permissions",
    "log_level",
    "debug_topics",
    "rest",
    "backend",
    "umask",
    "lock_wait",
)

archiver = Archiver()
parser = archiver.build_parser()
archiver.build_parser = lambda: parser  # type: ignore[method-assign]

print(json.dumps({"version": __version__}), flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            ns = archiver.parse_args(argv)
    except SystemExit:
        answer = {"ok": False, "error": err.getvalue().strip().splitlines()[-1:]}
    except Exception as exc:  # borg's own Error types, e.g. a refused option combination
        answer = {"ok": False, "error": repr(exc)}
    else:
        func = getattr(ns, "func", None)
        answer = {
            "ok": True,
            "func": getattr(func, "__name__", str(func)),
            "args": {a: getattr(ns, a) for a in ATTRS if hasattr(ns, a)},
        }
    print(json.dumps(answer, default=str), flush=True)
