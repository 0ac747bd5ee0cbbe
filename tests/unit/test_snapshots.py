"""The snapshot store's durability rules (pure file logic, real files)."""

from __future__ import annotations

from pathlib import Path

from sbx.node import snapshots


def make(tmp_path: Path, content: bytes = b"x" * 1000) -> Path:
    final = tmp_path / "snap"
    tmp = snapshots.staging(final)
    (tmp / "checkpoint.img").write_bytes(content)
    (tmp / "pages.img").write_bytes(b"p" * 10)
    snapshots.seal(tmp, final, {"kind": "test"})
    return final


def test_seal_then_verify(tmp_path: Path) -> None:
    final = make(tmp_path)
    snap = snapshots.verify(final)
    assert snap is not None and snap.size == 1010
    assert not list(tmp_path.glob("*.tmp-*"))


def test_corruption_and_truncation_are_detected(tmp_path: Path) -> None:
    final = make(tmp_path)
    img = final / "checkpoint.img"
    img.write_bytes(b"y" * 1000)
    assert snapshots.verify(final, deep=False) is not None
    assert snapshots.verify(final) is None
    img.write_bytes(b"x" * 999)
    assert snapshots.verify(final, deep=False) is None


def test_unsealed_image_is_not_a_snapshot(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    tmp = snapshots.staging(final)
    (tmp / "checkpoint.img").write_bytes(b"half")
    assert snapshots.verify(tmp) is None
    assert snapshots.verify(final) is None
    assert snapshots.leftovers(tmp_path) == [tmp]
    snapshots.remove(final)
    assert snapshots.leftovers(tmp_path) == []


def test_reseal_replaces_atomically(tmp_path: Path) -> None:
    final = make(tmp_path, b"a" * 5)
    make(tmp_path, b"b" * 7)
    snap = snapshots.verify(final)
    assert snap is not None and snap.size == 17
    assert (final / "checkpoint.img").read_bytes() == b"b" * 7
