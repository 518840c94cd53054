"""One test backup host's server side: the paths and the config file every gate test writes.

A ``GateHost`` lives in ``root``: ``config.toml``, ``state/``, ``log/gate.jsonl`` and ``repos/``
(the repos root, ``repos/{client}``), laid out as packaging/ lays out a real host.
``write_config`` renders the host's own sections (``sections()``, which a kind of host extends)
merged with a test's overrides as TOML; ``events`` reads back the gate's event log.

Every kind of test host builds on it: ``tests.recorder.Host`` (the real gate as a process, a
recorder standing in for borg), ``tests.slots_support.Site`` (many gates at once, a counting
recorder as borg), ``tests.test_check.Site`` (``borg-gate check`` against the real borg
binaries) and ``tests.e2e.harness.Site`` (a private sshd, real borg clients and servers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.eventlog import read_events

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def toml_key(key: str) -> str:
    """Quoted unless bare: unquoted, ``borg-1.4`` would be a table ``borg-1`` holding ``4``."""
    return key if BARE_KEY.fullmatch(key) else json.dumps(key)


def render(sections: Mapping[str, Mapping[str, Any]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())
        for name, values in sections.items()
    )


@dataclass
class GateHost:
    """The server side of one test backup host in ``root``."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "gate.jsonl"

    @property
    def repos(self) -> Path:
        return self.root / "repos"

    def sections(self) -> dict[str, dict[str, Any]]:
        """This host's config, section by section (``borg.binaries`` for ``[borg.binaries]``)."""
        return {
            "gate": {"state_dir": str(self.state_dir), "log_file": str(self.log_file)},
            "repos": {"root": str(self.repos / "{client}")},
        }

    def write_config(self, text: str | None = None, **sections: Mapping[str, Any]) -> None:
        """Write config.toml: ``text`` as given, or this host's sections with ``sections`` overriding keys.

        ``borg__binaries=…`` names ``[borg.binaries]``.
        """
        if text is None:
            merged = self.sections()
            for name, values in sections.items():
                merged.setdefault(name.replace("__", "."), {}).update(values)
            text = render(merged)
        self.config_path.write_text(text)
        self.config_path.chmod(0o644)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """What the gate logged, oldest first (only ``event`` events if given)."""
        return read_events(self.log_file, event)
