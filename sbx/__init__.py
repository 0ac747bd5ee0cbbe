"""sbx: self-hosted sandboxes for untrusted, AI-generated code.

The user-facing SDK lives in :mod:`sbx.sdk` and is re-exported here, so that
``from sbx import Sandbox, AsyncSandbox`` works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AsyncSandbox", "Sandbox", "SbxError", "__version__"]

if TYPE_CHECKING:
    from sbx.sdk import AsyncSandbox, Sandbox, SbxError


def __getattr__(name: str) -> Any:
    # Lazy so that the server and envd never import the SDK's dependencies.
    if name in {"Sandbox", "AsyncSandbox", "SbxError"}:
        from sbx import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
