"""The root filesystem of `code-interpreter-v1`, the template E2B's Code
Interpreter SDKs create by default: Debian 12 as `base`, plus Jupyter
kernels (Python 3 with the usual data packages, Bash, JavaScript and
TypeScript on Debian's Node.js, R) and sbx's interpreter service
(sbx/interpreter) as its start command.

The wheels are downloaded on the host (`pip download`, with the host's pip
configuration: its indexes and constraints), binary wheels only, so that no
package's code runs on the host; inside the new tree they are installed
from that local wheelhouse with the tree's own pip (no network inside).
"""

from __future__ import annotations

import asyncio
import compileall
import hashlib
import json
import shlex
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

from sbx.node import rootfs
from sbx.node.proc import CommandError

NAME = "code-interpreter-v1"
# Debian's Node.js runs the JavaScript and TypeScript kernels (js_kernel.py);
# Debian's IRkernel is R's kernel (R took the tree from 1.1 to 1.2 GiB).
PACKAGES = [*rootfs.BASE_PACKAGES, "nodejs", "r-cran-irkernel"]
# Transpiles TypeScript cells; from npm on the host like the wheels.
NPM_PACKAGES = ["typescript@5"]
PYTHON_PACKAGES = [
    "ipykernel", "jupyter_client", "uvicorn", "bash_kernel",
    "numpy", "pandas", "matplotlib", "scipy", "scikit-learn", "seaborn",
    "requests", "pillow", "openpyxl", "sympy",
]
# Tags of the image's Python (Debian 12: CPython 3.11, glibc 2.36), so the
# host's own Python need not be the same.
WHEEL_TAGS = [
    "--python-version", "3.11", "--implementation", "cp",
    "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    *[arg for plat in ["manylinux2014_x86_64", "linux_x86_64", "any",
                       *[f"manylinux_2_{n}_x86_64" for n in range(17, 37)]]
      for arg in ("--platform", plat)],
]
INTERPRETER_SRC = Path(__file__).resolve().parent.parent / "interpreter"
PORT = 49999
LAUNCHER = f"""\
import runpy
import sys

sys.path.insert(0, "/opt/sbx")
sys.argv = ["interpreter", "--port", "{PORT}"]
runpy.run_module("interpreter", run_name="__main__", alter_sys=True)
"""
READY_TIMEOUT_S = 120.0
RUN_CONFIG: dict[str, Any] = {
    "version": 1,
    "env": {},
    "workdir": "/home/user",
    "user": "user",
    "start_cmd": ["/usr/bin/python3", "/opt/sbx/interpreter-launch.py"],
    # 200 once the default Python context is started and warm: the template
    # snapshot is taken after it, so sandboxes start with a warm kernel.
    "ready_cmd": f"curl -sf http://127.0.0.1:{PORT}/health",
    "ready_timeout_s": READY_TIMEOUT_S,
    # Before a checkpoint the service closes its connections and listens
    # on a fresh socket (gVisor restores a used listener deaf).
    "prepare_cmd": f"curl -sf -X POST http://127.0.0.1:{PORT}/snapshot/prepare",
}
JS_KERNEL = ["/usr/bin/python3", "/opt/sbx/interpreter/js_kernel.py", "-f", "{connection_file}"]
KERNEL_SPECS = {
    "bash": {"argv": ["/usr/bin/python3", "-m", "bash_kernel", "-f", "{connection_file}"],
             "display_name": "Bash", "language": "bash"},
    "javascript": {"argv": JS_KERNEL, "display_name": "JavaScript", "language": "javascript"},
    "typescript": {"argv": [*JS_KERNEL, "--typescript"], "display_name": "TypeScript",
                   "language": "typescript"},
}


def recipe_id() -> str:
    """Changes when what the tree is built from changes: then it is rebuilt."""
    h = hashlib.sha256(json.dumps([PACKAGES, PYTHON_PACKAGES, WHEEL_TAGS, NPM_PACKAGES]).encode())
    return h.hexdigest()[:12]


def is_built(dest: Path) -> bool:
    try:
        return (dest.parent / "recipe").read_text().strip() == recipe_id()
    except OSError:
        return False


