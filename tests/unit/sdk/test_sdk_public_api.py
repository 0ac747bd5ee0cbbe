"""The names users import."""

from __future__ import annotations

import sbx
import sbx.sdk


def test_top_level_reexports() -> None:
    from sbx import AsyncSandbox, Sandbox, SbxError

    assert Sandbox is sbx.sdk.Sandbox
    assert AsyncSandbox is sbx.sdk.AsyncSandbox
    assert SbxError is sbx.sdk.SbxError


def test_all_is_exact_and_sorted() -> None:
    public = {n for n in vars(sbx.sdk) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(sbx.sdk, n)).__name__ == "module"}
    assert set(sbx.sdk.__all__) == public - modules
    assert list(sbx.sdk.__all__) == sorted(sbx.sdk.__all__)
