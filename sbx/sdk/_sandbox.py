"""``Sandbox`` and ``AsyncSandbox``: the entry points of the SDK.

Each sandbox object owns one HTTP connection pool; control-plane calls and
envd calls share it because both go to the server's one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

# Not "audit": that is the name of a method of the sandboxes.
from sbx.sdk import _audit as audit_log
from sbx.sdk import _control as control
from sbx.sdk._commands import AsyncCommands, Commands
from sbx.sdk._config import REQUEST_TIMEOUT, ConnectionConfig, envd_headers
from sbx.sdk._exceptions import NotFoundError
from sbx.sdk._files import AsyncFiles, Files
from sbx.sdk._models import AuditEntry, AuditPage, SandboxInfo
from sbx.sdk._pty import AsyncPty, Pty
from sbx.sdk._transport import AsyncTransport, Endpoint, Transport

DEFAULT_TEMPLATE = "base"
DEFAULT_TIMEOUT = 300


def _api(config: ConnectionConfig) -> Endpoint:
    return Endpoint(config.api_url, config.api_headers())


# States after which a sandbox is gone for good (``killed`` is the seed-002 name).
_GONE = {"deleted", "killed"}


def _attachable(info: SandboxInfo) -> SandboxInfo:
    # The API still describes a deleted sandbox; there is nothing to attach to.
    if info.state in _GONE:
        raise NotFoundError(f"Sandbox {info.sandbox_id} is {info.state}", status_code=404)
    return info


def _envd(config: ConnectionConfig, info: SandboxInfo) -> Endpoint:
    return Endpoint(config.api_url, envd_headers(info.sandbox_id, info.envd_access_token))


class _SandboxBase:
    def __init__(self, sandbox_id: str, envd_access_token: str | None) -> None:
        self._sandbox_id = sandbox_id
        self._envd_access_token = envd_access_token
        self._killed = False

    @property
    def sandbox_id(self) -> str:
        return self._sandbox_id

    @property
    def envd_access_token(self) -> str | None:
        """The token envd asks for; a secret, so it is kept out of ``repr``."""
        return self._envd_access_token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sandbox_id={self._sandbox_id!r})"


class Sandbox(_SandboxBase):
    """A sandbox: ``commands``, ``files`` and ``pty`` reach into it.

    Create one with :meth:`create` or attach to a running one with
    :meth:`connect`. Used as a context manager it is killed on exit.
    """

    def __init__(
        self, sandbox_id: str, envd_access_token: str | None, transport: Transport
    ) -> None:
        """Internal: use :meth:`create` or :meth:`connect`."""
        super().__init__(sandbox_id, envd_access_token)
        self._transport = transport
        self.commands = Commands(transport)
        self.files = Files(transport)
        self.pty = Pty(transport)

    @classmethod
    def create(
        cls,
        template: str = DEFAULT_TEMPLATE,
        vcpu: int = 1,
        memory_mib: int = 512,
        timeout: float = DEFAULT_TIMEOUT,
        env_vars: Mapping[str, str] | None = None,
        network_policy: Mapping[str, Any] | None = None,
        auto_pause: bool = False,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Start a sandbox; it is ready for commands when this returns.

        ``timeout`` is in seconds; the API counts whole minutes, so it is
        rounded up (at least one minute). When it passes the server deletes
        the sandbox; :meth:`set_timeout` moves it.
        """
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        op = control.create(
            template, vcpu, memory_mib, timeout, env_vars, network_policy, auto_pause
        )
        transport = Transport(_api(config), None, config.request_timeout)
        try:
            info = transport.call(op)
        except BaseException:
            transport.close()
            raise
        transport.envd = _envd(config, info)
        return cls(info.sandbox_id, info.envd_access_token, transport)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attach to a sandbox that exists and is not deleted. ``close`` releases
        the connections and leaves it running; ``kill`` or ``with`` delete it."""
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        transport = Transport(_api(config), None, config.request_timeout)
        try:
            info = _attachable(transport.call(control.get(sandbox_id)))
        except BaseException:
            transport.close()
            raise
        transport.envd = _envd(config, info)
        return cls(info.sandbox_id, info.envd_access_token, transport)

    @classmethod
    def list(
        cls,
        api_url: str | None = None,
        api_key: str | None = None,
        states: list[str] | None = None,
        request_timeout: float | None = None,
    ) -> list[SandboxInfo]:
        """The organisation's sandboxes that are not deleted (or those in ``states``)."""
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        transport = Transport(_api(config), None, config.request_timeout)
        try:
            return transport.call(control.list_sandboxes(states))
        finally:
            transport.close()

    @classmethod
    def _for_envd(
        cls,
        envd_url: str,
        access_token: str | None,
        sandbox_id: str = "local",
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> Sandbox:
        """Internal: talk to an envd directly, without a server (tests, tools)."""
        headers = {"X-Access-Token": access_token} if access_token else {}
        transport = Transport(None, Endpoint(envd_url.rstrip("/"), headers), request_timeout)
        return cls(sandbox_id, access_token, transport)

    @classmethod
    def _for_api(
        cls,
        sandbox_id: str,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Internal: an object for the control-plane calls that outlive a
        sandbox (its audit log), so without :meth:`connect`'s check that the
        sandbox is still there. It has no connection to envd."""
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        return cls(sandbox_id, None, Transport(_api(config), None, config.request_timeout))

    def get_info(self) -> SandboxInfo:
        return self._transport.call(control.get(self._sandbox_id))

    def set_timeout(self, timeout: float) -> SandboxInfo:
        """Restart the sandbox's timeout from now: ``timeout`` seconds, rounded
        up to whole minutes."""
        return self._transport.call(control.set_timeout(self._sandbox_id, timeout))

    def pause(self) -> SandboxInfo:
        """Snapshot the sandbox (memory, processes, disk) and free its host
        resources; ConflictError if it is already paused."""
        return self._transport.call(control.pause(self._sandbox_id))

    def resume(self) -> SandboxInfo:
        """Bring a paused sandbox back where it was: same id, files, processes."""
        return self._transport.call(control.resume(self._sandbox_id))

    def audit(
        self, since: audit_log.Since = None, limit: int = audit_log.DEFAULT_LIMIT
    ) -> AuditPage:
        """A page of the sandbox's egress audit log, oldest first: at most
        ``limit`` (1-1000) entries after ``since``, an entry id (the page's
        ``next_since``) or a time (entries at or after it; a naive time is UTC).
        The log stays readable after the sandbox ended."""
        return self._transport.call(audit_log.read(self._sandbox_id, since, limit))

    def follow_audit(
        self,
        since: audit_log.Since = None,
        poll_interval: float = 0.5,
        stop: threading.Event | None = None,
    ) -> Iterator[AuditEntry]:
        """Every audit entry after ``since`` (see :meth:`audit`), then the new
        ones as they come, polling every ``poll_interval`` seconds. Ends when
        ``stop`` is set or the sandbox is gone (deleted, or unknown: a 404),
        after its last entries."""
        follower = audit_log.Follower(self._sandbox_id, since, poll_interval, _GONE)
        stop = stop or threading.Event()
        while not stop.is_set():
            yield from follower.take(self._transport.call(follower.read()))
            if follower.done:
                return
            if not follower.more:
                gone = follower.idle and self._transport.call(follower.check())
                stop.wait(follower.pause(gone))

    def kill(self) -> bool:
        """Delete the sandbox and release the connections; False when it was
        already gone (also when this object killed it before)."""
        if self._killed:
            return False
        self._killed = True
        try:
            self._transport.call(control.delete(self._sandbox_id))
        except NotFoundError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Release the connections; the sandbox keeps running."""
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport.api is None:
            self.close()
        else:
            self.kill()


class AsyncSandbox(_SandboxBase):
    """The asyncio twin of :class:`Sandbox`; ``await AsyncSandbox.create()``."""

    def __init__(
        self, sandbox_id: str, envd_access_token: str | None, transport: AsyncTransport
    ) -> None:
        super().__init__(sandbox_id, envd_access_token)
        self._transport = transport
        self.commands = AsyncCommands(transport)
        self.files = AsyncFiles(transport)
        self.pty = AsyncPty(transport)

    @classmethod
    async def create(
        cls,
        template: str = DEFAULT_TEMPLATE,
        vcpu: int = 1,
        memory_mib: int = 512,
        timeout: float = DEFAULT_TIMEOUT,
        env_vars: Mapping[str, str] | None = None,
        network_policy: Mapping[str, Any] | None = None,
        auto_pause: bool = False,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandbox:
        """See :meth:`Sandbox.create`."""
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        op = control.create(
            template, vcpu, memory_mib, timeout, env_vars, network_policy, auto_pause
        )
        transport = AsyncTransport(_api(config), None, config.request_timeout)
        try:
            info = await transport.call(op)
        except BaseException:
            await transport.aclose()
            raise
        transport.envd = _envd(config, info)
        return cls(info.sandbox_id, info.envd_access_token, transport)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandbox:
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        transport = AsyncTransport(_api(config), None, config.request_timeout)
        try:
            info = _attachable(await transport.call(control.get(sandbox_id)))
        except BaseException:
            await transport.aclose()
            raise
        transport.envd = _envd(config, info)
        return cls(info.sandbox_id, info.envd_access_token, transport)

    @classmethod
    async def list(
        cls,
        api_url: str | None = None,
        api_key: str | None = None,
        states: list[str] | None = None,
        request_timeout: float | None = None,
    ) -> list[SandboxInfo]:
        config = ConnectionConfig.resolve(api_url, api_key, request_timeout)
        transport = AsyncTransport(_api(config), None, config.request_timeout)
        try:
            return await transport.call(control.list_sandboxes(states))
        finally:
            await transport.aclose()

    @classmethod
    def _for_envd(
        cls,
        envd_url: str,
        access_token: str | None,
        sandbox_id: str = "local",
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> AsyncSandbox:
        headers = {"X-Access-Token": access_token} if access_token else {}
        transport = AsyncTransport(None, Endpoint(envd_url.rstrip("/"), headers), request_timeout)
        return cls(sandbox_id, access_token, transport)

    async def get_info(self) -> SandboxInfo:
        return await self._transport.call(control.get(self._sandbox_id))

    async def set_timeout(self, timeout: float) -> SandboxInfo:
        return await self._transport.call(control.set_timeout(self._sandbox_id, timeout))

    async def pause(self) -> SandboxInfo:
        return await self._transport.call(control.pause(self._sandbox_id))

    async def resume(self) -> SandboxInfo:
        return await self._transport.call(control.resume(self._sandbox_id))

    async def audit(
        self, since: audit_log.Since = None, limit: int = audit_log.DEFAULT_LIMIT
    ) -> AuditPage:
        """See :meth:`Sandbox.audit`."""
        return await self._transport.call(audit_log.read(self._sandbox_id, since, limit))

    async def follow_audit(
        self,
        since: audit_log.Since = None,
        poll_interval: float = 0.5,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[AuditEntry]:
        """See :meth:`Sandbox.follow_audit`; ``async for entry in ...``."""
        follower = audit_log.Follower(self._sandbox_id, since, poll_interval, _GONE)
        stop = stop or asyncio.Event()
        while not stop.is_set():
            for entry in follower.take(await self._transport.call(follower.read())):
                yield entry
            if follower.done:
                return
            if not follower.more:
                gone = follower.idle and await self._transport.call(follower.check())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), follower.pause(gone))

    async def kill(self) -> bool:
        if self._killed:
            return False
        self._killed = True
        try:
            await self._transport.call(control.delete(self._sandbox_id))
        except NotFoundError:
            return False
        finally:
            await self.close()
        return True

    async def close(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport.api is None:
            await self.close()
        else:
            await self.kill()
