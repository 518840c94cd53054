"""borg-gate authorize: the line it prints, what it refuses, and --install on real files.

Keys come from ssh-keygen. Every printed line is read back with authkeys (sshd's rules) and
the shell rules of split_command, and the gate's own option parser must give back what was
asked for. --install is exercised on real files: mode, owner, backup, idempotence, untouched
neighbours, and several real processes installing into one file at once.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from borg_gate.admin import authkeys, authorize
from borg_gate.admin.authkeys import KeyLine
from borg_gate.conn import keyopts
from tests.sshkeys import dsa_line

GATE = str(Path(sys.executable).with_name("borg-gate"))


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    for name, args in {
        "ed": ["-t", "ed25519"],
        "ed2": ["-t", "ed25519"],
        "ed3": ["-t", "ed25519"],
        "rsa": ["-t", "rsa", "-b", "3072"],
        "ecdsa": ["-t", "ecdsa"],
        "ca": ["-t", "ed25519"],
    }.items():
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@host", "-f", str(d / name)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(d / "ca"), "-I", "id", "-n", "u", str(d / "ed.pub")], check=True)
    return d


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose repos root exists for clients a, b and web1 (as BORG_GATE_CONFIG)."""
    repos = tmp_path / "repos"
    for c in ("a", "b", "web1"):
        (repos / c).mkdir(parents=True)
    (tmp_path / "state").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[gate]\nstate_dir = "{tmp_path}/state"\nlog_file = ""\n[repos]\nroot = "{repos}/{{client}}"\n'
        '[borg.binaries]\nborg = "/usr/bin/borg"\nborg2 = "/usr/bin/borg2"\n'
    )
    monkeypatch.setenv("BORG_GATE_CONFIG", str(path))
    return path


def pub(keydir: Path, name: str) -> str:
    return (keydir / f"{name}.pub").read_text().strip()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = authorize.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def parse_back(line: str) -> tuple[list[str], KeyLine]:
    kl = authkeys.parse_line(line, 1)
    assert isinstance(kl, KeyLine)
    assert kl.options.command is not None
    return authkeys.split_command(kl.options.command), kl


# --------------------------------------------------------------------------- the printed line


