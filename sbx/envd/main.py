"""Entry point: configuration from argv and the environment, then serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal

from . import template, users
from .app import App
from .httpd import HttpServer
from .memguard import MemoryGuard, limit_from_secrets
from .reaper import Reaper
from .state import TOKEN_ENV, EnvdState, public_env, take_secrets

DEFAULT_PORT = 49983
log = logging.getLogger("envd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="envd", description="sbx in-sandbox daemon")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: all IPv4)"
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--watch-polling",
        action="store_true",
        help="watch directories by polling instead of inotify",
    )
    return parser.parse_args(argv)


def ensure_std_fds() -> None:
    """As PID 1 envd may start with 0/1/2 closed; a pipe landing there would
    be clobbered when a child's stdio is set up."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def load_template(path: str) -> template.TemplateConfig | None:
    config = template.load(path)
    if config is not None and config.user is not None:
        try:
            users.lookup_spec(config.user)
        except users.UnknownUser:
            # The rest of the template still applies; processes run as
            # they would without a USER.
            log.error("template config %s: user %r not found, ignored", path, config.user)
            config = dataclasses.replace(config, user=None)
    return config


async def serve(
    args: argparse.Namespace,
    token: str | None,
    memory_mib: int | None = None,
    template_path: str = template.DEFAULT_PATH,
    start_log: str = template.DEFAULT_START_LOG,
) -> None:
    loop = asyncio.get_running_loop()
    state = EnvdState(access_token=token, base_env=public_env(os.environ),
                      memory_limit_mib=memory_mib, template=load_template(template_path))
    guard = MemoryGuard(lambda: state.memory_limit_mib)
    reaper = Reaper()
    reaper.start()
    # Only as the sandbox's init: anywhere else /proc shows a whole host,
    # whose processes are not ours to kill.
    if os.getpid() == 1:
        guard.start()
    app = App(state, reaper, force_polling=args.watch_polling, start_log=start_log)
    app.start_cmd.start()
    httpd = HttpServer(app)
    await httpd.listen(args.host, args.port)
    app.relisten = httpd.relisten
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("envd listening on %s:%d (pid %d)", args.host, args.port, os.getpid())
    try:
        await stop.wait()
    finally:
        httpd.close()
        # Before the kill: supervision would start the command again.
        app.start_cmd.stop()
        app.processes.kill_all()
        app.close()
        reaper.stop()
        guard.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(httpd.wait_closed(), 1.0)


def main(argv: list[str] | None = None) -> None:
    # Before anything else can copy the environment (children, logging config).
    secrets = take_secrets(os.environ)
    token = secrets.get(TOKEN_ENV) or None
    args = parse_args(argv)
    ensure_std_fds()
    # `kill -USR2 1` (runsc kill ID USR2) dumps every thread's stack to the
    # console log: the one way to see inside a wedged envd.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(
            args, token, limit_from_secrets(secrets),
            template_path=secrets.get(template.PATH_ENV) or template.DEFAULT_PATH,
            start_log=secrets.get(template.START_LOG_ENV) or template.DEFAULT_START_LOG,
        ))
