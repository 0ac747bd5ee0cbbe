"""Custom templates: build one from a Dockerfile and a context directory,
follow its progress, cancel it; list, show and delete templates.

    from sbx.sdk import build_template
    build_template("my-app", context_dir=".", on_event=print)

A build streams events (dicts): ``step`` (``step``, ``total``, ``line``,
``text``), ``log`` (``step``, ``data``), ``step_done`` (``cached``,
``seconds``), ``phase`` and finally ``done`` (``status``: ready, failed or
cancelled; ``error`` and ``line`` when it failed).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from sbx.sdk._config import ConnectionConfig, http_timeout
from sbx.sdk._exceptions import SbxError, error_from_response

OnEvent = Callable[[dict[str, Any]], object]
# The name an outside Dockerfile gets inside the uploaded context.
OUTSIDE_DOCKERFILE = ".sbx-Dockerfile"


class TemplateBuildError(SbxError):
    """The build ended failed or cancelled; ``line`` is the Dockerfile's
    line it stopped at, when it was one line's fault."""

    def __init__(self, message: str, status: str, line: int | None, build: dict[str, Any]
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.line = line
        self.build = build


def _request(name: str, context_dir: str | Path | None, dockerfile: str | Path,
             dockerfile_text: str | None, options: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """(query params, headers, body) of POST /templates."""
    opts = {k: v for k, v in options.items() if v is not None}
    build_args: Mapping[str, str] = opts.pop("build_args", None) or {}
    if context_dir is None:
        text = dockerfile_text if dockerfile_text is not None else Path(dockerfile).read_text()
        body = {"name": name, "dockerfile": text, **opts}
        if build_args:
            body["build_args"] = dict(build_args)
        return {}, {"Content-Type": "application/json"}, json.dumps(body).encode()
    from sbx.templates_build.context import pack

    root = Path(context_dir)
    data = pack(root)
    if dockerfile_text is not None:
        data, path = _add_file(data, OUTSIDE_DOCKERFILE, dockerfile_text.encode()), \
            OUTSIDE_DOCKERFILE
    else:
        file = Path(dockerfile) if Path(dockerfile).is_absolute() else root / dockerfile
        try:
            path = file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            data, path = _add_file(data, OUTSIDE_DOCKERFILE, file.read_bytes()), \
                OUTSIDE_DOCKERFILE
    params: dict[str, Any] = {"name": name, "dockerfile": path,
                              **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                 for k, v in opts.items()}}
    if build_args:
        params["build_arg"] = [f"{k}={v}" for k, v in build_args.items()]
    return params, {"Content-Type": "application/gzip"}, data


def _add_file(tar_gz: bytes, name: str, content: bytes) -> bytes:
    """tar_gz with one more regular file at its root (a Dockerfile kept
    outside the context directory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tar_gz)), mode="r:") as src, \
            gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w:") as dst:  # type: ignore[call-overload]
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        dst.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _check(response: httpx.Response) -> None:
    """Raise the API's error; the body of a sync response read first (an
    async one, not streamed, has it already)."""
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.read(), response.headers)


def _outcome(build: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    status = done.get("status", "failed")
    build = {**build, "status": status, **({"error": done["error"]} if "error" in done else {})}
    if status != "ready":
        line = done.get("line")
        where = f" (Dockerfile line {line})" if line else ""
        raise TemplateBuildError(f"template build {status}{where}: "
                                 f"{done.get('error', status)}", status, line, build)
    return build


class Templates:
    """The template calls on one connection (sync)."""

    def __init__(self, api_url: str | None = None, api_key: str | None = None,
                 request_timeout: float | None = None) -> None:
        self.config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        self.http = httpx.Client(base_url=self.config.api_url,
                                 headers=self.config.api_headers(),
                                 timeout=http_timeout(self.config.request_timeout))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Templates:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start_build(self, name: str, context_dir: str | Path | None = None,
                    dockerfile: str | Path = "Dockerfile", dockerfile_text: str | None = None,
                    **options: Any) -> dict[str, Any]:
        params, headers, body = _request(name, context_dir, dockerfile, dockerfile_text,
                                         options)
        r = self.http.post("/templates", params=params, headers=headers, content=body)
        _check(r)
        out: dict[str, Any] = r.json()
        return out

    def events(self, name: str, build_id: str) -> Iterator[dict[str, Any]]:
        with self.http.stream("GET", f"/templates/{name}/builds/{build_id}/events",
                              timeout=httpx.Timeout(None, connect=10)) as r:
            _check(r)
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def build(self, name: str, context_dir: str | Path | None = None,
              dockerfile: str | Path = "Dockerfile", dockerfile_text: str | None = None,
              on_event: OnEvent | None = None, **options: Any) -> dict[str, Any]:
        build = self.start_build(name, context_dir, dockerfile, dockerfile_text, **options)
        done: dict[str, Any] = {"status": "failed", "error": "the event stream ended early"}
        for event in self.events(name, build["build_id"]):
            if on_event is not None:
                on_event(event)
            if event.get("type") == "done":
                done = event
        return _outcome(build, done)

    def cancel(self, name: str, build_id: str) -> dict[str, Any]:
        r = self.http.post(f"/templates/{name}/builds/{build_id}/cancel")
        _check(r)
        out: dict[str, Any] = r.json()
        return out

    def list(self) -> list[dict[str, Any]]:
        r = self.http.get("/templates")
        _check(r)
        out: list[dict[str, Any]] = r.json()
        return out

    def get(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"/templates/{name}")
        _check(r)
        out: dict[str, Any] = r.json()
        return out

    def delete(self, name: str) -> None:
        _check(self.http.delete(f"/templates/{name}"))


class AsyncTemplates:
    """:class:`Templates`, for asyncio."""

    def __init__(self, api_url: str | None = None, api_key: str | None = None,
                 request_timeout: float | None = None) -> None:
        self.config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        self.http = httpx.AsyncClient(base_url=self.config.api_url,
                                      headers=self.config.api_headers(),
                                      timeout=http_timeout(self.config.request_timeout))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncTemplates:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def start_build(self, name: str, context_dir: str | Path | None = None,
                          dockerfile: str | Path = "Dockerfile",
                          dockerfile_text: str | None = None, **options: Any
                          ) -> dict[str, Any]:
        params, headers, body = _request(name, context_dir, dockerfile, dockerfile_text,
                                         options)
        r = await self.http.post("/templates", params=params, headers=headers, content=body)
        _check(r)
        out: dict[str, Any] = r.json()
        return out

    async def events(self, name: str, build_id: str) -> AsyncIterator[dict[str, Any]]:
        async with self.http.stream("GET", f"/templates/{name}/builds/{build_id}/events",
                                    timeout=httpx.Timeout(None, connect=10)) as r:
            if r.status_code >= 400:
                raise error_from_response(r.status_code, await r.aread(), r.headers)
            async for line in r.aiter_lines():
                if line.strip():
                    yield json.loads(line)

    async def build(self, name: str, context_dir: str | Path | None = None,
                    dockerfile: str | Path = "Dockerfile", dockerfile_text: str | None = None,
                    on_event: OnEvent | None = None, **options: Any) -> dict[str, Any]:
        build = await self.start_build(name, context_dir, dockerfile, dockerfile_text,
                                       **options)
        done: dict[str, Any] = {"status": "failed", "error": "the event stream ended early"}
        async for event in self.events(name, build["build_id"]):
            if on_event is not None:
                on_event(event)
            if event.get("type") == "done":
                done = event
        return _outcome(build, done)

    async def cancel(self, name: str, build_id: str) -> dict[str, Any]:
        r = await self.http.post(f"/templates/{name}/builds/{build_id}/cancel")
        _check(r)
        out: dict[str, Any] = r.json()
        return out

    async def list(self) -> list[dict[str, Any]]:
        r = await self.http.get("/templates")
        _check(r)
        out: list[dict[str, Any]] = r.json()
        return out

    async def delete(self, name: str) -> None:
        r = await self.http.delete(f"/templates/{name}")
        _check(r)


def build_template(name: str, context_dir: str | Path | None = None,
                   dockerfile: str | Path = "Dockerfile", dockerfile_text: str | None = None,
                   on_event: OnEvent | None = None, api_url: str | None = None,
                   api_key: str | None = None, **options: Any) -> dict[str, Any]:
    """Build (or rebuild: a new version) template ``name`` and wait for the
    outcome. ``options``: vcpu, memory_mib, disk_mib, ready_cmd,
    ready_timeout_s, timeout_s, build_args (dict), public. Raises
    TemplateBuildError when it fails or is cancelled."""
    with Templates(api_url, api_key) as t:
        return t.build(name, context_dir, dockerfile, dockerfile_text, on_event, **options)


async def build_template_async(name: str, context_dir: str | Path | None = None,
                               dockerfile: str | Path = "Dockerfile",
                               dockerfile_text: str | None = None,
                               on_event: OnEvent | None = None, api_url: str | None = None,
                               api_key: str | None = None, **options: Any) -> dict[str, Any]:
    """:func:`build_template`, for asyncio."""
    async with AsyncTemplates(api_url, api_key) as t:
        return await t.build(name, context_dir, dockerfile, dockerfile_text, on_event,
                             **options)
