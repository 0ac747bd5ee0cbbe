"""The only code that does I/O: executes :class:`~sbx.sdk._ops.Op` objects and
reads Connect streams, over one keep-alive connection pool per sandbox object.

``Transport`` and ``AsyncTransport`` are twins over ``httpx.Client`` and
``httpx.AsyncClient``; everything they have in common is in ``_BaseTransport``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from sbx.sdk._config import http_timeout
from sbx.sdk._connect import Message, StreamReader
from sbx.sdk._exceptions import SbxError, error_from_response, map_transport_errors
from sbx.sdk._ops import Op, Request, Target

T = TypeVar("T")

_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


class _BaseTransport:
    def __init__(self, api: Endpoint | None, envd: Endpoint | None) -> None:
        self.api = api
        self.envd = envd

    def _endpoint(self, target: str) -> Endpoint:
        endpoint = self.api if target == Target.API else self.envd
        if endpoint is None:
            what = "control plane" if target == Target.API else "sandbox"
            raise SbxError(f"This object has no connection to the {what}")
        return endpoint

    def _url(self, request: Request) -> str:
        return self._endpoint(request.target).base_url + request.path

    def _build(self, client: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
        endpoint = self._endpoint(request.target)
        return client.build_request(
            request.method,
            endpoint.base_url + request.path,
            params=request.params,
            headers={**endpoint.headers, **request.headers},
            content=request.content,
            timeout=(
                httpx.USE_CLIENT_DEFAULT if request.timeout is None
                else http_timeout(request.timeout)
            ),
        )


class Transport(_BaseTransport):
    def __init__(
        self,
        api: Endpoint | None,
        envd: Endpoint | None,
        request_timeout: float | None,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api, envd)
        self.client = client or httpx.Client(timeout=http_timeout(request_timeout), limits=_LIMITS)

    def call(self, op: Op[T]) -> T:
        url = self._url(op.request)
        with map_transport_errors(url):
            response = self.client.send(self._build(self.client, op.request))
        return op.parse(response)

    def stream(self, request: Request) -> Generator[Message, None, None]:
        """The messages of a server stream, read as they arrive."""
        url = self._url(request)
        with map_transport_errors(url):
            response = self.client.send(self._build(self.client, request), stream=True)
        try:
            with map_transport_errors(url):
                if not response.is_success:
                    response.read()
                    raise error_from_response(
                        response.status_code, response.content, response.headers
                    )
                reader = StreamReader()
                for chunk in response.iter_raw():
                    yield from reader.feed(chunk)
                reader.close()
        finally:
            response.close()

    def close(self) -> None:
        self.client.close()


class AsyncTransport(_BaseTransport):
    def __init__(
        self,
        api: Endpoint | None,
        envd: Endpoint | None,
        request_timeout: float | None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api, envd)
        self.client = client or httpx.AsyncClient(
            timeout=http_timeout(request_timeout), limits=_LIMITS
        )

    async def call(self, op: Op[T]) -> T:
        url = self._url(op.request)
        with map_transport_errors(url):
            response = await self.client.send(self._build(self.client, op.request))
        return op.parse(response)

    async def stream(self, request: Request) -> AsyncGenerator[Message, None]:
        url = self._url(request)
        with map_transport_errors(url):
            response = await self.client.send(self._build(self.client, request), stream=True)
        try:
            with map_transport_errors(url):
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(
                        response.status_code, response.content, response.headers
                    )
                reader = StreamReader()
                async for chunk in response.aiter_raw():
                    for message in reader.feed(chunk):
                        yield message
                reader.close()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
