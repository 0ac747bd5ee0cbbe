"""`sbx template build|list|show|delete|cancel`: custom templates from a
Dockerfile. A build shows one progress bar over the steps and each step's
output as it comes; Ctrl-C cancels the build on the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sbx.cli.params import pairs

_api_url = click.option("--api-url", envvar="SBX_API_URL", default=None,
                        help="Server URL (env SBX_API_URL).")
_api_key = click.option("--api-key", envvar="SBX_API_KEY", default=None,
                        help="API key (env SBX_API_KEY).")


@click.group("template")
def template() -> None:
    """Custom templates, built from a Dockerfile (no Docker needed)."""


class _Display:
    """Renders build events: a bar over the steps, the output above it."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "accepted":
            self.console.print(f"build {event['build']}: template {event['template']} "
                               f"v{event['version']}, {event['steps']} steps")
            self.bar = self.progress.add_task("building", total=event["steps"])
            self.progress.start()
        elif kind == "step":
            self.progress.update(self.bar, description=f"step {event['step']}/{event['total']}")
            self.console.print(f"[bold]#{event['step']} line {event['line']}:[/] "
                               f"{escape(event['text'])}")
        elif kind == "log" and not self.quiet:
            self.console.out(event.get("data", ""), end="", highlight=False)
        elif kind == "step_done":
            self.progress.advance(self.bar)
            how = "cached" if event.get("cached") else f"{event.get('seconds', 0):.1f} s"
            self.console.print(f"  [dim]#{event['step']} done ({how})[/]")
        elif kind == "phase":
            self.progress.update(self.bar, description=str(event["phase"]))
        elif kind == "done":
            self.progress.stop()


@template.command("build")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=".")
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The Dockerfile (default CONTEXT/Dockerfile).")
@click.option("--name", required=True, help="Template name (a-z, 0-9, '-').")
@click.option("--vcpu", type=int, default=None)
@click.option("--memory-mib", type=int, default=None)
@click.option("--disk-mib", type=int, default=None)
@click.option("--ready-cmd", default=None,
              help="Shell command that succeeds once the start command (CMD) is ready.")
@click.option("--ready-timeout", type=int, default=None, help="Seconds (default 60).")
@click.option("--build-arg", multiple=True, help="KEY=VALUE for an ARG (repeatable).")
@click.option("--timeout", type=int, default=None, help="Seconds the build may take.")
@click.option("--public", is_flag=True, help="For every organisation (admin key).")
@click.option("--quiet", "-q", is_flag=True, help="No step output, progress only.")
@_api_url
@_api_key
def build(context: Path, dockerfile: Path | None, name: str, vcpu: int | None,
          memory_mib: int | None, disk_mib: int | None, ready_cmd: str | None,
          ready_timeout: int | None, build_arg: tuple[str, ...], timeout: int | None,
          public: bool, quiet: bool, api_url: str | None, api_key: str | None) -> None:
    """Build template NAME from a Dockerfile and the CONTEXT directory
    (default: the current one). A rebuild makes a new version; until it is
    ready, the previous one stays in use."""
    from sbx.sdk import SbxError, TemplateBuildError, Templates

    console = Console(highlight=False)
    display = _Display(console, quiet)
    try:
        with Templates(api_url, api_key) as t:
            started = t.start_build(
                # -f is relative to where the command runs, as in docker build.
                name, context, dockerfile.resolve() if dockerfile else "Dockerfile",
                vcpu=vcpu, memory_mib=memory_mib, disk_mib=disk_mib, ready_cmd=ready_cmd,
                ready_timeout_s=ready_timeout,
                build_args=pairs(build_arg, "--build-arg", "KEY"), timeout_s=timeout,
                public=public or None)
            done: dict[str, Any] = {}
            try:
                for event in t.events(name, started["build_id"]):
                    display(event)
                    if event.get("type") == "done":
                        done = event
            except KeyboardInterrupt:
                display.progress.stop()
                console.print("cancelling the build…")
                t.cancel(name, started["build_id"])
                raise SystemExit(130) from None
    except TemplateBuildError as exc:
        raise click.ClickException(str(exc)) from None
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    status = done.get("status", "failed")
    if status != "ready":
        line = done.get("line")
        where = f" at Dockerfile line {line}" if line else ""
        raise click.ClickException(f"build {status}{where}: {done.get('error', '')}")
    console.print(f"template {name} v{done.get('version')} is ready")


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
@_api_url
@_api_key
def list_templates(as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """Your organisation's templates and the public ones."""
    from sbx.sdk import SbxError, Templates

    try:
        with Templates(api_url, api_key) as t:
            rows = t.list()
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("name", "status", "version", "vcpu", "memory_mib", "disk_mib", "public",
                "latest build"):
        table.add_column(col)
    for r in rows:
        latest = r.get("latest_build") or {}
        table.add_row(r["name"], r["status"], str(r["version"] or "-"), str(r["vcpu"]),
                      str(r["memory_mib"]), str(r["disk_mib"]), "yes" if r["public"] else "",
                      f"{latest.get('build_id', '')} {latest.get('status', '')}".strip())
    Console().print(table)


@template.command("show")
@click.argument("name")
@_api_url
@_api_key
def show(name: str, api_url: str | None, api_key: str | None) -> None:
    """A template, its run-time config and its builds (versions), as JSON."""
    from sbx.sdk import SbxError, Templates

    try:
        with Templates(api_url, api_key) as t:
            click.echo(json.dumps(t.get(name), indent=2))
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None


@template.command("delete")
@click.argument("name")
@_api_url
@_api_key
def delete(name: str, api_url: str | None, api_key: str | None) -> None:
    """Delete a template and all its versions (refused while sandboxes use it)."""
    from sbx.sdk import SbxError, Templates

    try:
        with Templates(api_url, api_key) as t:
            t.delete(name)
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"template {name} deleted")


@template.command("cancel")
@click.argument("name")
@click.argument("build_id")
@_api_url
@_api_key
def cancel(name: str, build_id: str, api_url: str | None, api_key: str | None) -> None:
    """Cancel a running build."""
    from sbx.sdk import SbxError, Templates

    try:
        with Templates(api_url, api_key) as t:
            out = t.cancel(name, build_id)
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"build {build_id}: {out['status']}")
