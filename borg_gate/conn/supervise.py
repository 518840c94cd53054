"""Supervise mode: borg serve as a child, so the gate can log how the session ended.

The child shares stdin, stdout and stderr (the client's pipes) and inherits the slot
descriptors; the supervisor then drops its own copies of both, so a slot frees exactly
when borg serve ends (as in exec mode), the client sees EOF as soon as borg closes its
stdout, and the supervisor cannot write to the protocol channel even by mistake. If the
supervisor is killed, borg serve keeps serving and keeps its slots.

Accounting without psutil and without a race: ``wait4`` returns the child's rusage (CPU
seconds, max RSS), and reaping it makes the kernel add its I/O counts (bytes through every
read/write call, pipes and repository files alike, its own reaped helpers included) to
ours, so /proc/self/io read just before and just after ``wait4`` gives them by difference.
Reading /proc/<child>/io of the zombie instead works only for root: since Linux 5.x a
zombie's /proc files belong to root (seen on 6.18: EACCES for the same unprivileged user).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Final, NoReturn

from borg_gate.base.errors import misconfigured
from borg_gate.base.events import EventLog
from borg_gate.conn import execute

FORWARDED: Final = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
IO_FIELDS: Final = {
    "rchar": "bytes_read",
    "wchar": "bytes_written",
    "read_bytes": "disk_read",
    "write_bytes": "disk_written",
}


@dataclass(frozen=True)
class Ended:
    """How a supervised borg serve ended, and what it used."""

    pid: int
    exit_code: int  # borg's code, or 128+N when killed by signal N (as a shell reports it)
    signal: str | None
    duration: float
    cpu_seconds: float
    max_rss: int  # bytes
    io: Mapping[str, int]  # bytes_read, bytes_written (all read/write calls), disk_read, disk_written


def read_io(path: str = "/proc/self/io") -> tuple[dict[str, int], int]:
    """A /proc io file, renamed, and how many bytes reading it took; empty if the kernel would not tell."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}, 0
    try:
        raw = os.read(fd, 4096)  # one read: its byte count is subtracted from rchar below
    except OSError:
        return {}, 0
    finally:
        os.close(fd)
    out: dict[str, int] = {}
    for line in raw.decode("ascii", "replace").splitlines():
        name, _, value = line.partition(":")
        if name in IO_FIELDS and value.strip().isdigit():
            out[IO_FIELDS[name]] = int(value)
    return out, len(raw)


def reap(pid: int) -> tuple[int, resource.struct_rusage, dict[str, int]]:
    """wait4 for the child, and the I/O it did, as the growth of our own counts at the reap."""
    before, cost = read_io()
    _, status, usage = os.wait4(pid, 0)
    after, _ = read_io()
    io = {k: after[k] - before[k] for k in before if k in after}
    if "bytes_read" in io:
        io["bytes_read"] -= cost  # our own read of /proc/self/io, counted between the two readings
    return status, usage, io


class _Forwarder:
    """Passes the supervisor's HUP/TERM/INT on to borg serve while it may still need them."""

    def __init__(self) -> None:
        self.child = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)


def _child(
    argv: tuple[str, ...],
    env: Mapping[str, str],
    umask: int,
    keep_fds: Iterable[int],
    mask: set[int | signal.Signals],
    report: int,
) -> NoReturn:
    """In the forked child: exec borg serve, or tell the parent why not. Never returns to the gate."""
    try:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        execute.become(argv, env, umask, keep_fds)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(report, str(exc.errno).encode())
    finally:
        os._exit(127)


def spawn(argv: tuple[str, ...], env: Mapping[str, str], umask: int, keep_fds: Iterable[int]) -> tuple[int, _Forwarder]:
    """Start borg serve as a child with signals forwarded; a Refusal if it cannot be exec'd."""
    keep = list(keep_fds)
    forward = _Forwarder()
    # Blocked across fork: a signal arriving before the child's pid is known waits for it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    for sig in FORWARDED:
        signal.signal(sig, forward)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)  # closed by a successful exec: EOF means running
    pid = os.fork()
    if pid == 0:
        _child(argv, env, umask, keep, previous, report_w)
    forward.child = pid
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    os.close(report_w)
    try:
        failure = os.read(report_r, 64)
    finally:
        os.close(report_r)
    if failure:
        forward.child = 0
        os.waitpid(pid, 0)
        errno = int(failure) if failure.isdigit() else 0
        raise misconfigured(f"cannot run {argv[0]}: {os.strerror(errno)}")
    return pid, forward


def _let_go(keep_fds: Iterable[int]) -> None:
    """Drop the supervisor's share of the slots and of the client's stdin/stdout."""
    for fd in keep_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def wait(pid: int, forward: _Forwarder, started: float) -> Ended:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped: signals still reach a zombie
    duration = time.monotonic() - started
    forward.child = 0  # reaping frees the pid for reuse: forward nothing after this
    status, usage, io = reap(pid)
    code = os.waitstatus_to_exitcode(status)
    signame = None
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:  # real-time signals have no name in the enum
            signame = f"SIG{-code}"
        code = 128 - code
    return Ended(
        pid=pid,
        exit_code=code,
        signal=signame,
        duration=duration,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss=usage.ru_maxrss * 1024,  # Linux reports KiB
        io=io,
    )


def run(argv: tuple[str, ...], env: Mapping[str, str], umask: int, keep_fds: Iterable[int], log: EventLog) -> NoReturn:
    """Serve the connection through a child borg serve, log session.ended, exit with borg's code."""
    keep = list(keep_fds)
    started = time.monotonic()
    pid, forward = spawn(argv, env, umask, keep)
    _let_go(keep)
    ended = wait(pid, forward, started)
    log.emit(
        "session.ended",
        serve_pid=ended.pid,
        exit_code=ended.exit_code,
        signal=ended.signal,
        duration=round(ended.duration, 3),
        cpu_seconds=round(ended.cpu_seconds, 3),
        max_rss=ended.max_rss,
        **ended.io,
    )
    os._exit(ended.exit_code)
