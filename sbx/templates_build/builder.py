"""Building one template version from a parsed Dockerfile, without Docker.

Each instruction that changes files (RUN, COPY, ADD, WORKDIR) makes one
layer of the layer store, keyed by its cache key: an unchanged prefix of
the Dockerfile finds its layers made and runs nothing again. RUN runs in a
gVisor sandbox of the node's own whose root is the overlay of the layers
below it (sbx/node/build_steps.py); COPY and ADD write into that overlay
from the uploaded context, confined to it. ENV, ARG, USER, CMD and
ENTRYPOINT only change the run-time config. At the end the layers are
flattened into the version's plain root filesystem, which gets the run-time
config (/opt/sbx/template.json, read by envd) and the current envd.

Blocking work (copying, flattening) runs in threads; the caller runs the
whole build as one task, and cancelling it stops the step that runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbx.node import rootfs as rootfs_mod
from sbx.node.agent import NodeAgent
from sbx.node.build_steps import BuildStep, StepKilled, disk_usage, run_step
from sbx.shared.policy import NetworkPolicy
from sbx.templates_build import dockerfile as df
from sbx.templates_build.context import (
    BuildContext,
    ContextError,
    copy_into,
    owner,
    resolve_in_root,
)
from sbx.templates_build.layers import LayerError, LayerStore

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONFIG_PATH = "opt/sbx/template.json"
# Output of one step kept in one log event at most (the rest is still read).
LOG_CHUNK = 16 * 1024


class BuildFailed(Exception):
    """The build stopped: message for the user, line of the Dockerfile it
    stopped at (None: not one line's fault)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class BuildJob:
    build_id: str
    dockerfile: df.Dockerfile
    source: str  # the Dockerfile's text, for showing each step as written
    context: BuildContext
    base_rootfs: Path
    base_digest: str
    base_config: dict[str, Any] | None  # the run-time config of a FROM template
    dest: Path  # the version's root filesystem (must not exist)
    vcpu: int
    memory_mib: int
    deadline: float  # time.monotonic() by which the build must be done
    max_layer_bytes: int
    network_policy: NetworkPolicy
    ready_cmd: str | None = None
    ready_timeout_s: int = 60


@dataclass
class BuildResult:
    config: dict[str, Any]
    layer: str | None
    steps: int
    cached: int
    size: int
    timings: dict[str, float] = field(default_factory=dict)


def shown(source: str, line: int) -> str:
    """The instruction as written (its first line), for progress output."""
    lines = source.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    more = text.endswith("\\")
    text = text.rstrip("\\").strip()
    if len(text) > 200:
        text, more = text[:200], True
    return text + (" …" if more else "")


def run_config(job: BuildJob) -> dict[str, Any]:
    """What envd applies in every sandbox of the version: the FROM
    template's config, overridden by this Dockerfile's."""
    base = job.base_config or {}
    d = job.dockerfile
    env = dict(base.get("env") or {})
    env.update(dict(d.env))
    if d.entrypoint is not None or d.cmd is not None:
        # As Docker: ENTRYPOINT's argv, CMD's as its arguments.
        argv = list(d.entrypoint or ()) + list(d.cmd or ())
        start: list[str] | None = argv or None
        ready = job.ready_cmd
        prepare = None
    else:
        start = base.get("start_cmd")
        ready = job.ready_cmd if job.ready_cmd is not None else base.get("ready_cmd")
        prepare = base.get("prepare_cmd")
    return {
        "version": 1,
        "env": env,
        "workdir": d.workdir or base.get("workdir"),
        "user": d.user or base.get("user"),
        "start_cmd": start,
        "ready_cmd": ready,
        "ready_timeout_s": job.ready_timeout_s,
        "prepare_cmd": prepare,
    }


def _home(root: Path, uid: int) -> str:
    """The user's home from the image's passwd (HOME of a RUN)."""
    with contextlib.suppress(OSError, ContextError):
        passwd = resolve_in_root(root, "/etc/passwd")
        for entry in passwd.read_text(errors="replace").splitlines():
            parts = entry.split(":")
            if len(parts) >= 6 and parts[2] == str(uid):
                return parts[5] or "/"
    return "/root" if uid == 0 else "/"


class Builder:
    def __init__(self, agent: NodeAgent, layers: LayerStore) -> None:
        self.agent = agent
        self.layers = layers

    async def build(self, job: BuildJob, emit: Emit) -> BuildResult:
        d = job.dockerfile
        digests: dict[str, str] = {}
        try:
            for ins in d.instructions:
                if isinstance(ins, df.Copy):
                    digests.update(await asyncio.to_thread(
                        job.context.digests, ins.sources, ins.line))
        except ContextError as exc:
            raise BuildFailed(str(exc)) from exc
        keys = df.cache_keys(d, digests, base_digest=job.base_digest)
        total = len(d.instructions)
        parent: str | None = None
        cached = 0
        env: dict[str, str] = {"PATH": BASE_PATH, **dict((job.base_config or {}).get("env", {}))}
        workdir = (job.base_config or {}).get("workdir") or "/"
        user: str | None = (job.base_config or {}).get("user")
        timings: dict[str, float] = {}
        for index, (ins, key) in enumerate(zip(d.instructions, keys, strict=True), 1):
            text = shown(job.source, ins.line)
            emit({"type": "step", "step": index, "total": total, "line": ins.line,
                  "text": text})
            t0 = time.monotonic()
            hit = False
            if isinstance(ins, df.Env):
                env.update(dict(ins.pairs))
            elif isinstance(ins, df.User):
                user = ins.user
            elif isinstance(ins, df.Workdir | df.Run | df.Copy):
                if isinstance(ins, df.Workdir):
                    workdir = ins.path
                if self.layers.get(key) is not None:
                    hit = True
                    cached += 1
                else:
                    await self._layer(job, ins, key, parent, env, workdir, user, index, emit)
                parent = key
            took = time.monotonic() - t0
            timings[f"{index}"] = took
            emit({"type": "step_done", "step": index, "cached": hit,
                  "seconds": round(took, 3)})
        emit({"type": "phase", "phase": "flatten"})
        config = run_config(job)
        size = await self._finish(job, parent, config)
        return BuildResult(config=config, layer=parent, steps=total, cached=cached, size=size,
                           timings=timings)

    def _left(self, job: BuildJob, line: int) -> float:
        left = job.deadline - time.monotonic()
        if left <= 0:
            raise BuildFailed("the build ran past its time budget", line)
        return left

    async def _layer(self, job: BuildJob, ins: df.Instruction, key: str, parent: str | None,
                     env: dict[str, str], workdir: str, user: str | None, index: int,
                     emit: Emit) -> None:
        try:
            async with self.layers.mounted(job.base_rootfs, parent) as ws:
                if isinstance(ins, df.Run):
                    await self._run(job, ins, ws.merged, ws.upper, env, workdir, user, index,
                                    emit)
                elif isinstance(ins, df.Copy):
                    await asyncio.wait_for(asyncio.to_thread(
                        copy_into, job.context, ins.sources, ins.dest, ws.merged,
                        chown=ins.chown, extract_archives=ins.kind == "ADD", line=ins.line,
                    ), self._left(job, ins.line))
                    if await asyncio.to_thread(disk_usage, ws.upper) > job.max_layer_bytes:
                        raise BuildFailed(
                            f"{ins.kind} wrote more than the build's disk budget of "
                            f"{job.max_layer_bytes >> 20} MiB", ins.line)
                elif isinstance(ins, df.Workdir):
                    await asyncio.to_thread(_make_dir, ws.merged, ins.path)
                await ws.commit(key, {"line": ins.line, "kind": ins.kind,
                                      "text": shown(job.source, ins.line),
                                      "build": job.build_id})
        except ContextError as exc:
            raise BuildFailed(str(exc), ins.line) from exc
        except LayerError as exc:
            raise BuildFailed(str(exc), ins.line) from exc
        except TimeoutError as exc:
            raise BuildFailed("the build ran past its time budget", ins.line) from exc

    async def _run(self, job: BuildJob, ins: df.Run, root: Path, upper: Path,
                   env: dict[str, str], workdir: str, user: str | None, index: int,
                   emit: Emit) -> None:
        try:
            uid, gid = await asyncio.to_thread(owner, root, user)
        except ContextError as exc:
            raise BuildFailed(f"USER {user}: {exc}", ins.line) from exc
        step_env = {"HOME": await asyncio.to_thread(_home, root, uid), **env,
                    **{k: v for k, v in ins.args if k not in env}}
        await asyncio.to_thread(_make_dir, root, workdir)

        def output(chunk: bytes) -> None:
            for start in range(0, len(chunk), LOG_CHUNK):
                emit({"type": "log", "step": index,
                      "data": chunk[start:start + LOG_CHUNK].decode(errors="replace")})

        step = BuildStep(
            root=root, upper=upper, argv=list(ins.argv), env=step_env, cwd=workdir, uid=uid,
            gid=gid, vcpu=job.vcpu, memory_mib=job.memory_mib,
            network_policy=job.network_policy, timeout_s=self._left(job, ins.line),
            max_layer_bytes=job.max_layer_bytes,
        )
        try:
            code = await run_step(self.agent, step, output)
        except StepKilled as exc:
            raise BuildFailed(str(exc), ins.line) from exc
        if code != 0:
            raise BuildFailed(f"RUN exited with code {code}", ins.line)

    async def _finish(self, job: BuildJob, top: str | None, config: dict[str, Any]) -> int:
        """Flatten into a staging dir beside dest, add the config and envd,
        then rename: dest appears complete or not at all."""
        staging = job.dest.with_name(job.dest.name + ".staging")
        await asyncio.to_thread(shutil.rmtree, staging, True)
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self.layers.flatten(job.base_rootfs, top, staging)
            if not await asyncio.to_thread(_has_python, staging):
                raise BuildFailed("the image has no /usr/bin/python3, which sbx's envd (the "
                                  "agent in every sandbox) needs; install python3 (Debian 12's)")
            await asyncio.to_thread(_own_opt_sbx, staging)
            await asyncio.to_thread(_write_config, staging, config)
            await asyncio.to_thread(_write_profile, staging, config)
            await asyncio.to_thread(rootfs_mod.install_envd, staging)
            size = await asyncio.to_thread(disk_usage, staging)
            await asyncio.to_thread(os.rename, staging, job.dest)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise
        return size


def _make_dir(root: Path, path: str) -> None:
    """mkdir -p inside the image, through its own links (confined to it)."""
    target = resolve_in_root(root, path)
    target.mkdir(parents=True, exist_ok=True)


def _has_python(root: Path) -> bool:
    try:
        return os.access(resolve_in_root(root, "/usr/bin/python3"), os.X_OK)
    except ContextError:
        return False


def _own_opt_sbx(root: Path) -> None:
    """/opt/sbx is sbx's: whatever the image put there goes, and /opt must
    be a real directory. The writes that follow use host paths, which an
    image's link (/opt -> /etc) would otherwise send outside root."""
    opt = root / "opt"
    if opt.is_symlink() or (opt.exists() and not opt.is_dir()):
        opt.unlink()
    opt.mkdir(exist_ok=True)
    mine = opt / "sbx"
    if mine.is_symlink() or mine.is_file():
        mine.unlink()
    elif mine.exists():
        shutil.rmtree(mine)
    mine.mkdir()


def _write_profile(root: Path, config: dict[str, Any]) -> None:
    """Login shells (the SDKs run commands through `bash -l`) get the
    template's PATH back after /etc/profile has reset it."""
    profile = root / "etc/profile.d"
    target = profile / "zz-sbx-template.sh"
    path = (config.get("env") or {}).get("PATH")
    if profile.is_symlink() or not profile.is_dir():
        return
    if target.is_symlink():
        target.unlink()
    if path:
        target.write_text(f"export PATH={shlex.quote(path)}\n")
    elif target.exists():
        target.unlink()


def _write_config(root: Path, config: dict[str, Any]) -> None:
    path = root / CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, sort_keys=True))
