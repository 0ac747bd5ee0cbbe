"""Jupyter messages → the SDKs' NDJSON events (pure functions)."""

from __future__ import annotations

import time
from typing import Any

# The mimetype the kernel extension (ipython_ext.py) gives a matplotlib
# figure's extracted data; it becomes the result's `chart`.
CHART_MIME = "application/vnd.sbx.chart+json"

# Result fields of both SDKs and the mimetypes they come from.
FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    CHART_MIME: "chart",
}


def now_ns() -> int:
    return time.time_ns()


def stream(name: str, text: str) -> dict[str, Any]:
    kind = "stderr" if name == "stderr" else "stdout"
    return {"type": kind, "text": text, "timestamp": now_ns()}


def result(bundle: dict[str, Any], main: bool) -> dict[str, Any]:
    """A display's mime bundle as a result; mimetypes the SDKs have no field
    for go under `extra`, keyed by mimetype."""
    out: dict[str, Any] = {"type": "result", "is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in bundle.items():
        field = FORMATS.get(mime)
        if field is not None:
            out[field] = value
        else:
            extra[mime] = value
    if extra:
        out["extra"] = extra
    return out


def error(name: str, value: str, traceback: list[str] | str) -> dict[str, Any]:
    tb = traceback if isinstance(traceback, str) else "\n".join(traceback)
    return {"type": "error", "name": name, "value": value, "traceback": tb}


def execution_count(count: int) -> dict[str, Any]:
    return {"type": "number_of_executions", "execution_count": count}


def from_iopub(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The event of one IOPub message of a cell; None for the ones the
    SDKs have no event for (status, execute_input, clear_output, ...)."""
    kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
    content = msg.get("content", {})
    if kind == "stream":
        return stream(str(content.get("name")), str(content.get("text", "")))
    if kind == "execute_result":
        return result(content.get("data") or {}, True)
    if kind in ("display_data", "update_display_data"):
        return result(content.get("data") or {}, False)
    if kind == "error":
        return error(str(content.get("ename", "Error")), str(content.get("evalue", "")),
                     content.get("traceback") or [])
    return None
