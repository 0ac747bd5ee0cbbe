"""Small pure-Python wheels made on the spot, so that a template build can
run a real `pip install` of several packages with no network (tests and
benchmarks send no traffic off this machine)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(dest: Path, name: str, version: str = "1.0", requires: tuple[str, ...] = (),
               padding_kib: int = 0) -> Path:
    """dest/<name>-<version>-py3-none-any.whl with one module, <name>, whose
    VALUE is "<name> <version>"; padding_kib of data makes it bigger."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": (f'VALUE = "{name} {version}"\n'
                                + (f'PAD = "{"x" * (padding_kib * 1024)}"\n'
                                   if padding_kib else "")).encode(),
        f"{dist}/METADATA": ("Metadata-Version: 2.1\n"
                             f"Name: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: sbx-tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{dist}/top_level.txt": f"{name}\n".encode(),
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return path


def wheelhouse(dest: Path, count: int = 5, padding_kib: int = 64) -> list[str]:
    """count wheels, the first requiring all the others (one `pip install`
    of the first installs them all); answers their names, first first."""
    names = [f"sbxdemo{i}" for i in range(count)]
    for name in names[1:]:
        make_wheel(dest, name, padding_kib=padding_kib)
    make_wheel(dest, names[0], requires=tuple(names[1:]), padding_kib=padding_kib)
    return names
