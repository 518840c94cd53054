"""End-to-end harness: a private sshd on 127.0.0.1, unix test users, the gate installed for them.

What a backup host really has: sshd runs the gate as the key's unix user from a
``command="…"`` line, the gate execs a real borg serve, and a real borg client talks to it
over ssh. Everything lives under one world-traversable temp dir; sshd listens on 127.0.0.1
only. Needs root (to run sshd and create users), as CI does.

Typical use (fixtures in tests/e2e/conftest.py)::

    def test_backup(site, borg_client):
        site.authorize("bgate-a", site.key("alice"), "--client alice")
        repo = site.repo_url("bgate-a", "/srv/alice/repo")        # under the site's repos root
        borg_client.run(["init", "-e", "none", repo], key=site.key("alice")).check()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import platform_facts
from tests.testhost import GateHost
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/borg-gate-tests")  # world-readable; reused between runs on one machine
USERS = ("bgate-a", "bgate-b", "bgate-c")
GROUP = "bgate-e2e"
SSHD = "/usr/sbin/sshd"
SYSTEM_PYTHON = "/usr/bin/python3"
BORG1 = platform_facts.BORG1
BORG2 = platform_facts.BORG2


def run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    return subprocess.run(list(cmd), **kw)


# --------------------------------------------------------------------------- users


def ensure_group(name: str = GROUP) -> None:
    if run(["getent", "group", name], check=False).returncode != 0:
        run(["groupadd", name])


def ensure_user(name: str) -> None:
    """A login user whose password field is '*' (sshd with UsePAM no refuses '!' accounts)."""
    ensure_group()
    if run(["getent", "passwd", name], check=False).returncode != 0:
        run(["useradd", "--create-home", "--shell", "/bin/sh", "--groups", GROUP, name])
    run(["usermod", "--password", "*", "--append", "--groups", GROUP, name])


def uid_gid(user: str) -> tuple[int, int]:
    out = run(["id", "-u", user]).stdout.strip(), run(["id", "-g", user]).stdout.strip()
    return int(out[0]), int(out[1])


def group_id(name: str = GROUP) -> int:
    return int(run(["getent", "group", name]).stdout.split(":")[2])


# --------------------------------------------------------------------------- gate install


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([*REPO_ROOT.joinpath("borg_gate").rglob("*.py"), REPO_ROOT / "pyproject.toml"]):
        h.update(str(path.relative_to(REPO_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def install_gate(base: Path) -> Path:
    """The gate as a sysadmin installs it: a venv from /usr/bin/python3, pip install of this repo.

    A venv under /root (pyenv) cannot be run by the test users, hence the system Python and a
    world-readable location. BORG_GATE_E2E_BIN points the suite at an installed binary instead
    (the Debian package's /usr/bin/borg-gate).
    """
    preset = os.environ.get("BORG_GATE_E2E_BIN")
    if preset:
        return Path(preset)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    venv = base / f"gate-venv-{_source_digest()}"
    if not (venv / "bin" / "borg-gate").exists():
        run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(REPO_ROOT)])
    return venv / "bin" / "borg-gate"


# --------------------------------------------------------------------------- sshd


def has_penalties() -> bool:
    """PerSourcePenalties came with OpenSSH 9.8 (Debian 13's 10.0 has it, Debian 12's 9.2 not)."""
    return float(platform_facts.sshd_version()) >= 9.8


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apply_service_priority(pid: int, drop_in: Path) -> str:
    """A systemd drop-in's Nice=, CPUScheduling{Policy,Priority,ResetOnFork}= applied to a running
    process as systemd applies them when it starts the service (packaging/ssh.service.d, for
    sshd's listener)."""
    settings = dict(
        line.split("=", 1) for line in drop_in.read_text().splitlines() if line[:1].isalpha() and "=" in line
    )
    nice = int(settings.get("Nice", "0"))
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    policy = {"other": os.SCHED_OTHER, "fifo": os.SCHED_FIFO, "rr": os.SCHED_RR}[
        settings.get("CPUSchedulingPolicy", "other")
    ]
    priority = int(settings.get("CPUSchedulingPriority", "0"))
    reset = settings.get("CPUSchedulingResetOnFork") == "yes"
    os.sched_setscheduler(pid, policy | (os.SCHED_RESET_ON_FORK if reset else 0), os.sched_param(priority))
    how = f"nice {nice}" if policy == os.SCHED_OTHER else f"{settings['CPUSchedulingPolicy']} {priority}"
    return f"listener at {how}{', reset on fork' if reset else ''} ({drop_in.parent.name}/{drop_in.name})"


@dataclass
class Sshd:
    """A private sshd on 127.0.0.1; authorized_keys live in ``keys_dir/<user>``."""

    base: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def keys_dir(self) -> Path:
        return self.base / "authorized_keys"

    @property
    def log_path(self) -> Path:
        return self.base / "sshd.log"

    def start(self, extra_config: str = "", *, leading_config: str = "", penalties: bool = False) -> None:
        """Start listening. ``leading_config`` goes first, where it wins over the defaults below
        (for each keyword sshd keeps the first value it reads); ``extra_config`` goes last.
        ``penalties``: keep sshd 9.8+'s PerSourcePenalties as shipped.

        Every test client comes from 127.0.0.1, so the suite's own auth failures (keys that are
        refused on purpose) would lock all later tests out: the shared sshd exempts loopback.
        """
        self.base.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        host_key = self.base / "host_ed25519"
        if not host_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        self.port = free_port()
        config = self.base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    leading_config,
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.keys_dir}/%u",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin no",
                    "ExposeAuthInfo yes",
                    # Unlike most keywords, sshd keeps the LAST MaxStartups it reads: this default
                    # only where the caller sets none, or it would override theirs (bench/herd).
                    *([] if "MaxStartups" in leading_config + extra_config else ["MaxStartups 200:30:400"]),
                    "MaxSessions 50",
                    "LogLevel VERBOSE",
                    f"AllowUsers {' '.join(USERS)}",
                    *([] if penalties or not has_penalties() else ["PerSourcePenaltyExemptList 127.0.0.1"]),
                    extra_config,
                    "",
                ]
            )
        )
        run([SSHD, "-t", "-f", str(config)])
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
        )
        wait_for(self.listening, f"sshd to listen on port {self.port}", timeout=30)

    def listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def write_keys(self, user: str, lines: Sequence[str]) -> None:
        """Replace ``user``'s authorized_keys (sshd re-reads it on every connection)."""
        path = self.keys_dir / user
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line.rstrip("\n") + "\n" for line in lines))
        tmp.chmod(0o644)
        tmp.replace(path)


