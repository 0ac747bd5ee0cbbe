"""The organisation's usage and charges (GET /v1/usage), sync and async."""

from __future__ import annotations

from typing import Any

from sbx.sdk import _control as control
from sbx.sdk._config import ConnectionConfig
from sbx.sdk._sandbox import _api
from sbx.sdk._transport import AsyncTransport, Transport


def get_usage(since: str | None = None, until: str | None = None, api_url: str | None = None,
              api_key: str | None = None, request_timeout: float | None = None
              ) -> dict[str, Any]:
    """The calling organisation's usage for days ``since``..``until``
    (``YYYY-MM-DD``, UTC, both included; default the last 30 days):
    ``wallets`` (balance, enforced), ``by_day``, ``by_sandbox`` and
    ``totals``, each with vCPU-seconds, GiB-seconds, guardrail checks and
    charges in credits (decimal strings)."""
    config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
    transport = Transport(_api(config), None, config.request_timeout)
    try:
        return transport.call(control.usage(since, until))
    finally:
        transport.close()


async def get_usage_async(since: str | None = None, until: str | None = None,
                          api_url: str | None = None, api_key: str | None = None,
                          request_timeout: float | None = None) -> dict[str, Any]:
    """:func:`get_usage`, for asyncio."""
    config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
    transport = AsyncTransport(_api(config), None, config.request_timeout)
    try:
        return await transport.call(control.usage(since, until))
    finally:
        await transport.aclose()
