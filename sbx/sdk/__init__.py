"""The sbx SDK: start sandboxes and run code in them.

Main concepts:

- :class:`Sandbox` / :class:`AsyncSandbox`: one sandbox; ``create``,
  ``connect``, ``list``, ``kill``, ``set_timeout``, ``get_info``; a context
  manager that kills it on exit.
- ``sandbox.commands``: ``run`` a shell command (a :class:`CommandResult`, or
  a :class:`CommandHandle` in the background), ``list``, ``kill``,
  ``send_stdin``.
- ``sandbox.files``: ``read``, ``write``, ``list``, ``exists``, ``get_info``,
  ``make_dir``, ``rename``, ``remove``.
- ``sandbox.pty``: interactive terminals (:class:`PtyHandle`).
- ``sandbox.audit`` / ``sandbox.follow_audit``: the sandbox's egress audit
  log (:class:`AuditEntry`), a page at a time or as it grows.
- :func:`get_usage` / :func:`get_usage_async`: the organisation's usage and
  charges by day and by sandbox, with wallet balances.
- :class:`SbxError`: the root of every error the SDK raises (the tree is in
  :mod:`sbx.sdk._exceptions`).

Configuration: arguments, else ``SBX_API_URL`` / ``SBX_API_KEY``, else
``http://127.0.0.1:3000``.
"""

from sbx.sdk._commands import AsyncCommandHandle, AsyncCommands, CommandHandle, Commands
from sbx.sdk._config import ConnectionConfig
from sbx.sdk._exceptions import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    InvalidRequestError,
    LimitError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    SandboxUnavailableError,
    SbxConnectionError,
    SbxError,
    SbxTimeoutError,
    ServerError,
)
from sbx.sdk._files import AsyncFiles, Files
from sbx.sdk._models import (
    AuditEntry,
    AuditPage,
    CommandResult,
    EntryInfo,
    FileType,
    ProcessInfo,
    SandboxInfo,
    WriteInfo,
)
from sbx.sdk._pty import AsyncPty, AsyncPtyHandle, Pty, PtyHandle
from sbx.sdk._sandbox import AsyncSandbox, Sandbox
from sbx.sdk._templates import (
    AsyncTemplates,
    TemplateBuildError,
    Templates,
    build_template,
    build_template_async,
)
from sbx.sdk._usage import get_usage, get_usage_async

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncTemplates",
    "AuditEntry",
    "AuditPage",
    "AuthenticationError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "ConnectionConfig",
    "EntryInfo",
    "FileType",
    "Files",
    "InvalidRequestError",
    "LimitError",
    "NotFoundError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "ProcessInfo",
    "Pty",
    "PtyHandle",
    "RateLimitError",
    "Sandbox",
    "SandboxInfo",
    "SandboxUnavailableError",
    "SbxConnectionError",
    "SbxError",
    "SbxTimeoutError",
    "ServerError",
    "TemplateBuildError",
    "Templates",
    "WriteInfo",
    "build_template",
    "build_template_async",
    "get_usage",
    "get_usage_async",
]
