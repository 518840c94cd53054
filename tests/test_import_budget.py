"""The connection path's import budget, in one place: what a connection may load, and what each costs.

Every connection is a fresh interpreter, so every module it imports is paid per connection
(bench/overhead: start to exec; bench/herd: CPU and memory of a thousand at once). ALLOWED is
the whole list of standard-library modules a served connection loads beyond a bare
``python3 -IS`` start, each with its measured cost and why it earns it; ON_DEMAND names the
modules only some paths load, and the path. A module that creeps onto the usual path fails
test_a_served_connection_loads_exactly_the_allowed_modules; one that leaves it fails it too,
so the table never rots.

Costs: self time in µs from ``-X importtime``, the median of 10 served connections (config
cached), Debian 12's Python 3.11 on 2 cores, 2026-12-08. The whole list costs about 3.4 ms;
for scale, a bare interpreter start is about 9 ms and ``re`` alone, with what it brings, ~4.5 ms.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.recorder import SSHD_ENV, Host, run_gate

ROOT = str(Path(__file__).resolve().parents[1])

ALLOWED: dict[str, tuple[int, str]] = {
    "_collections_abc": (778, "os imports it (os.environ is a MutableMapping)"),
    "os": (456, "everything: files, exec, environment"),
    "posixpath": (94, "os.path"),
    "genericpath": (43, "os.path"),
    "stat": (92, "file type and owner checks on every file in the shared state dir"),
    "_stat": (52, "stat's C half"),
    "__future__": (170, "annotations stay strings, so typing is never imported (base/values)"),
    "_json": (398, "events, counters and caches as JSON, C half only (base/jsontext: json's Python half imports re)"),
    "resource": (238, "the open-files limit for a queue head's lock descriptors (conn/slots)"),
    "struct": (144, "the lock file's ticket counters (conn/budgetfile)"),
    "_struct": (59, "struct's C half"),
    "errno": (82, "telling ELOOP, ENOENT and EEXIST apart on hostile files"),
    "binascii": (71, "base64 of the key fingerprint without the base64 module (base/connection)"),
    "select": (70, "poll: noticing the client hang up while queued"),
    "fcntl": (50, "the slots: OFD byte-range locks, and the counters' flock"),
    # CPython's own sha256, no OpenSSL load (base/connection tries _sha256, then 3.12's _sha2)
    "_sha256": (47, "the connection id and lock regions"),
    "_sha2": (47, "the connection id and lock regions, Python 3.12+"),
    "pwd": (41, "the unix user's name, the default client name"),
}
SHA = frozenset({"_sha256", "_sha2"})
ON_DEMAND: dict[str, str] = {
    "tomllib": "a config this user has not cached yet (with re, enum, datetime, typing: ~7.5 ms; base/configcache)",
    "shlex": "a command with quotes or backslashes (a real client never sends one; with re)",
    "re": "tomllib and shlex above; a broken config's error line; parsing `borg --version` output",
    "argparse": "--help on a key line",
    "subprocess": "`borg --version` of a binary not cached yet (conn/versions)",
    "threading": "a counters lock held by another of this user's gates (base/counters)",
    "_thread": "a queued connection's lock waits (conn/slots, the waiter)",
    "json": "an event with NaN or an infinity (base/events)",
    "grp": "naming the group of a refused state dir",
}


def importtime(argv: list[str], env: dict[str, str] | None = None, host: Host | None = None) -> set[str]:
    """Every module a process loaded (``-X importtime``), whatever it then does (exec included)."""
    if host is not None:
        out = run_gate(argv, env or {}, cwd=host.root, records=host)
        err = out.stderr.decode()
    else:
        proc = subprocess.run(argv, env=env or {}, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
    names = {line.split("|")[2].strip() for line in err.splitlines() if line.startswith("import time:")}
    names.discard("imported package")  # the header line
    assert names, err
    return names


def bare() -> frozenset[str]:
    """The interpreter's own start (``python3 -IS -c pass``), not the gate's to budget: asked, it varies by Python."""
    if not _bare:
        _bare.append(frozenset(importtime([sys.executable, "-IS", "-X", "importtime", "-c", "pass"])))
    return _bare[0]


_bare: list[frozenset[str]] = []


def stdlib(names: set[str]) -> set[str]:
    return {n for n in names if n not in bare() and n != "borg_gate" and not n.startswith("borg_gate.")}


def connection(host: Host, command: str, key: list[str]) -> set[str]:
    code = "import sys; sys.path.insert(0, sys.argv[1]); from borg_gate.cli import main; main(sys.argv[2:])"
    argv = [sys.executable, "-IS", "-X", "importtime", "-c", code, ROOT, "--config", str(host.config_path), *key]
    return importtime(argv, {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}, host)


def python(code: str) -> set[str]:
    """Modules ``python3 -IS`` has loaded after ``code`` (the package on its path, as the gate runs)."""
    return importtime(
        [sys.executable, "-IS", "-X", "importtime", "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n{code}"]
    )


def test_a_served_connection_loads_exactly_the_allowed_modules(tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    first = connection(host, "borg serve --info", ["--client", "alice"])
    assert "tomllib" in first  # its config is parsed once, then cached for this user (base/configcache)
    served = connection(host, "borg serve --info", ["--client", "alice"])
    assert host.record() is not None
    loaded = stdlib(served)
    either = set(SHA) if loaded & SHA else set()  # one of the two, as the interpreter has it
    extra, unused = loaded - set(ALLOWED), set(ALLOWED) - loaded - bare() - either
    assert not extra and not unused, f"not in ALLOWED: {sorted(extra)}; listed but not loaded: {sorted(unused)}"
    assert stdlib(connection(host, "rm -rf /", ["--client", "alice"])) <= set(ALLOWED)  # a refusal loads no more


def test_the_waiter_loads_only_allowed_modules() -> None:
    loaded = stdlib(python("import borg_gate.conn.session, _thread"))
    assert loaded <= set(ALLOWED) | {"_thread"}, sorted(loaded - set(ALLOWED))


@pytest.mark.parametrize(
    ("what", "code"),
    [
        (
            "a key line",
            "from borg_gate.conn.keyopts import parse_key_options\n"
            "parse_key_options(['--client', 'alice', '--append-only', '--restrict-to-path', '/srv', '--wait=5'])",
        ),
        (
            "the commands real clients send",
            "from borg_gate.conn import command\n"
            "command.parse_command('BORG_HOSTNAME_IS_UNIQUE=no borg serve --umask=077 --info --debug-topic=a.b')\n"
            "command.parse_command('borg2 serve --rest --backend FILE:/srv/borg/alice/repo')\n"
            "command.parse_command('borg serve --storage-quota=1000000000')",
        ),
        (
            "a good config",
            "from borg_gate.base import config\n"
            'text = \'[gate]\\numask = "027"\\n[borg]\\ndefault = "borg-1.4"\\n\'\n'
            "data = {'gate': {'umask': '027'}, 'borg': {'default': 'borg-1.4', 'env': {'BORG_X': 'no'},"
            " 'binaries': {'borg-1.4': {'path': '/opt/borg-1.4/bin/borg', 'version': '1.4.5'},"
            " 'borg2': '/usr/bin/borg2'}}}\n"
            "cfg = config.parse_config(text, 'x', data)\n"
            "assert cfg.binaries['borg-1.4'].version == '1.4.5' and cfg.umask == 0o27, cfg",
        ),
        (
            "JSON both ways",
            "from borg_gate.base import jsontext\njsontext.loads(jsontext.dumps({'a': [1, 2.5, 'x\\n', None, True]}))",
        ),
    ],
)
def test_each_step_of_the_usual_path_loads_only_allowed_modules(what: str, code: str) -> None:
    loaded = stdlib(python(code))
    assert loaded <= set(ALLOWED), (what, sorted(loaded - set(ALLOWED)))


def test_the_on_demand_paths_are_the_ones_named() -> None:
    quoted = stdlib(python("from borg_gate.conn import command\ncommand.parse_command(\"borg serve '--info'\")"))
    assert {"shlex", "re"} <= quoted  # quoting still goes through shlex
    help_text = stdlib(python("from borg_gate.conn import keyhelp\nkeyhelp.build_parser().format_help()"))
    assert "argparse" in help_text
    assert set(ON_DEMAND).isdisjoint(ALLOWED)