# --------------------------------------------------------------------------- client side


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            command = shlex.join(self.args)
            output = f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
            raise AssertionError(f"{command} exited {self.returncode}\n{output}")
        return self


@dataclass(frozen=True)
class ClientKey:
    name: str
    private: Path
    public_line: str  # "ssh-ed25519 AAAA… comment"


def ssh_options(key: ClientKey) -> list[str]:
    return [
        "-i",
        str(key.private),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=30",
    ]


@dataclass
class Site(GateHost):
    """One backup host's server side (tests/testhost.GateHost) behind a private sshd, with its client keys."""

    sshd: Sshd = field(kw_only=True)
    gate: Path = field(kw_only=True)
    keys: dict[str, ClientKey] = field(default_factory=dict)
    authorized: set[str] = field(default_factory=set)  # unix users this site wrote authorized_keys for

    def setup(self) -> None:
        """Directories as packaging/ lays them out: shared by the test users through a group."""
        gid = group_id()
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        for d, mode in ((self.state_dir, 0o3770), (self.log_file.parent, 0o3770), (self.repos, 0o2770)):
            d.mkdir()
            os.chown(d, 0, gid)
            d.chmod(mode)  # sticky where members share files (packaging/tmpfiles.d), setgid everywhere
        for f in (self.log_file, self.state_dir / "locks"):  # root's files, as the tmpfiles entry makes them
            f.touch()
            os.chown(f, 0, gid)
            f.chmod(0o660)
        (self.root / "clientkeys").mkdir(mode=0o700)
        (self.root / "borg-base").mkdir(mode=0o700)
        self.write_config()

    def key_files(self) -> list[str]:
        """``--authorized-keys`` and the files this site wrote for sshd: root's monitoring learns from them
        which unix user serves which client (the system sshd's ``sshd -T`` knows nothing of this one's;
        the private sshd's dir holds every site's users)."""
        return ["--authorized-keys", *sorted(str(self.sshd.keys_dir / user) for user in self.authorized)]

    def repo_dir(self, client: str, owner: str) -> Path:
        """The per-client repos root ``repos/<client>``, owned by the unix user serving it."""
        d = self.repos / client
        d.mkdir(exist_ok=True)
        uid, gid = uid_gid(owner)
        os.chown(d, uid, gid)
        d.chmod(0o700)
        return d

    def sections(self) -> dict[str, dict[str, Any]]:
        return {
            **super().sections(),
            "limits": {"max_sessions": 8, "max_sessions_per_client": 4, "wait": 60},
            "borg": {"default": "borg"},
            "borg.binaries": {"borg": BORG1, "borg2": BORG2},
        }

    # ---- keys
    def key(self, name: str) -> ClientKey:
        """A client's ssh key pair (made once per site)."""
        if name not in self.keys:
            private = self.root / "clientkeys" / name
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@e2e", "-f", str(private)])
            self.keys[name] = ClientKey(name, private, Path(f"{private}.pub").read_text().strip())
        return self.keys[name]

    def key_line(self, key: ClientKey, options: str = "", *, gate: str | None = None) -> str:
        """An authorized_keys line forcing the gate with this site's config and ``options``."""
        cmd = f"{gate or self.gate} --config {self.config_path} {options}".strip()
        return f'command="{cmd}",restrict {key.public_line}'

    def authorize(self, user: str, *entries: tuple[ClientKey, str]) -> None:
        """Set ``user``'s authorized_keys to one gate line per (key, key options)."""
        self.sshd.write_keys(user, [self.key_line(k, opts) for k, opts in entries])
        self.authorized.add(user)

    def repo_url(self, user: str, path: str | Path, scheme: str = "ssh") -> str:
        return f"{scheme}://{user}@127.0.0.1:{self.sshd.port}{path}"

    # ---- client
    def borg(
        self,
        args: Sequence[str],
        key: ClientKey,
        *,
        borg: str = BORG1,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        stdin: str | None = None,
        cwd: Path | None = None,
    ) -> Result:
        """Run a real borg client as root on this host, talking to the site over ssh."""
        cmd = [borg, *args]
        p = subprocess.run(
            cmd,
            env=self.borg_env(key, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
            check=False,
            cwd=cwd,
        )
        return Result(cmd, p.returncode, p.stdout, p.stderr)

    def borg_env(self, key: ClientKey, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A borg client's environment for ``key``: its own base dir, ssh with that key, no prompts."""
        base = self.root / "borg-base" / key.name
        base.mkdir(exist_ok=True)
        full_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(base),
            "LANG": "C.UTF-8",
            "BORG_BASE_DIR": str(base),
            "BORG_RSH": shlex.join(["ssh", *ssh_options(key)]),
            "BORG_PASSPHRASE": "e2e-passphrase",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "YES",
            "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "YES",
        }
        full_env.update(env or {})
        return full_env

    def ssh(self, user: str, key: ClientKey, command: str | None, *, timeout: float = 60) -> Result:
        """Plain ssh to the gate (what scp, rsync or a person would do)."""
        cmd = ["ssh", *ssh_options(key), "-T", "-p", str(self.sshd.port), f"{user}@127.0.0.1"]
        if command is not None:
            cmd.append(command)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        return Result(cmd, p.returncode, p.stdout, p.stderr)


def make_tree(path: Path, files: int = 20) -> Path:
    """A small source tree to back up, with a checksum per file."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (path / f"file-{i:03d}.txt").write_bytes(hashlib.sha256(str(i).encode()).hexdigest().encode() * (i + 1))
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "nested.bin").write_bytes(os.urandom(4096))
    return path


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def e2e_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="borg-gate-e2e-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("the end-to-end suite runs sshd and creates test users: run it as root (CI does)")
