"""`sbx sandbox ...`: manage sandboxes and work inside them, through the SDK only."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from functools import update_wrapper
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from sbx.cli.params import pairs
from sbx.sdk import AuditEntry, Sandbox, SandboxInfo, SbxError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass(frozen=True)
class Conn:
    api_url: str | None
    api_key: str | None


class _SdkErrors(click.Group):
    """Every SDK error becomes one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SbxError as exc:
            _fail(str(exc))


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


def _connection_options(f: F) -> F:
    """``--api-url``/``--api-key`` on every subcommand too, so they may follow it."""
    f = click.option("--api-key", default=None, help="API key (env SBX_API_KEY).")(f)
    f = click.option("--api-url", default=None, help="Server URL (env SBX_API_URL).")(f)
    return f


def _conn(ctx: click.Context, api_url: str | None, api_key: str | None) -> Conn:
    parent = ctx.find_object(Conn) or Conn(None, None)
    return Conn(api_url or parent.api_url, api_key or parent.api_key)


def _pass_conn(f: Callable[..., Any]) -> Callable[..., Any]:
    """Resolve the connection options into one ``conn`` argument."""

    @click.pass_context
    def wrapper(
        ctx: click.Context, /, *args: Any, api_url: str | None, api_key: str | None, **kwargs: Any
    ) -> Any:
        return f(_conn(ctx, api_url, api_key), *args, **kwargs)

    return update_wrapper(wrapper, f)


@click.group("sandbox", cls=_SdkErrors)
@click.option("--api-url", envvar="SBX_API_URL", default=None,
              help="Server URL (env SBX_API_URL, default http://127.0.0.1:3000).")
