"""Rendering errors in the shape of the surface that was called: seed 000
(`/v1/...`) answers `{"message", "errors"?}`; seed 002 and the E2B
protocol answer `{"code", "message"}`. Never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sbx.core.errors import FieldError, InvalidRequest, RateLimited, SbxError, Unavailable

log = logging.getLogger(__name__)


def render(
    request: Request, status: int, message: str, exc: SbxError | None = None
) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
        if not exc.should_retry:
            headers["Should-Retry"] = "false"
    if isinstance(exc, Unavailable):
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        else:
            # A failed start is not worth three more sandboxes' worth of retries.
            headers["Should-Retry"] = "false"
    if request.url.path.startswith("/v1/"):
        body: dict[str, object] = {"message": message}
        if isinstance(exc, InvalidRequest):
            body["errors"] = [{"field": e.field, "error": e.error} for e in exc.errors]
    else:
        body = {"code": status, "message": message}
        if isinstance(exc, InvalidRequest) and exc.errors:
            detail = "; ".join(f"{e.field}: {e.error}" for e in exc.errors)
            body["message"] = f"{message}: {detail}"
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(SbxError)
    async def _sbx(request: Request, exc: SbxError) -> JSONResponse:
        return render(request, exc.status, exc.message, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Query and path parameters that FastAPI itself validated.
        errors = [
            FieldError(
                ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
                or "body",
                str(err.get("msg", "invalid")),
            )
            for err in exc.errors()
        ]
        return render(request, 400, "Invalid request", InvalidRequest(errors))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return render(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return render(request, 500, "Internal error")