async def ensure(dest: Path, progress: rootfs.Progress) -> None:
    """Built when missing or made from another recipe (minutes: see
    docs/code-interpreter.md); else only the service and envd are copied in.
    Servers sharing a templates directory (tests) build it once, in turn."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = await asyncio.to_thread(rootfs.locked, dest.parent / ".lock")
    try:
        if is_built(dest):
            await asyncio.to_thread(install, dest)
        else:
            await build(dest, progress)
    finally:
        lock.close()


async def build(dest: Path, progress: rootfs.Progress) -> None:
    """Download the wheels, then build the tree into dest (atomically)."""
    wheels = dest.parent / "wheels"
    progress(f"{NAME}: downloading wheels and npm packages on the host")
    await download_wheels(wheels)
    if shutil.which("npm"):
        await _run(["npm", "pack", "--silent", "--pack-destination", str(wheels), *NPM_PACKAGES])
    else:
        progress(f"{NAME}: no npm on this host: TypeScript cells will not run")
    pip = ("python3 -m pip install --break-system-packages --no-index --no-cache-dir "
           "--no-warn-script-location "
           "--only-binary=:all: --disable-pip-version-check --find-links /tmp/sbx-wheels "
           + " ".join(PYTHON_PACKAGES))
    hooks = [
        f'cp -a {shlex.quote(str(wheels))} "$1/tmp/sbx-wheels"',
        # env -i: the host's PIP_* variables (its indexes) mean nothing inside.
        f'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root {pip}',
        'rm -rf "$1/tmp/sbx-wheels"',
        # matplotlib's font cache, built once here rather than by the first
        # chart of every sandbox (seconds under gVisor).
        'chroot "$1" runuser -u user -- env HOME=/home/user MPLBACKEND=Agg '
        'python3 -c "import matplotlib.pyplot"',
    ]
    progress(f"{NAME}: building the tree with mmdebstrap (Debian 12 + Jupyter kernels)")
    await rootfs.build_debian(dest, PACKAGES, hooks, progress)
    # Hooks ran before the rename: the tree is dest now.
    await asyncio.to_thread(_unpack_npm, wheels, dest / "opt/sbx/node_modules")
    await asyncio.to_thread(install, dest)
    (dest.parent / "recipe").write_text(recipe_id() + "\n")
    await asyncio.to_thread(shutil.rmtree, wheels, True)
    progress(f"{NAME} template ready")


async def download_wheels(dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    if tmp.exists():
        await asyncio.to_thread(shutil.rmtree, tmp)
    await _run([sys.executable, "-m", "pip", "download", "--quiet",
                "--disable-pip-version-check", "--only-binary=:all:", *WHEEL_TAGS,
                "-d", str(tmp), *PYTHON_PACKAGES])
    if dest.exists():
        await asyncio.to_thread(shutil.rmtree, dest)
    tmp.rename(dest)


async def _run(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise CommandError(tuple(argv), proc.returncode or 1, out.decode(errors="replace")[-3000:])


def _unpack_npm(wheels: Path, node_modules: Path) -> None:
    """Each npm tarball (its files under package/) as node_modules/NAME."""
    for tgz in sorted(wheels.glob("*.tgz")):
        name = tgz.name.rsplit("-", 1)[0]
        dest = node_modules / name
        staging = node_modules / f".{name}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tgz) as tar:
            # Files and directories only, each inside staging (Python 3.11.2
            # has no extraction filters).
            members = [m for m in tar.getmembers() if (m.isfile() or m.isdir())
                       and not m.name.startswith("/") and ".." not in m.name.split("/")]
            for m in members:
                m.mode = (m.mode & 0o755) | 0o644 if m.isfile() else 0o755
            tar.extractall(staging, members=members)
        shutil.rmtree(dest, ignore_errors=True)
        (staging / "package").rename(dest)
        shutil.rmtree(staging)


def install(root: Path) -> None:
    """The interpreter service, its IPython extension, the kernel specs and
    the run-time config; each server start, so an upgraded sbx brings
    its service into the existing tree (files swapped in by rename)."""
    rootfs.install_envd(root)
    target = root / "opt/sbx"
    rootfs.install_tree(INTERPRETER_SRC, target / "interpreter")
    _write(target / "interpreter-launch.py", LAUNCHER)
    site = next(iter(sorted(root.glob("usr/local/lib/python3*/dist-packages"))), None)
    if site is None:
        raise FileNotFoundError(f"{root}: no /usr/local/lib/python3*/dist-packages")
    _write(site / "sbx_ipython.py", (INTERPRETER_SRC / "ipython_ext.py").read_text())
    compileall.compile_file(str(site / "sbx_ipython.py"), quiet=1)
    for name, spec in KERNEL_SPECS.items():
        _write(root / f"usr/local/share/jupyter/kernels/{name}/kernel.json", json.dumps(spec))
    _write(root / "opt/sbx/template.json", json.dumps(RUN_CONFIG, indent=1))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.rename(path)