@click.option("--api-key", envvar="SBX_API_KEY", default=None, help="API key (env SBX_API_KEY).")
@click.pass_context
def sandbox(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """Create, inspect and use sandboxes."""
    ctx.obj = Conn(api_url, api_key)


@sandbox.command("create")
@click.option("--template", default="base", show_default=True)
@click.option("--vcpu", type=int, default=1, show_default=True)
@click.option("--memory-mib", type=int, default=512, show_default=True)
@click.option("--timeout", type=int, default=300, show_default=True,
              help="Seconds until the server deletes it (rounded up to minutes).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="Environment variable for every command; repeatable.")
@click.option("--auto-pause", is_flag=True, help="Pause instead of deleting on timeout.")
@_connection_options
@_pass_conn
def create(
    conn: Conn,
    template: str,
    vcpu: int,
    memory_mib: int,
    timeout: int,
    env: tuple[str, ...],
    auto_pause: bool,
) -> None:
    """Start a sandbox and print its id."""
    sbx = Sandbox.create(
        template=template,
        vcpu=vcpu,
        memory_mib=memory_mib,
        timeout=timeout,
        env_vars=pairs(env, "--env"),
        auto_pause=auto_pause,
        api_url=conn.api_url,
        api_key=conn.api_key,
    )
    sbx.close()
    click.echo(sbx.sandbox_id)


def _created(info: SandboxInfo) -> str:
    return info.created_at.strftime("%Y-%m-%d %H:%M:%S") if info.created_at else ""


@sandbox.command("list")
@click.option("--state", "states", multiple=True,
              help="Only sandboxes in this state (running, paused, ...); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_connection_options
@_pass_conn
def list_(conn: Conn, states: tuple[str, ...], as_json: bool) -> None:
    """List the organisation's sandboxes."""
    infos = Sandbox.list(api_url=conn.api_url, api_key=conn.api_key, states=list(states) or None)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    table = Table("ID", "TEMPLATE", "STATE", "VCPU", "MEMORY", "CREATED", box=None)
    for info in infos:
        table.add_row(
            info.sandbox_id,
            info.template_id,
            info.state,
            str(info.vcpu),
            f"{info.memory_mib} MiB",
            _created(info),
        )
    Console(width=max(shutil.get_terminal_size().columns, 100)).print(table)


@sandbox.command("get")
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_connection_options
@_pass_conn
def get(conn: Conn, sandbox_id: str, as_json: bool) -> None:
    """Show one sandbox."""
    sbx = Sandbox.connect(sandbox_id, api_url=conn.api_url, api_key=conn.api_key)
    try:
        info = sbx.get_info()
    finally:
        sbx.close()
    data = info.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console(width=max(shutil.get_terminal_size().columns, 100)).print(table)


@sandbox.command("kill")
@click.argument("sandbox_id")
@_connection_options
@_pass_conn
def kill(conn: Conn, sandbox_id: str) -> None:
    """Delete a sandbox with everything in it."""
    Sandbox.connect(sandbox_id, api_url=conn.api_url, api_key=conn.api_key).kill()
    click.echo(f"Killed {sandbox_id}")


@sandbox.command("set-timeout")
@click.argument("sandbox_id")
@click.argument("seconds", type=int)
@_connection_options
@_pass_conn
def set_timeout(conn: Conn, sandbox_id: str, seconds: int) -> None:
    """Restart a sandbox's timeout from now (rounded up to minutes)."""
    info = _on_sandbox(conn, sandbox_id, lambda sbx: sbx.set_timeout(seconds))
    ends = info.timeout_at.isoformat() if info.timeout_at else "?"
    click.echo(f"{sandbox_id} now ends at {ends}")


def _on_sandbox(conn: Conn, sandbox_id: str, action: Callable[[Sandbox], T]) -> T:
    """Run one call on an existing sandbox, then release the connection (the
    sandbox's context manager would kill it)."""
    sbx = Sandbox.connect(sandbox_id, api_url=conn.api_url, api_key=conn.api_key)
    try:
        return action(sbx)
    finally:
        sbx.close()


@sandbox.command("pause")
@click.argument("sandbox_id")
@_connection_options
@_pass_conn
def pause(conn: Conn, sandbox_id: str) -> None:
    """Snapshot a sandbox (memory, processes, disk) and free its host resources."""
    click.echo(f"{sandbox_id} {_on_sandbox(conn, sandbox_id, Sandbox.pause).state}")


@sandbox.command("resume")
@click.argument("sandbox_id")
@_connection_options
@_pass_conn
def resume(conn: Conn, sandbox_id: str) -> None:
    """Bring a paused sandbox back where it was."""
    click.echo(f"{sandbox_id} {_on_sandbox(conn, sandbox_id, Sandbox.resume).state}")


# Fixed widths, so that rows printed one at a time while following line up.
_AUDIT_COLUMNS = (
    ("TIME (UTC)", 23), ("DECISION", 8), ("PROTOCOL", 8), ("METHOD", 7),
    ("DESTINATION", 32), ("PATH", 24), ("STATUS", 6), ("UP/DOWN", 15), ("RULE", 0),
)


def _audit_line(cells: list[str]) -> str:
    # A longer value pushes the rest of its row right rather than being cut:
    # an audit log must not hide what was attempted.
    return " ".join(
        cell.ljust(width) for cell, (_, width) in zip(cells, _AUDIT_COLUMNS, strict=True)
    ).rstrip()


def _audit_cells(entry: AuditEntry) -> list[str]:
    when = entry.time.astimezone(UTC) if entry.time and entry.time.tzinfo else entry.time
    where = entry.host or entry.ip or "-"
    return [
        when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if when else "-",
        entry.decision or "-",
        entry.protocol or "-",
        entry.method or "-",
        where if entry.port is None else f"{where}:{entry.port}",
        entry.path or "-",
        "-" if entry.status is None else str(entry.status),
        f"{entry.bytes_up}/{entry.bytes_down}",
        entry.rule or "-",
    ]


@sandbox.command("audit")
@click.argument("sandbox_id")
@click.option("--since", default=None,
              help="Entries after this entry id (a page's next_since), "
                   "or at or after this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many entries (without --follow).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new entries until Ctrl-C or the sandbox is deleted.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_connection_options
@_pass_conn
def audit(
    conn: Conn, sandbox_id: str, since: str | None, limit: int, follow: bool, as_json: bool
) -> None:
    """Show a sandbox's egress attempts (allowed and refused), oldest first;
    also after the sandbox ended."""

    def show(entries: Iterable[AuditEntry]) -> None:
        if not as_json:
            click.echo(_audit_line([name for name, _ in _AUDIT_COLUMNS]))
        for entry in entries:
            if as_json:
                click.echo(json.dumps(entry.to_dict()))
            else:
                click.echo(_audit_line(_audit_cells(entry)))

    # Not connect(): that refuses a deleted sandbox, whose log is still there.
    sbx = Sandbox._for_api(sandbox_id, api_url=conn.api_url, api_key=conn.api_key)
    try:
        if not follow:
            show(sbx.audit(since, limit).entries)
            return
        try:
            show(sbx.follow_audit(since))
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
    finally:
        sbx.close()
    click.echo(f"{sandbox_id} is gone: no more entries", err=True)


def _exit_status(code: int) -> int:
    # A process killed by a signal has no exit code of its own.
    return code if 0 <= code <= 255 else 1


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--cwd", default=None, help="Working directory in the sandbox.")
@click.option("--user", default=None, help="User to run as.")
@click.option("--timeout", type=float, default=0, help="Kill it after this many seconds.")
@_connection_options
@_pass_conn
def exec_(
    conn: Conn,
    sandbox_id: str,
    command: tuple[str, ...],
    env: tuple[str, ...],
    cwd: str | None,
    user: str | None,
    timeout: float,
) -> None:
    """Run a command and stream its output; exits with the command's exit code.

    One argument is a shell command line (`exec ID -- 'ls | wc -l'`); several
    are a command and its arguments, quoted for you (`exec ID -- ls -la /`).
    """
    cmd = command[0] if len(command) == 1 else shlex.join(command)
    envs = pairs(env, "--env")
    sbx = Sandbox.connect(sandbox_id, api_url=conn.api_url, api_key=conn.api_key)
    try:
        # In the background so that Ctrl-C here can kill it there, instead of
        # leaving it running in the sandbox.
        handle = sbx.commands.run(
            cmd,
            on_stdout=lambda text: click.echo(text, nl=False),
            on_stderr=lambda text: click.echo(text, nl=False, err=True),
            background=True,
            stdin=False,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=timeout,
        )
        try:
            result = handle.wait()
        except KeyboardInterrupt:
            handle.kill()
            raise click.exceptions.Exit(130) from None
    finally:
        sbx.close()
    if result.exit_code < 0:
        # Killed by a signal: there is no exit code to tell it by.
        click.echo(f"error: command ended: {result.error or 'no exit code'}", err=True)
    raise click.exceptions.Exit(_exit_status(result.exit_code))


@sandbox.command("shell")
@click.argument("sandbox_id")
@_connection_options
@_pass_conn
def shell(conn: Conn, sandbox_id: str) -> None:
    """An interactive terminal in the sandbox; leave with exit or Ctrl-D."""
    if not sys.stdin.isatty():
        _fail("shell needs a terminal on stdin")
    sbx = Sandbox.connect(sandbox_id, api_url=conn.api_url, api_key=conn.api_key)
    try:
        code = _run_terminal(sbx)
    finally:
        sbx.close()
    raise click.exceptions.Exit(_exit_status(code))



def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _terminal_size(fd: int) -> tuple[int, int]:
    # The terminal itself, not $COLUMNS/$LINES: those go stale on resize.
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns or 80, size.lines or 24


def _run_terminal(sbx: Sandbox) -> int:
    """Bridge the local terminal to a PTY in the sandbox until its shell exits.

    The terminal goes raw so that every key (Ctrl-C included) reaches the
    remote shell; it is restored whatever happens. SIGWINCH only wakes the
    loop through a pipe: doing HTTP inside a signal handler could re-enter a
    request that the main thread is in the middle of.
    """
    import select
    import termios
    import tty

    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    cols, rows = _terminal_size(stdout_fd)
    handle = sbx.pty.create(cols, rows, lambda data: _write_all(stdout_fd, data))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    resized = False

    def on_winch(signum: int, frame: object) -> None:
        nonlocal resized
        resized = True
        # A full pipe already holds a wake-up.
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"w")

    saved_attrs = termios.tcgetattr(stdin_fd)
    saved_handler = signal.signal(signal.SIGWINCH, on_winch)
    try:
        # TCSADRAIN, as ssh does: keys typed while connecting are forwarded, not dropped.
        tty.setraw(stdin_fd, termios.TCSADRAIN)
        while not handle.done:
            ready, _, _ = select.select([stdin_fd, wake_r], [], [], 0.1)
            if wake_r in ready:
                os.read(wake_r, 1024)
            if resized:
                resized = False
                handle.resize(*_terminal_size(stdout_fd))
            if stdin_fd in ready:
                data = os.read(stdin_fd, 4096)
                if not data:
                    break
                handle.send_stdin(data)
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_attrs)
        signal.signal(signal.SIGWINCH, saved_handler)
        os.close(wake_r)
        os.close(wake_w)
        if not handle.done:
            handle.kill()
    return handle.wait().exit_code
