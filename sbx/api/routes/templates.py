"""`/templates`: build custom templates from a Dockerfile, follow and cancel
builds, list, show and delete templates. Errors are seed 002's
`{"code", "message"}`.

A build is started with `POST /templates` in one of two forms:
- `Content-Type: application/json`: `{"name", "dockerfile": "<text>", ...}`
  (no build context, so no COPY/ADD);
- a tar archive (optionally gzip'd) of the build context as the body, with
  the Dockerfile inside it (`dockerfile`, default `Dockerfile`) and the
  options as query parameters (`name`, `vcpu`, `memory_mib`, `disk_mib`,
  `ready_cmd`, `ready_timeout_s`, `timeout_s`, `public`, `build_arg=K=V`...).
It answers 202 with the build; its progress is
`GET /templates/{name}/builds/{id}/events` (NDJSON, one event per line, the
last one `{"type": "done", "status": ...}`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sbx.api.contract import body, query, stream
from sbx.api.deps import key_auth, platform
from sbx.api.schemas.answers import BuildEvent, BuildOut, TemplateDetail, TemplateOut
from sbx.core.accounts import KeyAuth
from sbx.core.errors import FieldError, InvalidRequest, TooLarge
from sbx.core.template_builds import BuildRequest
from sbx.core.validation import field_errors, parse
from sbx.store.models import Template, TemplateBuild

router = APIRouter(prefix="/templates", tags=["templates"])

Auth = Annotated[KeyAuth, Depends(key_auth)]


class BuildOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=63)]
    dockerfile: Annotated[str, Field(max_length=1 << 20)] | None = None
    dockerfile_path: Annotated[str, Field(min_length=1, max_length=4096)] = "Dockerfile"
    vcpu: Annotated[int, Field(ge=1, le=64)] | None = None
    memory_mib: Annotated[int, Field(ge=128, le=1 << 20)] | None = None
    disk_mib: Annotated[int, Field(ge=256, le=1 << 22)] | None = None
    ready_cmd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    ready_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 60
    timeout_s: Annotated[int, Field(ge=1, le=86400)] | None = None
    build_args: dict[str, Annotated[str, Field(max_length=65536)]] = Field(default_factory=dict)
    public: bool = False


def _iso(t: Any) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def build_out(b: TemplateBuild) -> dict[str, Any]:
    name = b.template_id.removeprefix("tpl-")
    return {
        "build_id": b.id, "template_id": b.template_id, "name": name, "version": b.version,
        "status": b.status, "error": b.error, "error_line": b.error_line,
        "vcpu": b.vcpu, "memory_mib": b.memory_mib, "disk_mib": b.disk_mib,
        "steps": b.steps, "cached_steps": b.cached_steps, "size_bytes": b.size_bytes,
        "created_at": _iso(b.created_at), "finished_at": _iso(b.finished_at),
        "events_url": f"/templates/{name}/builds/{b.id}/events",
    }


def template_out(t: Template, latest: TemplateBuild | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "template_id": t.id, "name": t.name, "public": t.org_id is None, "status": t.status,
        "version": t.version if t.status == "ready" else None,
        "vcpu": t.vcpu, "memory_mib": t.memory_mib, "disk_mib": t.disk_mib,
        "config": t.config, "created_at": _iso(t.created_at), "updated_at": _iso(t.updated_at),
    }
    if latest is not None:
        out["latest_build"] = {"build_id": latest.id, "version": latest.version,
                               "status": latest.status}
    return out


def _options(request: Request) -> BuildOptions:
    q = request.query_params
    raw: dict[str, Any] = {k: v for k, v in q.items() if k not in ("build_arg", "dockerfile")}
    if "dockerfile" in q:
        raw["dockerfile_path"] = q["dockerfile"]
    args: dict[str, str] = {}
    for item in q.getlist("build_arg"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest([FieldError("build_arg", f"{item!r} is not KEY=VALUE")])
        args[key] = value
    raw["build_args"] = args
    if "public" in raw:
        raw["public"] = raw["public"].lower() in ("1", "true", "yes")
    try:
        return BuildOptions.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(field_errors(exc)) from None


async def _body(request: Request, limit: int) -> bytes:
    """The upload, refused once past limit (also when no length is sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The build context is larger than {limit >> 20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The build context is larger than {limit >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


# The build context: a tar archive, plain or gzip'd, options in the query.
_CONTEXT = {kind: {"schema": {"type": "string", "format": "binary"}}
            for kind in ("application/x-tar", "application/gzip")}


_STR, _INT = {"type": "string"}, {"type": "integer"}
# With a tar body, the options come as query parameters (as BuildOptions).
_OPTIONS = query(
    name=(_STR, "the template's name (required with a tar body)"),
    dockerfile=(_STR, "the Dockerfile's path in the context (default Dockerfile)"),
    vcpu=(_INT, "the template's vCPUs"), memory_mib=(_INT, "its memory"),
    disk_mib=(_INT, "its disk"), ready_cmd=(_STR, "run until it succeeds before the snapshot"),
    ready_timeout_s=(_INT, "how long ready_cmd may take"),
    timeout_s=(_INT, "the build's time budget"), public=({"type": "boolean"}, "for everyone"),
    build_arg=(_STR, "KEY=VALUE, repeated"),
)


@router.post("", status_code=202, response_model=BuildOut,
             openapi_extra={**body(BuildOptions, extra_content=_CONTEXT), **_OPTIONS})
async def start_build(request: Request, caller: Auth) -> JSONResponse:
    p = platform(request)
    p.check_ready()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = p.settings.build_max_context_mib << 20
    context: bytes | None
    if kind == "application/json":
        opts = parse(BuildOptions, await _body(request, 2 << 20))
        if opts.dockerfile is None:
            raise InvalidRequest([FieldError("dockerfile", "required without a build context")])
        context = None
    else:
        opts = _options(request)
        context = await _body(request, limit)
        if not context:
            raise InvalidRequest([FieldError("body", "the build context (a tar archive) is "
                                                     "empty; send JSON for no context")])
    req = BuildRequest(
        name=opts.name, dockerfile=opts.dockerfile, dockerfile_path=opts.dockerfile_path,
        vcpu=opts.vcpu, memory_mib=opts.memory_mib, disk_mib=opts.disk_mib,
        ready_cmd=opts.ready_cmd, ready_timeout_s=opts.ready_timeout_s,
        build_args=opts.build_args, timeout_s=opts.timeout_s, public=opts.public,
    )
    build = await p.templates.submit(caller, req, context)
    out = build_out(build)
    return JSONResponse(out, status_code=202, headers={"Location": out["events_url"]})


@router.get("", response_model=list[TemplateOut])
async def list_templates(request: Request, caller: Auth) -> JSONResponse:
    return JSONResponse([template_out(t, b)
                         for t, b in await platform(request).templates.all(caller)])


@router.get("/{name}", response_model=TemplateDetail)
async def show_template(request: Request, name: str, caller: Auth) -> JSONResponse:
    tpl, builds = await platform(request).templates.show(caller, name)
    out = template_out(tpl, builds[0] if builds else None)
    out["builds"] = [build_out(b) for b in builds]
    return JSONResponse(out)


@router.delete("/{name}", status_code=204)
async def delete_template(request: Request, name: str, caller: Auth) -> Response:
    await platform(request).templates.delete(caller, name)
    return Response(status_code=204)


@router.get("/{name}/builds/{build_id}", response_model=BuildOut)
async def get_build(request: Request, name: str, build_id: str, caller: Auth
                    ) -> JSONResponse:
    build = await platform(request).templates.get_build(caller, name, build_id)
    return JSONResponse(build_out(build))


@router.post("/{name}/builds/{build_id}/cancel", response_model=BuildOut)
async def cancel_build(request: Request, name: str, build_id: str, caller: Auth
                       ) -> JSONResponse:
    build = await platform(request).templates.cancel(caller, name, build_id)
    return JSONResponse(build_out(build))


@router.get("/{name}/builds/{build_id}/events", response_class=StreamingResponse,
            openapi_extra=stream(BuildEvent, "application/x-ndjson"))
async def build_events(request: Request, name: str, build_id: str, caller: Auth
                       ) -> StreamingResponse:
    events = await platform(request).templates.events(caller, name, build_id)

    async def lines() -> AsyncIterator[bytes]:
        async for event in events:
            yield (json.dumps(event, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store"})
