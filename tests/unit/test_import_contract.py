"""The import contract: dependencies point one way.

    api, gateway, cli, platform ──▶ core ──▶ store, nodeapi (the node interface), shared
    node, egress, guard, templates_build (the node side) ──▶ nodeapi, shared
    envd, sdk, interpreter: nothing of the server

Every `import` in sbx/ (function-level ones too) is read from the source
and held against these rules. The few imports that still break them are
listed below with why; each must still exist (a mended one is taken off
the list, so the list only shrinks)."""

from __future__ import annotations

import ast
from pathlib import Path

SBX = Path(__file__).resolve().parents[2] / "sbx"

# package -> the sbx packages it may import (itself always).
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "nodeapi": {"shared"},
    "store": {"shared"},
    "core": {"store", "nodeapi", "shared", "config"},
    "node": {"nodeapi", "shared", "config", "egress"},
    "egress": {"nodeapi", "shared", "config", "node", "guard"},
    "guard": set(),
    "templates_build": {"nodeapi", "shared", "config", "node"},
    "envd": set(),
    "sdk": set(),
    "interpreter": set(),
    "gateway": {"core", "store", "nodeapi", "shared", "config"},
    "api": {"core", "store", "nodeapi", "shared", "config", "gateway", "platform", "envd"},
    # The composition roots: they wire everything.
    "platform": {"*"},
    "cli": {"*"},
    "config": set(),
    # The data dir's lock and modes: the standard library only.
    "datadir": set(),
    # sbx/__init__.py: the SDK's names at the top level.
    "": {"sdk"},
}

# (importing module, imported module): known breaches, each with its reason.
KNOWN: dict[tuple[str, str], str] = {
    # Template builds run RUN steps in gVisor on the node; core drives the
    # build through the concrete builder (constructed by the platform) and
    # parses Dockerfiles and contexts with templates_build's pure modules.
    # Next: a build interface in nodeapi, the parsers in shared.
    ("sbx.core.template_builds", "sbx.templates_build.dockerfile"): "Dockerfile parsing",
    ("sbx.core.template_builds", "sbx.templates_build.builder"): "builds run on the node",
    ("sbx.core.template_builds", "sbx.templates_build.context"): "context parsing",
    ("sbx.core.template_builds", "sbx.templates_build.layers"): "the layer store",
    # The base template's rootfs is built on the host by mmdebstrap.
    ("sbx.core.templates", "sbx.node.rootfs"): "the base rootfs is built on the node",
    # The SDK packs a build context with the server's own .dockerignore and
    # symlink rules (one implementation of them); next: those into the SDK.
    ("sbx.sdk._templates", "sbx.templates_build.context"): "context packing rules",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SBX.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sbx"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("sbx"):
            # `from sbx.x import y` where y is a module imports sbx.x.y.
            for alias in node.names:
                sub = SBX.parent.joinpath(*node.module.split("."), alias.name)
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.add(f"{node.module}.{alias.name}" if is_module else node.module)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_sbx_package_has_a_rule() -> None:
    packages = {p.name for p in SBX.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SBX.glob("*.py") if p.stem != "__init__"} | {""}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


def test_dependencies_point_one_way() -> None:
    breaches: set[tuple[str, str]] = set()
    for path in SBX.rglob("*.py"):
        module = _module_name(path)
        own = _package(module)
        allowed = ALLOWED[own]
        for imported in _imports(path):
            target = _package(imported)
            # (The top package itself holds only the version and lazy names.)
            if target in (own, "") or "*" in allowed or target in allowed:
                continue
            breaches.add((module, imported))
    unexpected = breaches - set(KNOWN)
    assert not unexpected, "imports against the contract:\n" + "\n".join(
        f"  {a} imports {b}" for a, b in sorted(unexpected))
    mended = set(KNOWN) - breaches
    assert not mended, f"no longer needed, take them off KNOWN: {sorted(mended)}"


def test_the_node_side_never_imports_core_or_the_api() -> None:
    # Stated on its own: the rule the cluster split rests on.
    for package in ("node", "egress", "templates_build", "nodeapi", "shared"):
        assert not {"core", "api", "store", "platform", "gateway"} & ALLOWED[package]
    for package in ("envd", "sdk"):
        assert ALLOWED[package] == set()
