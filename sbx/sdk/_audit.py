"""A sandbox's egress audit log (``/v1/sandbox/{id}/audit``) as operations
(sans-IO), and the bookkeeping of following it; the sync and async sandboxes
only carry out what :class:`Follower` asks for."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import fields
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import httpx

from sbx.sdk import _control as control
from sbx.sdk._exceptions import NotFoundError, ServerError
from sbx.sdk._models import AuditEntry, AuditPage
from sbx.sdk._ops import Op, Request, Target, iso_datetime, json_body

Since = int | str | datetime | None

DEFAULT_LIMIT = 100
# The server's largest page: following reads in as few round trips as it can.
MAX_LIMIT = 1000
# The server writes audit entries in batches (every 250 ms), so when a
# sandbox is seen gone, its last attempts may still be on their way into the
# log; one more read after this long picks them up.
FLUSH_GRACE = 0.5

_KNOWN = frozenset(f.name for f in fields(AuditEntry)) - {"extra"}


def read(sandbox_id: str, since: Since = None, limit: int = DEFAULT_LIMIT) -> Op[AuditPage]:
    """One page of entries after ``since``: an entry id (the ``next_since``
    of a page) or a time (entries at or after it; a naive time is UTC)."""
    return Op(_request(sandbox_id, _since_param(since), limit), _page)


def _request(sandbox_id: str, since: str | None, limit: int) -> Request:
    params = {"limit": str(limit)}
    if since is not None:
        params["since"] = since
    # Whatever the caller passes as an id must not be able to change the path.
    path = control.PREFIX + quote(sandbox_id, safe="") + "/audit"
    return Request("GET", path, Target.API, params=params)


def _since_param(since: Since) -> str | None:
    if since is None or isinstance(since, str):
        return since
    if isinstance(since, datetime):
        return since.isoformat()
    # bool is an int, but True is no entry id.
    if isinstance(since, int) and not isinstance(since, bool):
        return str(since)
    raise TypeError(f"since must be an entry id, an ISO 8601 time or a datetime, not {since!r}")


def _page(response: httpx.Response) -> AuditPage:
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
        raise ServerError("The server answered an audit page with something else")
    next_since = body.get("next_since")
    try:
        return AuditPage(
            sandbox_id=str(body.get("sandbox_id") or ""),
            entries=[audit_entry(item) for item in body["entries"]],
            next_since=next_since if isinstance(next_since, int | str) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"The server described an audit entry in an unexpected shape: {exc}"
                          ) from exc


def audit_entry(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=int(data["id"]),
        time=iso_datetime(data.get("time")),
        sandbox_id=str(data.get("sandbox_id") or ""),
        protocol=str(data.get("protocol") or ""),
        host=_str(data.get("host")),
        ip=_str(data.get("ip")),
        port=_int(data.get("port")),
        method=_str(data.get("method")),
        path=_str(data.get("path")),
        status=_int(data.get("status")),
        bytes_up=int(data.get("bytes_up") or 0),
        bytes_down=int(data.get("bytes_down") or 0),
        decision=str(data.get("decision") or ""),
        rule=_str(data.get("rule")),
        extra=MappingProxyType({k: v for k, v in data.items() if k not in _KNOWN}),
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class Follower:
    """Where a follower of the log stands, and what it should do next.

    The log outlives its sandbox (it stays readable after a delete), so the
    end of a follow is decided here: a 404 (the sandbox is no more, or never
    was), or a sandbox seen in a gone state, read to the end once more after
    :data:`FLUSH_GRACE`. The sandbox's state is asked only when a read found
    nothing new, so an active log costs one request per poll.

    A round: ``take(call(read()))``; stop if ``done``; read again at once if
    ``more``; else wait ``pause(idle and call(check()))`` seconds.
    """

    def __init__(
        self,
        sandbox_id: str,
        since: Since,
        poll_interval: float,
        gone_states: Collection[str],
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._sandbox_id = sandbox_id
        self._cursor = _since_param(since)
        self._poll_interval = poll_interval
        self._gone_states = gone_states
        self._ending = False
        self.done = False
        self.more = False
        self.idle = False

    def read(self) -> Op[AuditPage | None]:
        def parse(response: httpx.Response) -> AuditPage | None:
            return None if response.status_code == 404 else _page(response)

        return Op(_request(self._sandbox_id, self._cursor, MAX_LIMIT), parse)

    def take(self, page: AuditPage | None) -> list[AuditEntry]:
        """The new entries of a page ``read`` asked for; moves the cursor on."""
        if page is None:
            self.done = True
            return []
        if page.next_since is not None:
            self._cursor = str(page.next_since)
        self.more = len(page.entries) >= MAX_LIMIT
        self.idle = not page.entries
        self.done = self._ending and not self.more
        return page.entries

    def check(self) -> Op[bool]:
        """Whether the sandbox is gone (deleted, or unknown to the server)."""
        inner = control.get(self._sandbox_id)

        def parse(response: httpx.Response) -> bool:
            try:
                return inner.parse(response).state in self._gone_states
            except NotFoundError:
                return True

        return Op(inner.request, parse)

    def pause(self, gone: bool) -> float:
        """Seconds to wait before the next read."""
        if gone:
            self._ending = True
            return FLUSH_GRACE
        return self._poll_interval
