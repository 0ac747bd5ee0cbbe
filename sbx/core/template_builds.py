"""Custom templates: builds from a Dockerfile, versions, listing, deletion.

A build is accepted only once everything that can be checked before it runs
holds (name, Dockerfile, context, FROM, sizes, ownership); then it runs as a
task of the server, one at a time, and its outcome is a row: ready (a new
version, which new sandboxes get), failed (with the line), or cancelled.
Until a build is ready the previous version stays in use. A server that
stops mid-build marks the build failed when it starts again and removes
what the build had made.

Template names are global, like their ids (`tpl-<name>`, seed 002's
format): a name is its owner's (an organisation, or every organisation
for a public template made with an admin key).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.config import Settings
from sbx.core import build_log, limits
from sbx.core.accounts import KeyAuth
from sbx.core.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    NotFound,
    NotSupported,
)
from sbx.core.fleet import Fleet, Shape
from sbx.core.templates import BASE, BUILT_IN, template_id
from sbx.shared.lifecycle import LIVE
from sbx.shared.policy import NetworkPolicy, default_policy
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Sandbox, Template, TemplateBuild
from sbx.templates_build import dockerfile as df
from sbx.templates_build.builder import Builder, BuildFailed, BuildJob
from sbx.templates_build.context import BuildContext, ContextError, extract, resolve_in_root
from sbx.templates_build.layers import LayerStore

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
RESERVED_NAMES = BUILT_IN
FINAL = frozenset({"ready", "failed", "cancelled", "retired"})


@dataclass(frozen=True)
class BuildRequest:
    name: str
    dockerfile: str | None = None  # the text; None: `dockerfile_path` in the context
    dockerfile_path: str = "Dockerfile"
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    ready_cmd: str | None = None
    ready_timeout_s: int = 60
    build_args: dict[str, str] = field(default_factory=dict)
    timeout_s: int | None = None
    public: bool = False
    network_policy: NetworkPolicy = field(default_factory=default_policy)


@dataclass
class _Running:
    task: asyncio.Task[None]
    log: build_log.BuildLog


class TemplateBuilds:
    def __init__(self, db: Database, fleet: Fleet, builder: Builder | None, layers: LayerStore,
                 settings: Settings) -> None:
        """builder None: this control plane has no node of its own to build
        on (`sbx api`), and builds are refused."""
        self.db = db
        self.fleet = fleet
        self.settings = settings
        self.layers = layers
        self.builder = builder
        self.builds_dir = settings.data_dir / "builds"
        self._running: dict[str, _Running] = {}
        # One build at a time: on two cores a second one only slows both.
        self._slot = asyncio.Semaphore(1)
        self._name_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- start ------------------------------------------------------------------
    async def recover(self) -> None:
        """After a restart: builds that were running failed; what they made
        (half a version, staging dirs, build mounts) goes."""
        await self.layers.recover()
        async with self.db.transaction() as s:
            rows = (await s.execute(
                select(TemplateBuild).where(TemplateBuild.status == "building"))).scalars().all()
            for b in rows:
                b.status = "failed"
                b.error = "interrupted: the server stopped during the build"
                b.finished_at = repo.now()
                tpl = await repo.template_by_id(s, b.template_id)
                if tpl is not None and tpl.status == "building":
                    tpl.status = "failed"
        for b in rows:
            await asyncio.to_thread(shutil.rmtree, self.version_dir(b), True)
        root = self.settings.custom_templates_dir
        if root.exists():
            for staging in root.glob("*/v*/rootfs.staging"):
                await asyncio.to_thread(shutil.rmtree, staging, True)
        await self.retire_unused()

    def version_dir(self, build: TemplateBuild) -> Path:
        name = build.template_id.removeprefix("tpl-")
        return self.settings.custom_templates_dir / name / f"v{build.version}"

    # -- submit -----------------------------------------------------------------
    async def submit(self, caller: KeyAuth, req: BuildRequest, context: bytes | None
                     ) -> TemplateBuild:
        """Check everything, then start the build; answers its row."""
        org = caller.org
        if not NAME.fullmatch(req.name):
            raise InvalidRequest([FieldError(
                "name", "a template name is 1-63 of a-z, 0-9 and '-', not starting with '-'")])
        if req.name in RESERVED_NAMES:
            raise InvalidRequest([FieldError("name", f"{req.name!r} is a built-in template")])
        if req.public and not caller.is_admin:
            raise Forbidden("public templates need an admin key")
        if self.builder is None:
            raise NotSupported("template builds run on the all-in-one `sbx server` for now; "
                               "a cluster's control plane cannot build them yet")
        build_id = "bld-" + secrets.token_hex(6)
        work = self.builds_dir / build_id
        ctx_dir = work / "context"
        try:
            ctx = await self._context(context, ctx_dir)
            text = req.dockerfile if req.dockerfile is not None else \
                await asyncio.to_thread(_read_dockerfile, ctx, req.dockerfile_path)
            try:
                parsed = df.parse(text, req.build_args)
            except df.DockerfileError as exc:
                raise InvalidRequest([FieldError("dockerfile", str(exc))],
                                     "Invalid Dockerfile") from exc
            await asyncio.to_thread(_check_sources, ctx, parsed)
            async with self._name_locks[req.name], self.db.transaction() as s:
                # Another process's build of this name neither starts nor
                # takes the version number meanwhile.
                await repo.write_lock(s, f"template:{req.name}")
                base = await self._base(s, parsed, org.id)
                tier = await limits.tier_of(s, org)
                vcpu = req.vcpu or base.vcpu
                memory = req.memory_mib or base.memory_mib
                disk = req.disk_mib or base.disk_mib
                limits.check_size(tier, limits.Request(vcpu, memory, disk, None, False), False)
                tpl = await repo.template_by_id(s, template_id(req.name))
                if tpl is not None and tpl.status != "deleted":
                    if tpl.org_id != (None if req.public else org.id) or \
                            (tpl.org_id is None and not caller.is_admin):
                        raise Conflict(f"Template name {req.name!r} is taken")
                    busy = await _building(s, tpl.id)
                    if busy is not None:
                        raise Conflict(f"Template {req.name!r} is being built ({busy.id}); "
                                       "cancel that build or wait for it")
                now = repo.now()
                if tpl is None:
                    tpl = Template(id=template_id(req.name), name=req.name,
                                   org_id=None if req.public else org.id, vcpu=vcpu,
                                   memory_mib=memory, disk_mib=disk, rootfs="",
                                   status="building", created_at=now, version=0)
                    s.add(tpl)
                elif tpl.status == "deleted":
                    tpl.org_id = None if req.public else org.id
                    tpl.status = "building"
                    tpl.rootfs = ""
                    tpl.created_at = now
                elif tpl.status == "failed":
                    tpl.status = "building"
                version = int((await s.execute(
                    select(func.coalesce(func.max(TemplateBuild.version), 0))
                    .where(TemplateBuild.template_id == tpl.id))).scalar_one()) + 1
                build = TemplateBuild(
                    id=build_id, template_id=tpl.id, org_id=org.id, version=version,
                    status="building", dockerfile=text, vcpu=vcpu, memory_mib=memory,
                    disk_mib=disk, steps=len(parsed.instructions), created_at=now)
                s.add(build)
                base_rootfs, base_digest = Path(base.rootfs), f"{base.id}@{base.version}"
                base_config = base.config
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        timeout = min(req.timeout_s or self.settings.build_timeout_s,
                      self.settings.build_max_timeout_s)
        job = BuildJob(
            build_id=build_id, dockerfile=parsed, source=text, context=ctx,
            base_rootfs=base_rootfs, base_digest=base_digest, base_config=base_config,
            dest=self.version_dir(build) / "rootfs", vcpu=vcpu, memory_mib=memory,
            deadline=time.monotonic() + timeout,
            max_layer_bytes=self.settings.build_max_layer_mib << 20,
            network_policy=req.network_policy, ready_cmd=req.ready_cmd,
            ready_timeout_s=req.ready_timeout_s,
        )
        blog = build_log.BuildLog(work / "events.ndjson")
        blog.emit({"type": "accepted", "build": build_id, "template": req.name,
                   "version": build.version, "steps": build.steps})
        task = asyncio.create_task(self._run(build, job, blog), name=f"build-{build_id}")
        self._running[build_id] = _Running(task, blog)
        task.add_done_callback(lambda _: self._running.pop(build_id, None))
        return build

    async def _context(self, data: bytes | None, dest: Path) -> BuildContext:
        if data is None:
            dest.mkdir(parents=True)
            return BuildContext(dest)
        try:
            return await asyncio.to_thread(extract, data, dest)
        except ContextError as exc:
            raise InvalidRequest([FieldError("context", str(exc))],
                                 "Invalid build context") from exc

    async def _base(self, s: AsyncSession, parsed: df.Dockerfile, org_id: str) -> Template:
        """The template FROM names, ready and visible to the caller."""
        name = BASE if parsed.base == df.DEBIAN_12 else parsed.base
        tpl = await repo.template_by_name(s, name, org_id)
        if tpl is None or tpl.status != "ready" or not tpl.rootfs:
            line = next((i.line for i in parsed.instructions if isinstance(i, df.From)), 0)
            raise InvalidRequest([FieldError(
                "dockerfile", f"line {line}: FROM {parsed.base}: no such template (or it has "
                "no ready version)")])
        return tpl

    # -- running ------------------------------------------------------------------
    async def _run(self, build: TemplateBuild, job: BuildJob, blog: build_log.BuildLog) -> None:
        status, error, line = "failed", "", None
        result = None
        try:
            if self._slot.locked():
                blog.emit({"type": "phase", "phase": "queued"})
            async with self._slot:
                blog.emit({"type": "phase", "phase": "building"})
                assert self.builder is not None
                result = await self.builder.build(job, blog.emit)
                blog.emit({"type": "phase", "phase": "snapshot"})
                await self._snapshot(job, result.config)
            status = "ready"
        except BuildFailed as exc:
            error, line = str(exc), exc.line
        except asyncio.CancelledError:
            status, error = "cancelled", "cancelled"
        except Exception as exc:
            log.exception("build %s failed", build.id)
            error = f"internal error: {exc}"
        finally:
            if status != "ready":
                await asyncio.shield(asyncio.to_thread(
                    shutil.rmtree, self.version_dir(build), True))
            await asyncio.shield(self._record(build, status, error, line, result))
            blog.emit({"type": "done", "status": status, "version": build.version,
                       **({"error": error} if error else {}),
                       **({"line": line} if line else {})})
            blog.close()
            await asyncio.to_thread(shutil.rmtree, job.context.root, True)
        if status == "ready":
            await self.retire_unused()
            await self._prune_layers()

    async def _snapshot(self, job: BuildJob, config: dict[str, Any]) -> None:
        """The version's template snapshot for its own size, so creates from
        it restore as fast as from base; its start command must get ready."""
        try:
            node_id = await self.fleet.place(Shape(job.vcpu, job.memory_mib, 0, str(job.dest)))
            await self.fleet.node(node_id).prepare_template(
                job.dest, job.vcpu, job.memory_mib,
                ready_s=float(config.get("ready_timeout_s") or 60), strict=True)
        except Exception as exc:
            start = next((i.line for i in reversed(job.dockerfile.instructions)
                          if isinstance(i, df.Command)), None)
            raise BuildFailed(f"the template did not start: {exc}", start) from exc

    async def _record(self, build: TemplateBuild, status: str, error: str, line: int | None,
                      result: Any) -> None:
        async with self._name_locks[build.template_id.removeprefix("tpl-")], \
                self.db.transaction() as s:
            row = await s.get(TemplateBuild, build.id)
            tpl = await repo.template_by_id(s, build.template_id)
            assert row is not None and tpl is not None
            row.status = status
            row.finished_at = repo.now()
            row.error = error or None
            row.error_line = line
            if status == "ready":
                row.rootfs = str(self.version_dir(build) / "rootfs")
                row.config = result.config
                row.layer = result.layer
                row.cached_steps = result.cached
                row.size_bytes = result.size
                tpl.version = row.version
                tpl.rootfs = row.rootfs
                tpl.config = row.config
                tpl.vcpu, tpl.memory_mib, tpl.disk_mib = row.vcpu, row.memory_mib, row.disk_mib
                tpl.status = "ready"
                tpl.updated_at = row.finished_at
            elif tpl.status == "building":
                # No version yet: nothing to fall back on.
                tpl.status = "failed"

    async def cancel(self, caller: KeyAuth, name: str, build_id: str) -> TemplateBuild:
        build = await self.get_build(caller, name, build_id)
        running = self._running.get(build_id)
        if running is None:
            raise Conflict(f"Build {build_id} is {build.status}; only a running one cancels")
        running.task.cancel()
        # Its end is recorded (cancelled) before this answers.
        await asyncio.wait([running.task])
        return await self.get_build(caller, name, build_id)

    async def stop(self) -> None:
        """Server stop: running builds end as cancelled (not left half made)."""
        tasks = [r.task for r in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- read -----------------------------------------------------------------------
    async def visible(self, s: AsyncSession, caller: KeyAuth, name: str) -> Template:
        tpl = await repo.template_by_name(s, name, caller.org.id)
        if tpl is None or tpl.status == "deleted":
            raise NotFound(f"Template {name!r} not found")
        return tpl

    async def all(self, caller: KeyAuth) -> list[tuple[Template, TemplateBuild | None]]:
        async with self.db.session() as s:
            q = select(Template).where(
                (Template.org_id.is_(None)) | (Template.org_id == caller.org.id),
                Template.status != "deleted").order_by(Template.name)
            out = []
            for tpl in (await s.execute(q)).scalars().all():
                out.append((tpl, await _latest(s, tpl.id)))
        return out

    async def show(self, caller: KeyAuth, name: str) -> tuple[Template, list[TemplateBuild]]:
        async with self.db.session() as s:
            tpl = await self.visible(s, caller, name)
            builds = (await s.execute(
                select(TemplateBuild).where(TemplateBuild.template_id == tpl.id)
                .order_by(TemplateBuild.version.desc()))).scalars().all()
        return tpl, list(builds)

    async def get_build(self, caller: KeyAuth, name: str, build_id: str) -> TemplateBuild:
        async with self.db.session() as s:
            tpl = await self.visible(s, caller, name)
            build = await s.get(TemplateBuild, build_id)
        if build is None or build.template_id != tpl.id:
            raise NotFound(f"Build {build_id} of template {name!r} not found")
        return build

    async def events(self, caller: KeyAuth, name: str, build_id: str
                     ) -> AsyncIterator[dict[str, Any]]:
        build = await self.get_build(caller, name, build_id)
        return self._events(build)

    async def _events(self, build: TemplateBuild) -> AsyncIterator[dict[str, Any]]:
        running = self._running.get(build.id)
        if running is not None:
            async for event in running.log.follow():
                yield event
            return
        events = await asyncio.to_thread(
            build_log.read, self.builds_dir / build.id / "events.ndjson")
        for event in events:
            yield event
        if not any(e.get("type") == "done" for e in events):
            yield {"type": "done", "status": build.status, "version": build.version,
                   **({"error": build.error} if build.error else {}),
                   **({"line": build.error_line} if build.error_line else {})}

    # -- delete and clean up ------------------------------------------------------
    async def delete(self, caller: KeyAuth, name: str) -> None:
        """Refused while a sandbox (paused ones too) or a build uses it."""
        if name in RESERVED_NAMES:
            raise Forbidden(f"{name!r} is a built-in template")
        async with self._name_locks[name], self.db.transaction() as s:
            await repo.write_lock(s, f"template:{name}")
            tpl = await self.visible(s, caller, name)
            if tpl.org_id is None and not caller.is_admin:
                raise Forbidden("deleting a public template needs an admin key")
            if tpl.org_id is not None and tpl.org_id != caller.org.id:
                raise NotFound(f"Template {name!r} not found")
            users = await s.execute(select(func.count()).select_from(Sandbox).where(
                Sandbox.template_id == tpl.id, Sandbox.state.in_(list(LIVE))))
            if (n := int(users.scalar_one())) > 0:
                raise Conflict(f"Template {name!r} is used by {n} sandbox(es); delete them "
                               "first")
            busy = await _building(s, tpl.id)
            if busy is not None:
                raise Conflict(f"Template {name!r} is being built ({busy.id}); cancel it first")
            tpl.status = "deleted"
            tpl.rootfs = ""
            tpl.config = None
            for b in (await s.execute(select(TemplateBuild).where(
                    TemplateBuild.template_id == tpl.id,
                    TemplateBuild.status == "ready"))).scalars().all():
                b.status = "retired"
        await self._forget_everywhere(self.settings.custom_templates_dir / name)
        await asyncio.to_thread(shutil.rmtree, self.settings.custom_templates_dir / name, True)
        await self._prune_layers()

    async def retire_unused(self) -> None:
        """Versions that are not their template's current one and that no
        live sandbox was made from lose their files."""
        async with self.db.transaction() as s:
            in_use = set((await s.execute(select(Sandbox.rootfs).where(
                Sandbox.state.in_(list(LIVE))))).scalars().all())
            q = select(TemplateBuild, Template).join(
                Template, Template.id == TemplateBuild.template_id).where(
                TemplateBuild.status == "ready", TemplateBuild.version != Template.version)
            gone: list[Path] = []
            for b, _ in (await s.execute(q)).tuples().all():
                if b.rootfs not in in_use:
                    b.status = "retired"
                    gone.append(self.version_dir(b))
        for path in gone:
            await self._forget_everywhere(path)
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def _forget_everywhere(self, path: Path) -> None:
        """A template version is going: every node drops its spares of it."""
        for node in (await self.fleet.members()).values():
            await node.forget_template(path)

    async def _prune_layers(self) -> None:
        async with self.db.session() as s:
            keep = set((await s.execute(select(TemplateBuild.layer).where(
                TemplateBuild.status == "ready", TemplateBuild.layer.is_not(None))
            )).scalars().all())
        removed = await self.layers.prune({k for k in keep if k},
                                          self.settings.layer_cache_mib << 20)
        if removed:
            log.info("layer cache: %d layers removed", len(removed))


async def _building(s: AsyncSession, tpl_id: str) -> TemplateBuild | None:
    return (await s.execute(select(TemplateBuild).where(
        TemplateBuild.template_id == tpl_id, TemplateBuild.status == "building"))).scalars().first()


async def _latest(s: AsyncSession, tpl_id: str) -> TemplateBuild | None:
    return (await s.execute(select(TemplateBuild).where(
        TemplateBuild.template_id == tpl_id).order_by(TemplateBuild.version.desc()))
    ).scalars().first()


def _check_sources(ctx: BuildContext, parsed: df.Dockerfile) -> None:
    """Every COPY/ADD source is in the context (a 400 now, not a failed
    build later)."""
    for ins in parsed.instructions:
        if isinstance(ins, df.Copy):
            for source in ins.sources:
                try:
                    ctx.expand(source, ins.line)
                except ContextError as exc:
                    raise InvalidRequest([FieldError("dockerfile", str(exc))],
                                         "Invalid Dockerfile") from exc


def _read_dockerfile(ctx: BuildContext, path: str) -> str:
    """The Dockerfile inside the uploaded context, confined to it."""
    try:
        target = resolve_in_root(ctx.root, "/" + path.lstrip("/"))
        data = target.read_bytes()
    except (ContextError, OSError) as exc:
        raise InvalidRequest([FieldError(
            "dockerfile", f"no Dockerfile {path!r} in the build context")]) from exc
    if len(data) > df.MAX_BYTES:
        raise InvalidRequest([FieldError("dockerfile", "Dockerfile is larger than 1 MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest([FieldError("dockerfile", "the Dockerfile is not UTF-8")]) from exc
