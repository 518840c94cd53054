"""The package's shape: base <- conn <- admin, read from the code's own imports.

A connection (borg_gate/conn, run by sshd per connection as the backup user, with the client's
input) must never load root's admin code, statically or at run time; the shared base
(borg_gate/base) depends on neither. Every import statement counts, function-level ones
included, and so does a module named by string to importlib.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.recorder import SSHD_ENV, Host, run_gate

PACKAGE = Path(__file__).resolve().parents[1] / "borg_gate"
LAYERS = {"base": set(), "conn": {"base"}, "admin": {"base", "conn"}}  # a layer and what it may import
# The connection path: what `borg-gate --client ...` (cli's connection route) and the waiter can reach.
# Target: 4,000 lines (issue 19); this ratchet only goes down (keyhelp, 75 lines, loads only for --help).
CLOSURE_BUDGET = 4_965


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every borg_gate module this one imports anywhere, or names to importlib."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # from borg_gate.conn import slots: the module borg_gate.conn.slots
                yield node.lineno, f"{module}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "borg_gate" and parts[1] in LAYERS else None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for name, path in modules():
        mine = layer(name)
        if mine is None:
            continue
        for line, target in imports(name, path):
            theirs = layer(target)
            if theirs is not None and theirs != mine and theirs not in LAYERS[mine]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {mine} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_entry_point_reaches_admin_code_only_for_admin_commands() -> None:
    """cli.py names admin modules in its ADMIN table (imported by string for admin commands) and nowhere else."""
    cli = PACKAGE / "cli.py"
    tree = ast.parse(cli.read_text())
    table = next(n for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "ADMIN")
    assert isinstance(table.value, ast.Dict)
    named = {v.value for v in table.value.values if isinstance(v, ast.Constant)}
    assert named and all(layer(str(m)) == "admin" for m in named)
    statically = [t for _, t in imports("borg_gate.cli", cli) if layer(t) == "admin"]
    assert statically == [], statically


def closure() -> dict[str, int]:
    """Every borg_gate module a connection can load (cli, the waiter, and all they import), with its lines."""
    paths = dict(modules())
    seen: dict[str, int] = {}
    todo = ["borg_gate", "borg_gate.cli", "borg_gate.conn.waiter"]
    while todo:
        name = todo.pop()
        if name in seen or name not in paths:
            continue
        seen[name] = len(paths[name].read_text().splitlines())
        todo += [
            t for line, t in imports(name, paths[name]) if name != "borg_gate.cli" or layer(t) != "admin"
        ]  # cli's admin table: the admin route, never a connection's
        parent = name.rsplit(".", 1)[0]
        todo.append(parent)
    return seen


def test_the_connection_closure_holds_no_admin_module_and_stays_within_its_budget() -> None:
    found = closure()
    assert not [m for m in found if layer(m) == "admin"]
    assert "borg_gate.conn.gate" in found and "borg_gate.base.events" in found  # the walk does reach the path
    total = sum(found.values())
    assert total <= CLOSURE_BUDGET, f"{total} lines in {len(found)} modules: {sorted(found.items())}"


@pytest.mark.parametrize(
    ("what", "command", "key"),
    [
        ("served", "borg serve --info", ["--client", "alice"]),
        ("refused: bad command", "rm -rf /", ["--client", "alice"]),
        ("refused: bad key line", "borg serve", ["--no-such-option"]),
    ],
)
def test_a_real_connection_loads_no_admin_module(tmp_path: Path, what: str, command: str, key: list[str]) -> None:
    """Up to its exec of borg serve (or its refusal): -X importtime lists every module the gate loaded."""
    host = Host(tmp_path / "host")
    argv = [sys.executable, "-X", "importtime", "-m", "borg_gate", "--config", str(host.config_path), *key]
    outcome = run_gate(argv, {**SSHD_ENV, "SSH_ORIGINAL_COMMAND": command}, cwd=host.root, records=host)
    assert (outcome.record is not None) == (what == "served"), outcome.stderr
    mods = {
        line.split("|")[2].strip() for line in outcome.stderr.decode().splitlines() if line.startswith("import time:")
    }
    assert "borg_gate.conn.gate" in mods, (what, outcome.stderr[-500:])
    assert not [m for m in mods if m.startswith("borg_gate.admin")], (what, sorted(mods))


def test_an_admin_command_is_served_by_admin_code() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from borg_gate.cli import main; main(['status', '--help']); "],
        capture_output=True,
        text=True,
        check=False,
        cwd=PACKAGE.parent,
    )
    assert out.returncode == 0 and "borg-gate status" in out.stdout, out.stderr
