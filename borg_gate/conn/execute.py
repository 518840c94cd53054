"""The last step: hand the connection to borg serve with a clean environment.

exec, never a shell: the process keeps its pid, stdin keeps the client's first request
unread, and the slot descriptors stay open in borg serve so the kernel frees them when
it ends, however it ends.
"""

from __future__ import annotations

import os

from borg_gate.base.errors import misconfigured

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Final, NoReturn

PASSED_ENV: Final = frozenset({"HOME", "USER", "LOGNAME", "PATH", "LANG", "TZ", "SSH_CONNECTION", "SSH_CLIENT"})
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# borg serve --rest (2.0b22+) takes its permissions from it when --permissions is absent, and
# 2.0b18-b21's serve for every borg 2 repository: only the key line may say that (config refuses it).
NEVER_PASSED: Final = frozenset({"BORG_REPO_PERMISSIONS"})


def borg_environment(environ: Mapping[str, str], borg_env: Mapping[str, str]) -> dict[str, str]:
    """An allowlist: sshd's and the client's other variables never reach borg.

    SSH_ORIGINAL_COMMAND is left out on purpose: borg serve re-parses it when present and
    would then take log options from the raw client text; without it, borg's view is
    exactly the vetted argv.
    """
    env = {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(borg_env)
    for name in NEVER_PASSED:
        env.pop(name, None)
    return env


def become(argv: tuple[str, ...], env: Mapping[str, str], umask: int, keep_fds: Iterable[int]) -> NoReturn:
    """execve borg serve with the config's umask, handing it the slot descriptors; OSError if it cannot run.

    Shared by exec mode (this process) and supervise mode (its forked child).
    """
    os.umask(umask)
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    os.execve(argv[0], list(argv), dict(env))


def exec_serve(argv: tuple[str, ...], env: Mapping[str, str], umask: int, keep_fds: Iterable[int]) -> NoReturn:
    try:
        become(argv, env, umask, keep_fds)
    except OSError as exc:
        raise misconfigured(f"cannot run {argv[0]}: {exc.strerror}") from None
