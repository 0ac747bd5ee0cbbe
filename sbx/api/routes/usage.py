"""GET /v1/usage (and /usage): the calling organisation's usage and
charges, by day and by sandbox, with totals and wallet balances."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sbx.api.contract import query
from sbx.api.deps import Caller, platform
from sbx.api.schemas.answers import UsageOut
from sbx.core import metering, usage
from sbx.core.errors import FieldError, InvalidRequest
from sbx.store import repo

router = APIRouter(tags=["usage"])
MAX_DAYS = 366
# Days a ledger can hold; the ends of date's range would overflow the day
# arithmetic (a default `from` 29 days back, the end of `to`).
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9999, 12, 30)


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest([FieldError(name, "must be a date, YYYY-MM-DD")]) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise InvalidRequest([FieldError(name, f"must be from {FIRST_DAY} to {LAST_DAY}")])
    return day


_DAYS = query(**{
    "from": ({"type": "string", "format": "date"}, "first UTC day (default: 29 days before to)"),
    "to": ({"type": "string", "format": "date"}, "last UTC day (default: today)"),
})


@router.get("/v1/usage", response_model=UsageOut, openapi_extra=_DAYS)
@router.get("/usage", response_model=UsageOut, openapi_extra=_DAYS)
async def get_usage(request: Request, caller: Caller) -> JSONResponse:
    """Days `from`..`to` (UTC, both included; default: the last 30 days).
    Charges made up to this moment are included: the call runs a metering
    pass first."""
    today = repo.now().date()
    until = _day(request, "to", today)
    since = _day(request, "from", until - timedelta(days=29))
    if since > until:
        raise InvalidRequest([FieldError("from", "must not be after to")])
    if (until - since).days >= MAX_DAYS:
        raise InvalidRequest([FieldError("from", f"at most {MAX_DAYS} days at once")])
    p = platform(request)
    skip = [p.sandboxes.pool_org] if p.sandboxes.pool_org else []
    await metering.meter(p.db, skip)
    async with p.db.session() as s:
        return JSONResponse((await usage.usage(s, caller, since, until)).to_json())