def test_prints_the_line_of_the_issue(keydir: Path, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--client", "web1", str(keydir / "ed.pub")], capsys)
    assert code == 0, err
    assert out == f'command="borg-gate --client web1",restrict {pub(keydir, "ed")}\n'
    assert err == ""


@pytest.mark.parametrize("name", ["ed", "rsa", "ecdsa"])
def test_every_usable_key_type(keydir: Path, cfg: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out, _ = run(["--client", "a", "--gate", GATE, str(keydir / f"{name}.pub")], capsys)
    assert code == 0
    argv, kl = parse_back(out.strip())
    assert argv == [GATE, "--client", "a"]
    assert kl.key.render() == pub(keydir, name)
    assert kl.options.restrict and not any(kl.options.allowed().values())


# A value for each option of keyopts' table: a new option needs one here, and authorize must carry it.
SAMPLE_VALUES: dict[str, str | None] = {
    "--client": "a",
    "--config": "/etc/borg-gate/other.toml",
    "--restrict-to-path": "/srv/borg/{client}",
    "--restrict-to-repository": "/srv/one",
    "--append-only": None,
    "--permissions": "no-delete",
    "--storage-quota": "500G",
    "--borg": "borg2",
    "--max-sessions": "3",
    "--wait": "2.5",
    "--supervise": None,
    "--priority": None,
    "--max-sessions-per-repo": "1",
}
EVERY_OPTION = [word for name, value in SAMPLE_VALUES.items() for word in (name, value) if word is not None]


def test_every_option_of_the_table_has_a_sample() -> None:
    assert set(SAMPLE_VALUES) == set(keyopts.BY_NAME)


KEY_OPTION_SETS = [
    EVERY_OPTION,
    ["--client", "a", "--append-only", "--wait", "1800"],
    ["--client", "a", "--permissions", "no-delete", "--borg", "borg2", "--max-sessions", "1"],
    ["--client", "a", "--restrict-to-path", "/srv/borg/{client}", "--restrict-to-path", "/srv/more"],
    ["--client", "a", "--restrict-to-repository", "/srv/with space/{client}/repo", "--storage-quota", "500G"],
    ["--client", "a", "--wait", "0.5", "--supervise", "--restrict-to-path", "/srv/a,b/{client}"],
    ["--client", "a", "--config", "/etc/borg-gate/other.toml", "--restrict-to-path", "/srv/$x;`id`|(y)"],
]


@pytest.mark.parametrize("options", KEY_OPTION_SETS)
def test_key_options_come_back_as_the_gate_reads_them(
    keydir: Path, options: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = authorize.build_parser()
    ns = parser.parse_args([*options, "--gate", "/opt/borg gate/borg-gate", str(keydir / "ed.pub")])
    argv = authorize.key_argv(ns)
    line = authorize.build_line(ns.gate, argv, authorize.read_public_key(pub(keydir, "ed")), None)
    words, _ = parse_back(line)
    assert words[0] == "/opt/borg gate/borg-gate"
    assert keyopts.parse_key_options(words[1:]) == keyopts.parse_key_options(options)


def test_from_option(keydir: Path, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--client", "a", "--from", "192.0.2.0/24,!192.0.2.9", str(keydir / "ed.pub")], capsys)
    assert code == 0
    _, kl = parse_back(out.strip())
    assert kl.options.first("from") == "192.0.2.0/24,!192.0.2.9"
    code, _, err = run(["--client", "a", "--from", 'x" y', str(keydir / "ed.pub")], capsys)
    assert code == 1 and "--from" in err


def test_stdin_and_crlf(keydir: Path, cfg: Path) -> None:
    p = subprocess.run(
        [GATE, "authorize", "--client", "a", "-"],
        input=(pub(keydir, "ed") + "\r\n").encode(),
        capture_output=True,
        check=False,
        env={**os.environ, "BORG_GATE_CONFIG": str(cfg)},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == f'command="borg-gate --client a",restrict {pub(keydir, "ed")}\n'


# --------------------------------------------------------------------------- refusals


def hostile_inputs(keydir: Path) -> dict[str, tuple[str, str]]:
    ed = pub(keydir, "ed")
    typ, b64, _ = ed.split(" ", 2)
    rsa_b64 = pub(keydir, "rsa").split()[1]
    return {
        "options": (f"restrict {ed}", "carries its own options"),
        "forced command": (f'command="sh -i" {ed}', "carries its own options"),
        "two lines": (f"{ed}\n{pub(keydir, 'ed2')}\n", "more than one line"),
        "newline in comment": (f"{typ} {b64} a\nb", "more than one line"),
        "lone CR": (f"{typ} {b64} a\rcommand=x", "more than one line"),
        "comment line": (f"# {ed}", "empty or a comment"),
        "empty": ("\n", "empty or a comment"),
        "bad base64": (f"{typ} {b64[:-3]}!!! x", "not valid base64"),
        "type mismatch": (f"ssh-ed25519 {rsa_b64} x", "holds a ssh-rsa key, the line says ssh-ed25519"),
        "unknown type": (f"ssh-foo {b64}", "not a public key"),
        "certificate": ((keydir / "ed-cert.pub").read_text(), "certificate"),
        "dsa": (dsa_line(), "DSA key (ssh-dss): OpenSSH 10 cannot read DSA keys"),
        "nul": (f"{ed}\0junk", "NUL"),
        "control char in comment": (f"{typ} {b64} a\x1b[2Jb", "control characters"),
        "huge": (f"{ed} {'x' * 70000}", "over 65536 bytes"),
    }


def test_hostile_inputs_are_refused(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for what, (text, reason) in hostile_inputs(keydir).items():
        f = tmp_path / "in.pub"
        f.write_bytes(text.encode())
        code, out, err = run(["--client", "a", str(f)], capsys)
        assert (code, out) == (1, ""), what
        assert err.startswith("borg-gate: authorize: ") and reason in err, (what, err)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--client", "a b"], "--client"),
        (["--client", "a", "--storage-quota", "1K"], "at least 10M"),
        (["--client", "a", "--restrict-to-path", "relative"], "absolute path"),
        (["--client", "a", "--restrict-to-path", "/srv/it's"], "cannot quote"),
        (["--client", "a", "--restrict-to-path", '/srv/"x"'], "cannot quote"),
        (["--client", "a", "--restrict-to-path", "/srv/back\\slash"], "cannot quote"),
        (["--client", "a", "--borg", "nope"], "names no binary"),
        (["--client", "a", "--permissions", "read-only"], "cannot enforce"),
        (["--client", "a", "--gate", "/bin/borg gate's"], "cannot quote"),
    ],
)
def test_options_the_gate_would_refuse(
    keydir: Path, cfg: Path, capsys: pytest.CaptureFixture[str], options: list[str], reason: str
) -> None:
    code, out, err = run([*options, str(keydir / "ed.pub")], capsys)
    assert (code, out) == (1, "")
    assert reason in err, err


def test_warnings_do_not_refuse(keydir: Path, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--client", "nodir", str(keydir / "ed.pub")], capsys)
    assert code == 0 and out
    assert "borg-gate: warning: confinement" in err and "does not exist [path-missing]" in err


def test_client_is_required(keydir: Path) -> None:
    p = subprocess.run([GATE, "authorize", str(keydir / "ed.pub")], capture_output=True, text=True, check=False)
    assert p.returncode == 2 and "--client NAME is required" in p.stderr and p.stdout == ""


# --------------------------------------------------------------------------- --install


def install(target: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, _, err = run(["--install", str(target), "-q", *args], capsys)
    return code, err


def test_install_creates_adds_replaces_and_is_idempotent(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    if os.geteuid() == 0:  # a user's ~/.ssh, as root edits it
        os.chown(ssh, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    target = ssh / "authorized_keys"
    ed, ed2 = str(keydir / "ed.pub"), str(keydir / "ed2.pub")

    code, err = install(target, capsys, "--client", "a", ed)
    assert code == 0 and "added" in err
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (ssh / "authorized_keys.bak").exists()
    first = target.read_text()
    assert first == f'command="borg-gate --client a",restrict {pub(keydir, "ed")}\n'

    assert install(target, capsys, "--client", "b", ed2)[0] == 0
    two = target.read_text()
    assert two == first + f'command="borg-gate --client b",restrict {pub(keydir, "ed2")}\n'
    assert (ssh / "authorized_keys.bak").read_text() == first

    code, err = install(target, capsys, "--client", "a", "--append-only", ed)
    assert code == 0 and "replaced line 1" in err
    lines = target.read_text().splitlines()
    assert lines[0] == f'command="borg-gate --client a --append-only",restrict {pub(keydir, "ed")}'
    assert lines[1] == two.splitlines()[1]
    assert (ssh / "authorized_keys.bak").read_text() == two

    before = target.stat()
    bak_before = (ssh / "authorized_keys.bak").stat()
    code, err = install(target, capsys, "--client", "a", "--append-only", ed)
    assert code == 0 and "already present" in err
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (ssh / "authorized_keys.bak").stat().st_ino == bak_before.st_ino
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys", "authorized_keys.bak"]  # no temp left


def test_install_keeps_everything_else_byte_for_byte(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "authorized_keys"
    ed, ed2 = pub(keydir, "ed"), pub(keydir, "ed2")
    original = (
        b"# managed by hand\r\n"
        + f'command="old",restrict {ed}\r\n'.encode()
        + b"garbage line \xff\xfe\n"
        + f"\n  {ed2}\n".encode()
        + f"restrict {ed} duplicate".encode()  # a later line for the same key, no final newline
    )
    target.write_bytes(original)
    code, err = install(target, capsys, "--client", "a", str(keydir / "ed.pub"))
    assert code == 0 and "replaced line 2" in err and "removed later line(s) 6" in err
    new_line = f'command="borg-gate --client a",restrict {ed}'.encode()
    assert target.read_bytes() == (
        b"# managed by hand\r\n" + new_line + b"\r\n" + b"garbage line \xff\xfe\n" + f"\n  {ed2}\n".encode()
    )
    assert (tmp_path / "authorized_keys.bak").read_bytes() == original


def test_install_appends_after_a_last_line_without_newline(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "authorized_keys"
    target.write_text(pub(keydir, "ed2"))
    assert install(target, capsys, "--client", "a", str(keydir / "ed.pub"))[0] == 0
    assert target.read_text().splitlines() == [
        pub(keydir, "ed2"),
        f'command="borg-gate --client a",restrict {pub(keydir, "ed")}',
    ]


def test_install_keeps_mode_and_owner(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "authorized_keys"
    target.write_text("# keys\n")
    target.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        owner = (nobody.pw_uid, nobody.pw_gid)
        os.chown(target, *owner)
    assert install(target, capsys, "--client", "a", str(keydir / "ed.pub"))[0] == 0
    for path in (target, tmp_path / "authorized_keys.bak"):
        st = path.stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, *owner), path


def test_new_file_belongs_to_the_directorys_owner(
    keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        owner = (nobody.pw_uid, nobody.pw_gid)
        os.chown(ssh, *owner)
    assert install(ssh / "authorized_keys", capsys, "--client", "a", str(keydir / "ed.pub"))[0] == 0
    st = (ssh / "authorized_keys").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, *owner)


def test_new_file_in_a_root_owned_directory() -> None:
    """AuthorizedKeysFile /etc/ssh/authorized_keys/%u: root's file, readable by the user sshd reads it as."""
    root_dir = os.stat_result((0o40755, 1, 1, 1, 0, 0, 0, 0, 0, 0))
    assert authorize.new_file_owner("/etc/ssh/authorized_keys/nobody", root_dir) == (0o644, 0, 0)
    assert authorize.new_file_owner("/root/.ssh/authorized_keys", root_dir) == (0o600, 0, 0)
    user_dir = os.stat_result((0o40700, 1, 1, 1, 1000, 1001, 0, 0, 0, 0))
    assert authorize.new_file_owner("/home/u/.ssh/authorized_keys", user_dir) == (0o600, 1000, 1001)


def test_install_refuses_a_symlink(keydir: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real"
    real.write_text("# keys\n")
    link = tmp_path / "authorized_keys"
    link.symlink_to(real)
    code, err = install(link, capsys, "--client", "a", str(keydir / "ed.pub"))
    assert code == 1 and "not a regular file" in err
    assert real.read_text() == "# keys\n" and link.is_symlink()


def test_concurrent_installs_lose_nothing(keydir: Path, cfg: Path, tmp_path: Path) -> None:
    """Real processes at once, each with its own key: the lock keeps every line."""
    keys = []
    for i in range(8):
        k = tmp_path / f"c{i}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"c{i}", "-f", str(k)], check=True)
        keys.append(k)
    target = tmp_path / "authorized_keys"
    env = {**os.environ, "BORG_GATE_CONFIG": str(cfg)}
    procs = [
        subprocess.Popen(
            [GATE, "authorize", "-q", "--client", "a", "--install", str(target), f"{k}.pub"],
            env=env,
            stderr=subprocess.PIPE,
        )
        for k in keys
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    lines = target.read_text().splitlines()
    assert sorted(line.rsplit(" ", 1)[1] for line in lines) == sorted(f"c{i}" for i in range(8))
