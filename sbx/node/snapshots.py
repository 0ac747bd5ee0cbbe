"""Snapshot images on disk, made durable and verifiable.

An image directory is written by the runtime under a temporary name; then a
manifest with the size and SHA-256 of every file is written and fsynced, and
the directory is renamed into place. A snapshot counts only when its
manifest matches its files, so a crash at any point leaves either a complete,
verified snapshot or none."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Snapshot:
    path: Path
    size: int
    created: float


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging(final: Path) -> Path:
    """A fresh, empty directory beside final for the runtime to write into."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    # 0700 while runsc writes into it; seal() makes the files 0600.
    tmp.mkdir(mode=0o700, parents=True)
    return tmp


def seal(tmp: Path, final: Path, meta: dict[str, object] | None = None) -> Snapshot:
    """Checksum tmp's files into a manifest, make it durable, and move it
    to final (replacing an older snapshot there). Blocking: run in a thread."""
    paths = sorted(p for p in tmp.iterdir() if p.is_file())
    # A memory image holds whatever the sandbox had in memory (tokens,
    # keys): runsc writes it 0644.
    for p in paths:
        p.chmod(0o600)
    # Writing back (the disk) and hashing (a CPU) overlap: hashlib and
    # fsync both let go of the GIL.
    with ThreadPoolExecutor(max_workers=2 * len(paths) or 1) as pool:
        synced = [pool.submit(_fsync, p) for p in paths]
        digests = [pool.submit(_digest, p) for p in paths]
        for job in synced:
            job.result()
        sizes = {p.name: p.stat().st_size for p in paths}
        files = {p.name: {"size": sizes[p.name], "sha256": d.result()}
                 for p, d in zip(paths, digests, strict=True)}
    total = sum(sizes.values())
    manifest = {"files": files, "created": time.time(), "meta": meta or {}}
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)
    return Snapshot(final, total, float(manifest["created"]))  # type: ignore[arg-type]


def verify(path: Path, deep: bool = True) -> Snapshot | None:
    """The snapshot at path if its manifest matches its files (sizes, and
    with deep, checksums); else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        total = 0
        for name, info in manifest["files"].items():
            p = path / name
            if p.stat().st_size != info["size"]:
                return None
            if deep and _digest(p) != info["sha256"]:
                return None
            total += info["size"]
        return Snapshot(path, total, float(manifest["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(path: Path) -> None:
    """Remove a snapshot and any half-written siblings of it."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    parent = path.parent
    if parent.exists():
        for p in parent.iterdir():
            if p.name.startswith(path.name + ".tmp-") or p.name == path.name + ".old":
                shutil.rmtree(p, ignore_errors=True)


def set_aside(path: Path) -> Path | None:
    """Rename a snapshot out of the way (one rename; removing its files is
    left to the caller); None when there is none."""
    spent = path.with_name(f"{path.name}.spent-{time.monotonic_ns()}")
    try:
        path.rename(spent)
    except FileNotFoundError:
        return None
    return spent


def remove_set_aside(root: Path) -> None:
    if root.exists():
        for p in root.iterdir():
            if ".spent-" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def leftovers(root: Path) -> list[Path]:
    """Half-written images under root (from a crash mid-checkpoint)."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*.tmp-*") if p.is_dir()]
