"""One connection, from sshd to exec, top to bottom.

sshd runs ``borg-gate [key options]`` with the client's wish in SSH_ORIGINAL_COMMAND.
Each step below either narrows what will run or refuses; nothing reads stdin or writes
stdout, which belong to borg's protocol.
"""

from __future__ import annotations

import os
import sys

from borg_gate.base import config, connection
from borg_gate.base.errors import Kind, Refusal, misconfigured
from borg_gate.base.events import EventLog, log_dir_problem
from borg_gate.conn import command, confine, execute, keyopts, policy, session, tell, versions
from borg_gate.conn.interrupt import Interrupted

TYPE_CHECKING = False  # typing is not imported at run time on the connection path (values)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn


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

        # 4. and 5. Session slots, queueing if it must (as a lean waiter: session), then borg serve.
        repo = policy.queued_repository(request, plan.confinement)
        seat = session.Seat(
            state_dir=cfg.state_dir,
            client=client,
            binary=spec.path,
            restrictions=restrictions,
            budget=plan.budget,
            repo=os.path.realpath(repo) if repo is not None else None,  # one queue however it is spelt
            rest=request.rest,
            argv=plan.argv,
            env=execute.borg_environment(environ, cfg.borg_env),
            umask=cfg.umask,
            supervise=plan.supervise,
            log_file=log.log_file,
            syslog=log.syslog,
            conn=conn,
            context=log.context,
        )
        session.start(seat, log)
    except SystemExit:
        raise  # argparse's exit after --help: a person asked, nothing was served
    except BaseException as exc:  # a refusal, a signal, a bug: one line, one event, its exit code
        tell.fail(exc, log)


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        serve(sys.argv[1:] if argv is None else argv, os.environ)
    except Interrupted:  # arrived inside serve's own handlers, before a refusal took over: end quietly
        os._exit(int(Kind.CLIENT_GONE))
