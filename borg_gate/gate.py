"""One connection, from sshd to exec, top to bottom.

sshd runs ``borg-gate [key options]`` with the client's wish in SSH_ORIGINAL_COMMAND.
Each step below either narrows what will run or refuses; nothing reads stdin or writes
stdout, which belong to borg's protocol.
"""

from __future__ import annotations

import os
import sys
import time

from borg_gate import (
    command,
    config,
    confine,
    connection,
    execute,
    interrupt,
    keyopts,
    policy,
    reconnects,
    slots,
    versions,
)
from borg_gate.errors import Kind, Refusal, misconfigured
from borg_gate.events import EventLog, log_dir_problem
from borg_gate.interrupt import Interrupted

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Final, NoReturn

# The client reads stdout EOF before stderr in the same select pass: exiting at once loses
# the refusal line about half the time (BORG-FACTS). A short pause lets it arrive.
REFUSAL_PAUSE: Final = 0.2


def say(message: str) -> None:
    """One plain stderr line; the borg client shows it as ``Remote: borg-gate: …``."""
    line = "borg-gate: " + " ".join(message.split()) + "\n"
    try:  # the client is gone; nobody left to tell
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


def refuse(refusal: Refusal, log: EventLog) -> NoReturn:
    interrupt.leaving(int(refusal.kind))  # a signal from here on ends with this code, saying no more
    log.emit(
        "connection.refused",
        kind=refusal.kind.label,
        reason=refusal.reason,
        exit_code=int(refusal.kind),
        **refusal.fields,
    )
    say(refusal.reason)
    if refusal.kind is not Kind.CLIENT_GONE:
        time.sleep(REFUSAL_PAUSE)
    os._exit(int(refusal.kind))


def serve(argv: list[str], environ: Mapping[str, str]) -> NoReturn:
    conn = connection.current(environ)
    defaults = config.Config()
    log = EventLog(conn, defaults.log_file, state_dir=defaults.state_dir)  # until the config says where
    try:
        # 1. The sysadmin's key line and config. Broken means refuse: fail closed.
        key = keyopts.parse_key_options(argv)
        path, required = config.config_path(key.config, environ)
        try:
            cfg = config.load_config(path, required)
        except Refusal as exc:
            log.emit("config.error", reason=exc.reason, config=path)
            raise
        log = EventLog(conn, cfg.log_file, syslog=cfg.syslog, state_dir=cfg.state_dir)
        problem = log_dir_problem(cfg.log_file)
        if problem is not None:  # refused, and not logged there: anyone may have planted the file
            log = EventLog(conn, None, syslog=cfg.syslog, state_dir=cfg.state_dir)
            raise misconfigured(problem)
        client = policy.client_name(key, conn.unix_user)
        log.bind(client=client)

        # 2. The client's wish: only a vetted borg serve.
        request = command.parse_command(environ.get("SSH_ORIGINAL_COMMAND"))

        # 3. Which borg, what it can enforce, and the exact argv, confined by key and config.
        spec = policy.choose_binary(request, key, cfg)
        borg = versions.resolve(spec, cfg.state_dir)
        plan = policy.plan(request, key, cfg, borg, client)
        restrictions = tuple(plan.confinement.options())
        log.bind(binary=spec.path, borg_version=str(borg.version), restrictions=list(restrictions))
        confine.refuse_unconfined(plan.confinement)
        confine.check_backend(request.backend_path, plan.confinement)

        # 4. A session slot: the repository's (when known), the client's, then the host's; may
        # queue until the deadline (not again for a rest:// client's reconnect right after a
        # deadline refusal), and waits while root holds the host or the client.
        repo = policy.queued_repository(request, plan.confinement)
        repo = os.path.realpath(repo) if repo is not None else None  # one queue however it is spelt
        session = slots.Session(client, conn.id, spec.path, restrictions, conn.unix_user)
        held = reconnects.acquire(
            cfg.state_dir,
            client,
            conn.remote_ip,
            rest=request.rest,
            budget=plan.budget,
            take=lambda budget: slots.acquire(
                cfg.state_dir, client, budget, session, say=say, emit=log.emit, repo=repo, rest=request.rest
            ),
        )
        log.emit(
            "session.started", waited=round(held.waited, 3), slots=held.slots, queues=held.queues, argv=list(plan.argv)
        )

        # 5. borg serve takes over this process, holding the slots (or runs as its child, supervised).
        env = execute.borg_environment(environ, cfg.borg_env)
        if plan.supervise:
            from borg_gate import supervise  # only supervised connections pay for it

            interrupt.release(keep=supervise.FORWARDED)  # the supervisor forwards these to borg serve
            supervise.run(plan.argv, env, cfg.umask, held.fds, log)
        execute.exec_serve(plan.argv, env, cfg.umask, held.fds)
    except Refusal as refusal:
        refuse(refusal, log)
    except Interrupted as exc:
        refuse(Refusal(Kind.CLIENT_GONE, f"interrupted by {exc.name} before borg serve started"), log)
    except SystemExit:
        raise  # argparse's exit after --help: a person asked, nothing was served
    except BaseException as exc:
        import traceback  # only a bug pays for it

        log.emit("gate.error", error=repr(exc), traceback=traceback.format_exc())
        refuse(Refusal(Kind.INTERNAL, "internal error, refused (see the gate's log)"), log)


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        serve(sys.argv[1:] if argv is None else argv, os.environ)
    except Interrupted:  # arrived inside serve's own handlers, before a refusal took over: end quietly
        os._exit(int(Kind.CLIENT_GONE))
