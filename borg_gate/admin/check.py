"""``borg-gate check``: what is unsafe or broken in authorized_keys files, the config and sshd.

Each finding is one line (``file:line: severity: message [code]``) or one JSON object. Exit
code 0 when clean, 1 with warnings only, 2 with errors. Key lines are read as sshd reads
them (borg_gate.admin.authkeys), their ``command=`` as the shell splits it, and the gate's own
options with the gate's own code (keyopts, config, policy, versions): check refuses what a
connection would refuse, for the same reason.

An admin command: it may print to stdout and import anything.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import glob
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

from borg_gate import cli
from borg_gate.admin import authkeys
from borg_gate.admin.safeopen import owner_name
from borg_gate.base import config, statedir, values
from borg_gate.base.config import BinarySpec, Config
from borg_gate.base.errors import Refusal, shown
from borg_gate.base.printable import printable
from borg_gate.conn import budgetfile, confine, keyopts, policy, versions
from borg_gate.conn.keyopts import KeyOptions
from borg_gate.conn.policy import Confinement

ERROR: Final = "error"
WARNING: Final = "warning"
INFO: Final = "info"

GATE_NAME: Final = "borg-gate"
# The PATH sshd gives a session (Debian's _PATH_STDPATH), where a bare "borg-gate" is looked up.
SSHD_PATH: Final = "/usr/local/bin:/usr/bin:/bin:/usr/games"
SSHD_BINARY: Final = "/usr/sbin/sshd"
SSHD_CONFIG: Final = "/etc/ssh/sshd_config"
SSHD_DEFAULTS: Final = {"exposeauthinfo": "no", "maxstartups": "10:30:100", "permituserenvironment": "no"}
NO_LOGIN_SHELLS: Final = frozenset({"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"})
MAX_FILE: Final = 64 << 20
# borg serve's options that confine it: those the gate passes a key's confinement on as (keyopts' serve).
CONFINING: Final = tuple(o.serve for o in keyopts.OPTIONS if o.serve)
# sshd's options with no use on a borg key: each one is a way in that restrict does not close.
# (The gate's own options, inside command=, are keyopts.OPTIONS.)
UNUSUAL_OPTIONS: Final = {
    "cert-authority": "trusts every certificate this CA signs, not one key",
    "environment": "sets variables for the gate's process (sshd needs PermitUserEnvironment for it)",
    "permitopen": "has no use on a borg key",
    "permitlisten": "has no use on a borg key",
    "tunnel": "has no use on a borg key",
    "principals": "has no use without cert-authority",
}


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    file: str | None = None
    line: int | None = None

    def human(self) -> str:
        where = self.file or "check"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.severity}: {self.message} [{self.code}]"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    keys: int = 0

    def add(self, severity: str, code: str, message: str, file: str | None = None, line: int | None = None) -> None:
        self.findings.append(Finding(severity, code, message, file, line))

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def exit_code(self) -> int:
        if self.count(ERROR):
            return 2
        return 1 if self.count(WARNING) else 0

    def as_json(self) -> str:
        return json.dumps(
            {
                "findings": [asdict(f) for f in self.findings],
                "summary": {
                    "errors": self.count(ERROR),
                    "warnings": self.count(WARNING),
                    "files": self.files,
                    "keys": self.keys,
                },
                "exit_code": self.exit_code,
            },
            indent=1,
            ensure_ascii=True,  # key files and configs are not all root's: no raw control character out
        )


# --------------------------------------------------------------------------- who runs the gate


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gids: frozenset[int]
    home: str
    shell: str

    @classmethod
    def from_pwd(cls, pw: pwd.struct_passwd) -> User:
        try:
            gids = os.getgrouplist(pw.pw_name, pw.pw_gid)
        except OSError:
            gids = [pw.pw_gid]
        return cls(pw.pw_name, pw.pw_uid, frozenset(gids), pw.pw_dir, pw.pw_shell or "/bin/sh")


def keys_owner(path: str, st: os.stat_result) -> User | None:
    """The unix user sshd reads this file for: its owner, else (a root-owned file) %u or ~user."""
    if st.st_uid != 0:
        with contextlib.suppress(KeyError):
            return User.from_pwd(pwd.getpwuid(st.st_uid))
        return None
    with contextlib.suppress(KeyError):
        return User.from_pwd(pwd.getpwnam(os.path.basename(path)))  # AuthorizedKeysFile /etc/ssh/keys/%u
    real = os.path.realpath(path)
    homes = [pw for pw in pwd.getpwall() if pw.pw_dir not in ("", "/") and real.startswith(pw.pw_dir.rstrip("/") + "/")]
    if homes:
        return User.from_pwd(max(homes, key=lambda pw: len(pw.pw_dir)))
    return None


def allows(st: os.stat_result, user: User, want: int) -> bool:
    """Unix permission bits for user (ACLs aside): want is a mask of 4 (r), 2 (w), 1 (x)."""
    if user.uid == 0:
        return not (want & 1) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        bits = st.st_mode >> 6
    elif st.st_gid in user.gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def unreachable(path: str, user: User) -> str | None:
    """The first directory above path that user cannot enter, if any."""
    parent = os.path.dirname(os.path.abspath(path))
    parts = [p for p in parent.split("/") if p]
    for i in range(len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        try:
            st = os.stat(d)
        except OSError:
            return d
        if not allows(st, user, 1):
            return d
    return None


# --------------------------------------------------------------------------- config


@dataclass
class Site:
    """Configs as the gate will load them, with their binaries' versions, loaded once each."""

    report: CheckReport
    default_path: str
    default_required: bool
    users: dict[str, User] = field(default_factory=dict)
    configs: dict[str, Config | None] = field(default_factory=dict)
    borgs: dict[tuple[str, str], versions.Borg | None] = field(default_factory=dict)

    def config(self, path: str | None) -> Config | None:
        chosen, required = (path, True) if path else (self.default_path, self.default_required)
        if chosen not in self.configs:
            self.configs[chosen] = self._load(chosen, required)
        return self.configs[chosen]

    def _load(self, path: str, required: bool) -> Config | None:
        try:
            cfg = config.load_config(path, required)
        except Refusal as exc:
            # "config PATH[:LINE]: what" becomes a finding at PATH:LINE
            m = re.fullmatch(rf"config {re.escape(path)}(?::([0-9]+))?: (.*)", exc.reason, re.DOTALL)
            if m:
                self.report.add(ERROR, "config", m[2], path, int(m[1]) if m[1] else None)
            else:
                self.report.add(ERROR, "config", exc.reason, path)
            return None
        if cfg.source != path:
            self.report.add(INFO, "config-default", "no config file: the gate uses its built-in defaults", path)
        if cfg.repos_root and confine.unconfined(Confinement((cfg.repos_root.replace("{client}", "client"),))):
            self.report.add(
                ERROR,
                "repos-root-unconfined",
                f"[repos] root = {cfg.repos_root!r} resolves to /: no confinement; the gate refuses every key"
                " that relies on it",
                path,
            )
        for spec in cfg.binaries.values():
            self.borgs[(path, spec.name)] = self._binary(path, spec)
        return cfg

    def _binary(self, source: str, spec: BinarySpec) -> versions.Borg | None:
        try:
            found = _detect(spec.name, spec.path, _identity(spec.path))
        except Refusal as exc:
            self.report.add(ERROR, "binary", exc.reason, source)
            return None
        features = values.asdict(found.features)
        served = ", ".join(k.replace("_", "-") for k, v in features.items() if v) or "restrict only"
        self.report.add(
            INFO, "binary", f"borg binary {spec.name} = {spec.path}: borg {found.version} ({served})", source
        )
        if spec.version is not None and versions.BorgVersion.parse(spec.version) != found.version:
            self.report.add(
                ERROR,
                "binary-version",
                f"borg binary {spec.name}: the config says version {spec.version}, {spec.path} says {found.version}",
                source,
            )
            return versions.Borg(spec, versions.BorgVersion.parse(spec.version))  # what the gate will believe
        return versions.Borg(spec, found.version)

    def borg(self, path: str | None, name: str) -> versions.Borg | None:
        chosen = path or self.default_path
        return self.borgs.get((chosen, name))


def _identity(path: str) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0, 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _detect(name: str, path: str, identity: tuple[int, int, int, int]) -> versions.Borg:
    """The binary's own answer to --version (once per binary and process).

    A throwaway state dir: check detects afresh and leaves the gate's version cache alone.
    """
    with tempfile.TemporaryDirectory(prefix="borg-gate-check-") as scratch:
        return versions.resolve(BinarySpec(name, path), scratch)


def directory(path: str) -> os.stat_result | str:
    """path's stat when it is a directory, else what is wrong with it ("PATH: reason")."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return st if stat.S_ISDIR(st.st_mode) else f"{path} is not a directory"


def check_limits(report: CheckReport, cfg: Config) -> None:
    if cfg.reserved_sessions >= cfg.max_sessions:
        report.add(
            ERROR,
            "limits",
            f"reserved_sessions = {cfg.reserved_sessions} leaves no session of max_sessions = {cfg.max_sessions}"
            " to keys without --priority: the gate refuses them",
            cfg.source,
        )


def check_state_dir(report: CheckReport, cfg: Config, users: Sequence[User]) -> None:
    where = cfg.source
    st = directory(cfg.state_dir)
    if isinstance(st, str):
        report.add(ERROR, "state-dir", f"state dir {st} (session slots live there)", where)
        return
    problem = statedir.unsafe(cfg.state_dir, st, {0, *(user.uid for user in users)} if users else {0, os.geteuid()})
    if problem is not None:
        report.add(ERROR, "state-dir", f"{problem}: the gate refuses it", where)
    for user in users:
        blocked = unreachable(cfg.state_dir, user)
        if blocked or not allows(st, user, 3):
            report.add(
                ERROR,
                "state-dir",
                f"state dir {cfg.state_dir} ({owner_name(st.st_uid)}:{statedir.group_name(st.st_gid)} "
                f"{stat.S_IMODE(st.st_mode):o}): user {user.name} cannot create files in it",
                where,
            )
    if not st.st_mode & stat.S_IWOTH:  # a dir like /tmp needs replacing, not a lock file in it
        check_lock_file(report, cfg, st, users)


def check_lock_file(report: CheckReport, cfg: Config, dir_st: os.stat_result, users: Sequence[User]) -> None:
    """The root-owned file whose bytes are the budget (budgetfile): present, root's, lockable by every user."""
    where = cfg.source
    path = os.path.join(cfg.state_dir, budgetfile.NAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if dir_st.st_mode & 0o022:  # shared: no gate may create it
            report.add(
                ERROR,
                "lock-file",
                f"no lock file {path}: the gate refuses; {budgetfile.howto(cfg.state_dir, dir_st)}",
                where,
            )
        return
    except OSError as exc:
        report.add(ERROR, "lock-file", f"lock file {path}: {exc.strerror}", where)
        return
    problem = budgetfile.unsafe(st, dir_st)
    if problem is not None:
        report.add(ERROR, "lock-file", f"lock file {path}: {problem}: the gate refuses it", where)
        return
    if st.st_nlink > 1:
        report.add(
            WARNING,
            "lock-file",
            f"lock file {path} has {st.st_nlink} names: harmless to the budget, but who made them?",
            where,
        )
    for user in users:
        if not allows(st, user, 6):
            report.add(
                ERROR,
                "lock-file",
                f"lock file {path}: user {user.name} cannot open it read-write to take a slot",
                where,
            )


def check_log_file(report: CheckReport, cfg: Config, users: Sequence[User]) -> None:
    where = cfg.source
    if not cfg.log_file:
        report.add(INFO, "log-file", 'log file disabled (log_file = "")', where)
        return
    owners = {0, *(user.uid for user in users)} if users else {0, os.geteuid()}
    parent = os.path.dirname(cfg.log_file) or "/"
    with contextlib.suppress(OSError):
        pst = os.stat(parent)
        problem = statedir.unsafe(parent, pst, owners, "log dir") if stat.S_ISDIR(pst.st_mode) else None
        if problem is not None:
            report.add(ERROR, "log-dir", f"{problem}: the gate refuses every connection", where)
    try:
        st = os.lstat(cfg.log_file)
    except FileNotFoundError:
        try:
            pst = os.stat(parent)
        except OSError as exc:
            report.add(
                WARNING, "log-file", f"log file {cfg.log_file}: {parent}: {exc.strerror}; events are lost", where
            )
            return
        for user in users:
            if unreachable(cfg.log_file, user) or not allows(pst, user, 3):
                report.add(WARNING, "log-file", f"log file {cfg.log_file}: user {user.name} cannot create it", where)
        return
    except OSError as exc:
        report.add(WARNING, "log-file", f"log file {cfg.log_file}: {exc.strerror}", where)
        return
    if not stat.S_ISREG(st.st_mode):
        report.add(
            WARNING, "log-file", f"log file {cfg.log_file} is not a regular file (symlinks are not followed)", where
        )
        return
    foreign = [user.name for user in users if st.st_uid not in (0, user.uid)]
    if foreign or st.st_nlink != 1 or st.st_mode & stat.S_IWOTH:
        why = (
            f"owned by {owner_name(st.st_uid)}: the gates of {', '.join(foreign)} refuse it (root's or their own only)"
            if foreign
            else f"{st.st_nlink} links"
            if st.st_nlink != 1
            else "world-writable"
        )
        report.add(WARNING, "log-file", f"log file {cfg.log_file}: {why}; their events are lost", where)
    for user in users:
        if unreachable(cfg.log_file, user) or not allows(st, user, 2):
            report.add(
                WARNING,
                "log-file",
                f"log file {cfg.log_file} ({owner_name(st.st_uid)}:{statedir.group_name(st.st_gid)} "
                f"{stat.S_IMODE(st.st_mode):o}): user {user.name} cannot append; its events are lost",
                where,
            )


# --------------------------------------------------------------------------- sshd


# Variables a client could set through sshd's AcceptEnv that would steer the gate itself.
CLIENT_ENV_HAZARDS: Final = {
    "BORG_GATE_CONFIG": "picks the config file, hence the repository root and limits",
    "PYTHONPATH": "runs the client's code in the gate (a pip/pipx install does not start Python with -I)",
    "PYTHONHOME": "replaces the gate's Python library",
    "PYTHONSTARTUP": "names a file Python may run",
    "PYTHONWARNINGS": "changes how the gate's Python starts",
    "LD_PRELOAD": "loads the client's library into the gate and borg",
    "LD_LIBRARY_PATH": "changes which libraries the gate and borg load",
}


@dataclass(frozen=True)
class SshdSettings:
    values: dict[str, str]
    source: str

    def get(self, key: str) -> str:
        return self.values.get(key, SSHD_DEFAULTS.get(key, ""))


MATCHED_ENV: Final = "acceptenv@match"  # AcceptEnv patterns of Match blocks, whatever their criteria


def parse_sshd_config(
    path: str, into: dict[str, str] | None = None, depth: int = 0, *, in_match: bool = False
) -> dict[str, str]:
    """Global settings of an sshd_config: first value wins, Include followed.

    Inside Match blocks only AcceptEnv is kept, under MATCHED_ENV: check cannot tell which
    connections a block's criteria select (user, group, address...), so a hazardous pattern
    there is reported as if it applied to the gate's users.
    """
    values = {} if into is None else into
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read(1 << 20).splitlines()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.replace("=", " ", 1).partition(" ")
        key = key.lower()
        rest = rest.strip()
        if key == "match":
            in_match = rest.lower() != "all"  # Match all: global again
            continue
        if key == "include" and depth < 8:
            for pattern in rest.split():
                full = pattern if pattern.startswith("/") else os.path.join("/etc/ssh", pattern)
                for included in sorted(glob.glob(full)):
                    with contextlib.suppress(OSError):
                        parse_sshd_config(included, values, depth + 1, in_match=in_match)
            continue
        if in_match:
            if key == "acceptenv":
                values[MATCHED_ENV] = f"{values.get(MATCHED_ENV, '')} {rest}".strip()
            continue
        _set(values, key, rest)
    return values


def _set(values: dict[str, str], key: str, value: str) -> None:
    """First value wins, as in sshd; AcceptEnv is cumulative (one pattern list across lines)."""
    if key == "acceptenv":
        values[key] = f"{values.get(key, '')} {value}".strip()
    else:
        values.setdefault(key, value)


def read_sshd(config_file: str | None) -> SshdSettings | str:
    """Effective settings (``sshd -T`` as root), else the config file; a reason string when neither works."""
    if config_file is None and os.geteuid() == 0 and os.access(SSHD_BINARY, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [SSHD_BINARY, "-T"], capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL
            )
            if out.returncode == 0:
                values: dict[str, str] = {}
                for line in out.stdout.splitlines():
                    key, _, rest = line.partition(" ")
                    _set(values, key.lower(), rest.strip())
                with contextlib.suppress(OSError):  # sshd -T shows no Match block: read them from the file
                    scoped = parse_sshd_config(SSHD_CONFIG).get(MATCHED_ENV)
                    if scoped:
                        values[MATCHED_ENV] = scoped
                return SshdSettings(values, "sshd -T")
    path = config_file or SSHD_CONFIG
    try:
        return SshdSettings(parse_sshd_config(path), path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"


def check_sshd(report: CheckReport, settings: SshdSettings, cfg: Config | None, clients: int) -> None:
    src = settings.source
    if settings.get("exposeauthinfo").lower() != "yes":
        report.add(
            WARNING, "sshd-expose-auth-info", "ExposeAuthInfo is off: the gate's log cannot name the key used", src
        )
    if settings.get("permituserenvironment").lower() not in ("no", ""):
        report.add(
            WARNING,
            "sshd-user-environment",
            "PermitUserEnvironment is on: ~/.ssh/environment and environment= reach the gate's process",
            src,
        )
    for key, scope, fix in (
        ("acceptenv", "", "remove it or scope it with a Match block that selects no gate user"),
        (MATCHED_ENV, " (in a Match block)", "make sure that block selects no gate user"),
    ):
        accepted = settings.get(key).split()
        for name in CLIENT_ENV_HAZARDS:
            patterns = [p for p in accepted if fnmatch.fnmatchcase(name, p)]
            if patterns:
                report.add(
                    ERROR,
                    "sshd-accept-env",
                    f"AcceptEnv {' '.join(patterns)}{scope} lets a client set {name} for the gate's process "
                    f"({CLIENT_ENV_HAZARDS[name]}): {fix}",
                    src,
                )
    if cfg is None:
        return
    text = settings.get("maxstartups")
    try:
        start = int(text.split(":")[0])
    except ValueError:
        report.add(WARNING, "sshd-max-startups", f"cannot read MaxStartups {shown(text, 40)!r}", src)
        return
    needed = max(cfg.max_sessions, clients)
    if start < needed:
        report.add(
            WARNING,
            "sshd-max-startups",
            f"MaxStartups {text} starts dropping new connections at {start} at once; max_sessions "
            f"{cfg.max_sessions} plus the queue of {clients} client(s) here may arrive together: raise it to {needed}+",
            src,
        )


# --------------------------------------------------------------------------- key lines


@dataclass(frozen=True)
class GateKey:
    """A gate key line, once its options are known: for comparing keys of one client."""

    file: str
    line: int
    client: str
    config: str | None
    confinement: Confinement
    max_sessions: int | None
    wait: float | None


def _roots(c: Confinement) -> list[str]:
    return [*c.paths, *c.repositories]


def _within(inner: Confinement, outer: Confinement) -> bool:
    return all(any(os.path.join(p, "").startswith(os.path.join(q, "")) for q in _roots(outer)) for p in _roots(inner))


@dataclass
class FileCheck:
    """One authorized_keys file: its lines, in sshd's order."""

    site: Site
    report: CheckReport
    path: str
    user: User | None
    gate_keys: list[GateKey]

    def add(self, severity: str, code: str, message: str, line: int) -> None:
        self.report.add(severity, code, message, self.path, line)

    def run(self, data: bytes) -> None:
        seen: dict[bytes, int] = {}
        for parsed in authkeys.parse_file(data):
            self.report.keys += 1
            if isinstance(parsed, authkeys.BadLine):
                self.add(ERROR, "unparsable", f"sshd skips this line: {parsed.reason}", parsed.number)
                continue
            first = seen.setdefault(parsed.key.blob, parsed.number)
            if first != parsed.number:
                self.add(
                    WARNING,
                    "duplicate-key",
                    f"same key as line {first} ({parsed.key.fingerprint}): sshd only ever uses line {first}",
                    parsed.number,
                )
                continue
            self.key_line(parsed)

    def key_line(self, kl: authkeys.KeyLine) -> None:
        n = kl.number
        self.key_type(kl.key, n)
        self.restrictions(kl.options, n)
        command = kl.options.command
        if command is None:
            self.add(ERROR, "no-forced-command", "no command=: this key gets a shell, not borg serve", n)
            return
        try:
            words = authkeys.split_command(command)
        except authkeys.ShellError as exc:
            self.add(ERROR, "shell", f"command={shown(command, 80)!r}: {exc}", n)
            return
        program = os.path.basename(words[0])
        if program == GATE_NAME:
            self.gate_line(words, n)
        elif program.startswith("borg") and words[1:2] == ["serve"]:
            self.borg_serve(words, n)
        else:
            self.add(WARNING, "not-gate", f"forced command {shown(words[0], 60)!r} is not borg-gate", n)

    def key_type(self, key: authkeys.PublicKey, n: int) -> None:
        kt = key.key_type
        if kt.cert:
            self.add(WARNING, "key-type", f"{key.type} is a certificate, not a key", n)
        elif (bits := key.rsa_bits) is not None and bits < 2048:
            self.add(WARNING, "key-type", f"RSA key of {bits} bits: use 3072+ or ed25519", n)

    def restrictions(self, options: authkeys.Options, n: int) -> None:
        open_ = [name for name, on in options.allowed().items() if on]
        if open_:
            self.add(ERROR, "not-restricted", f"no restrict: this key allows {', '.join(open_)}", n)
        elif not options.restrict:
            self.add(
                WARNING,
                "no-restrict",
                "no-* options instead of restrict: restrict also closes what future OpenSSH versions add",
                n,
            )
        for name in dict.fromkeys(options.names()):
            if name in UNUSUAL_OPTIONS:
                self.add(WARNING, "option", f"{name}: {UNUSUAL_OPTIONS[name]}", n)

    def borg_serve(self, words: list[str], n: int) -> None:
        confined = any(w.split("=", 1)[0] in CONFINING for w in words[2:])
        if not confined:
            self.add(
                ERROR,
                "unconfined-borg-serve",
                f"forced command is borg serve without {'/'.join(CONFINING)}: "
                "this key reaches every repository its user can write",
                n,
            )
        else:
            self.add(
                WARNING,
                "not-gate",
                "forced command is plain borg serve: no session budget, no vetting, no event log (use borg-gate)",
                n,
            )

    # ---- a borg-gate line: the gate's own checks, in the gate's own order

    def gate_line(self, words: list[str], n: int) -> None:
        self.gate_program(words[0], n)
        argv = words[1:]
        if argv and argv[0] in cli.ADMIN:
            self.add(ERROR, "admin-command", f"forced command runs the admin command {argv[0]!r} for the client", n)
            return
        if any(a in keyopts.HELP for a in argv):
            self.add(ERROR, "key-options", "the key line asks for --help: every connection fails", n)
            return
        try:
            key = keyopts.parse_key_options(argv)
        except Refusal as exc:
            self.add(ERROR, "key-options", f"the gate refuses this key: {exc.reason}", n)
            return
        cfg = self.site.config(key.config)
        if cfg is None:
            used = key.config or self.site.default_path
            self.add(ERROR, "key-config", f"every connection with this key fails: its config {used} is broken", n)
            return
        client = key.client or (self.user.name if self.user else None)
        if client is None:
            self.add(INFO, "client", "no --client and the unix user is unknown: {client} is not checked", n)
            return
        try:
            client = policy.client_name(key, client)
            where = policy.confinement(key, cfg, client)
            confine.refuse_unconfined(where)
        except Refusal as exc:
            self.add(ERROR, "confinement", f"the gate refuses this key: {exc.reason}", n)
            return
        self.gate_keys.append(GateKey(self.path, n, client, key.config, where, key.max_sessions, key.wait))
        self.binary(key, cfg, n)
        for path in _roots(where):
            self.confinement_path(path, n)

    def gate_program(self, program: str, n: int) -> None:
        if "/" not in program:
            if shutil.which(program, path=SSHD_PATH) is None:
                self.add(
                    WARNING, "gate-path", f"{program} is not in sshd's PATH ({SSHD_PATH}): name it by full path", n
                )
            return
        if not program.startswith("/"):
            self.add(WARNING, "gate-path", f"{program} is relative to the user's home: name it by full path", n)
            return
        try:
            st = os.stat(program)
        except OSError as exc:
            self.add(ERROR, "gate-path", f"{program}: {exc.strerror}", n)
            return
        if not stat.S_ISREG(st.st_mode) or (self.user and not allows(st, self.user, 1)) or not st.st_mode & 0o111:
            self.add(ERROR, "gate-path", f"{program} is not an executable file for this key's user", n)

    def binary(self, key: KeyOptions, cfg: Config, n: int) -> None:
        name = key.borg or cfg.borg_default
        if name not in cfg.binaries:
            self.add(ERROR, "borg-binary", f"--borg {name} names no binary in [borg.binaries] of {cfg.source}", n)
            return
        borg = self.site.borg(key.config, name)
        if borg is None:
            return  # reported with the config
        try:
            policy.key_serve_options(key, borg, False)
        except Refusal as exc:
            if borg.features.rest and _serves_rest(key, borg):
                self.add(WARNING, "not-enforceable", f"only rest:// clients are served: {exc.reason}", n)
            else:
                self.add(ERROR, "not-enforceable", f"the gate refuses every session: {exc.reason}", n)

    def confinement_path(self, path: str, n: int) -> None:
        if not os.path.lexists(path):
            self.add(WARNING, "path-missing", f"confinement {path} does not exist", n)
            return
        problem = directory(path)
        if isinstance(problem, str):
            self.add(ERROR, "path-not-dir", f"confinement {problem}", n)
            return
        for d in _ancestors(path):
            try:
                dst = os.lstat(d)
            except OSError:
                continue
            if dst.st_mode & 0o002 and not (dst.st_mode & stat.S_ISVTX and d != path):
                self.add(ERROR, "path-writable", f"{d} (confinement {path}) is writable by everyone", n)
            elif dst.st_uid not in (0, *(() if self.user is None else (self.user.uid,))) and dst.st_mode & 0o200:
                self.add(WARNING, "path-owner", f"{d} (confinement {path}) belongs to {owner_name(dst.st_uid)}", n)
        if self.user is not None and os.path.join(os.path.realpath(self.path), "").startswith(
            os.path.join(os.path.realpath(path), "")
        ):
            self.add(WARNING, "path-holds-keys", f"confinement {path} holds this authorized_keys file", n)


def _serves_rest(key: KeyOptions, borg: versions.Borg) -> bool:
    try:
        policy.key_serve_options(key, borg, True)
    except Refusal:
        return False
    return True


def _ancestors(path: str) -> Iterator[str]:
    real = os.path.realpath(path)
    parts = [p for p in real.split("/") if p]
    for i in range(len(parts), 0, -1):
        yield "/" + "/".join(parts[:i])


def compare_clients(report: CheckReport, keys: Sequence[GateKey]) -> None:
    """Keys sharing a client name share its session budget and {client} directory: they must agree."""
    first: dict[str, GateKey] = {}
    for key in keys:
        ref = first.setdefault(key.client, key)
        if ref is key:
            continue
        there = f"{ref.file}:{ref.line}"
        if (key.max_sessions, key.wait) != (ref.max_sessions, ref.wait):
            report.add(
                WARNING,
                "client-limits",
                f"client {key.client}: --max-sessions/--wait differ from {there}; its budget depends on the key used",
                key.file,
                key.line,
            )
        if key.config != ref.config:
            report.add(
                WARNING, "client-config", f"client {key.client}: another --config than {there}", key.file, key.line
            )
        if not (_within(key.confinement, ref.confinement) or _within(ref.confinement, key.confinement)):
            report.add(
                WARNING,
                "client-confinement",
                f"client {key.client}: confined to {', '.join(_roots(key.confinement))}, unrelated to "
                f"{', '.join(_roots(ref.confinement))} at {there}: one name for two clients?",
                key.file,
                key.line,
            )


def check_user(report: CheckReport, user: User, path: str) -> None:
    if user.shell in NO_LOGIN_SHELLS:
        report.add(
            ERROR,
            "user-shell",
            f"user {user.name} has the shell {user.shell}: sshd runs command= through it, so no key here works",
            path,
        )
    if user.uid == 0:
        report.add(WARNING, "root", "these keys log in as root: borg serve would run as root", path)


# --------------------------------------------------------------------------- main


def check_counters(report: CheckReport, cfg: Config, keys_files: Sequence[str]) -> None:
    """Members' counters files holding what the gate never writes: named with their unix user."""
    from borg_gate.admin import counterfiles, status

    totals = counterfiles.load(cfg.state_dir, keys_files)
    for name, user, reasons in totals.rejected_files:
        entry = {"file": name, "user": user, "rejected": reasons}
        report.add(
            WARNING,
            "counters-rejected",
            f"{status.rejected_line(entry)}: written by hand or by someone else than the gate; metrics leave it out",
            os.path.join(cfg.state_dir, name),
        )


def run_check(
    config_path: str | None, keys_files: Sequence[str], sshd_config: str | None, *, sshd: bool = True
) -> CheckReport:
    report = CheckReport()
    default_path, required = config.config_path(config_path, os.environ)
    site = Site(report, default_path, required)
    cfg = site.config(None)
    gate_keys: list[GateKey] = []
    users: dict[str, User] = {}
    for path in keys_files:
        report.files += 1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    report.add(ERROR, "keys-file", "not a regular file: sshd ignores it", path)
                    continue
                data = fh.read(MAX_FILE)
        except OSError as exc:
            report.add(ERROR, "keys-file", f"cannot read: {exc.strerror}", path)
            continue
        user = keys_owner(path, st)
        if user is not None:
            users.setdefault(user.name, user)
            check_user(report, user, path)
        if st.st_mode & 0o022:
            report.add(WARNING, "keys-file", f"mode {stat.S_IMODE(st.st_mode):o}: sshd's StrictModes refuses it", path)
        FileCheck(site, report, path, user, gate_keys).run(data)
    compare_clients(report, gate_keys)
    runners = list(users.values()) or [User.from_pwd(pwd.getpwuid(os.geteuid()))]
    for loaded in [c for c in site.configs.values() if c is not None]:
        check_limits(report, loaded)
        check_state_dir(report, loaded, runners)
        check_log_file(report, loaded, runners)
        check_counters(report, loaded, keys_files)
    if sshd:
        settings = read_sshd(sshd_config)
        if isinstance(settings, str):
            report.add(INFO, "sshd", f"sshd settings not checked: {settings}")
        else:
            check_sshd(report, settings, cfg, len({k.client for k in gate_keys}))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="borg-gate check",
        description="Find unsafe or broken authorized_keys lines, config and sshd settings. "
        "Exit code 0: clean, 1: warnings only, 2: errors.",
    )
    p.add_argument("--config", metavar="FILE", help="config file (default: $BORG_GATE_CONFIG, else the built-in path)")
    p.add_argument(
        "--authorized-keys",
        metavar="FILE",
        nargs="+",
        action="extend",
        default=[],
        help="authorized_keys files to check (repeatable; none: only the config and sshd are checked)",
    )
    p.add_argument("--sshd-config", metavar="FILE", help="read this sshd_config instead of `sshd -T`")
    p.add_argument("--no-sshd", action="store_true", help="skip the sshd settings")
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    p.add_argument("-q", "--quiet", action="store_true", help="leave out info lines")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    report = run_check(args.config, args.authorized_keys, args.sshd_config, sshd=not args.no_sshd)
    if args.json:
        print(report.as_json())
    else:
        for finding in report.findings:
            if not (args.quiet and finding.severity == INFO):
                print(printable(finding.human()))
        print(
            f"borg-gate check: {report.count(ERROR)} error(s), {report.count(WARNING)} warning(s) "
            f"in {report.keys} key line(s) of {report.files} file(s)"
        )
    sys.stdout.flush()
    return report.exit_code
