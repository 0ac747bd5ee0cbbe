"""Custom templates built from a Dockerfile (no Docker): RUN in a real gVisor
build sandbox, COPY from an uploaded context, ENV/WORKDIR/USER/ARG, a start
command with a readiness check, the layer cache, versions, cancel, budgets,
ownership, deletion, and sandboxes made from the result (from its template
snapshot)."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from sbx.sdk import Sandbox, TemplateBuildError, Templates
from tests.integration.server import Server, how_started, leaks, seed002_error
from tests.integration.wheels import wheelhouse

APP_DOCKERFILE = """\
# a comment
FROM base
ARG GREETING=hello
ENV APP_MODE=test \\
    APP_NAME="demo app"
WORKDIR /app
COPY app/ /app/
COPY wheels/ /wheels/
RUN pip install --no-index --find-links /wheels --break-system-packages sbxdemo0 \\
 && echo "$GREETING from build" > /app/built.txt \\
 && chown -R user:user /app
USER user
CMD ["python3", "-m", "http.server", "8000", "--directory", "/app"]
"""
READY = "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/')\""


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _context(root: Path, dockerfile: str = APP_DOCKERFILE) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "index.html").write_text("<h1>served by the start command</h1>\n")
    (root / "app" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "app" / "run.sh").chmod(0o755)
    wheelhouse(root / "wheels", count=4, padding_kib=8)
    (root / "Dockerfile").write_text(dockerfile)
    return root


def _templates(server: Server, key: str) -> Templates:
    return Templates(api_url=server.url, api_key=key)


def _build(t: Templates, name: str, ctx: Path | None, text: str | None = None,
           **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    out = t.build(name, ctx, dockerfile_text=text, on_event=events.append, **options)
    return out, events


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture
def templates(sbx_server: Server, org_key: str) -> Any:
    with _templates(sbx_server, org_key) as t:
        yield t


def test_build_then_sandboxes_run_it(sbx_server: Server, org_key: str, templates: Templates,
                                     tmp_path: Path) -> None:
    name = _name()
    ctx = _context(tmp_path / "ctx")
    build, events = _build(templates, name, ctx, vcpu=1, memory_mib=512, ready_cmd=READY)
    assert build["status"] == "ready" and build["version"] == 1
    kinds = [e["type"] for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "done"
    steps = [e for e in events if e["type"] == "step"]
    assert [s["line"] for s in steps] == [2, 3, 4, 6, 7, 8, 9, 12, 13]
    assert steps[0]["text"] == "FROM base"
    assert steps[2]["text"] == "ENV APP_MODE=test \u2026"
    output = "".join(e["data"] for e in events if e["type"] == "log")
    assert "Successfully installed" in output and "sbxdemo3" in output
    assert {"phase": "snapshot", "type": "phase"} in events

    info = templates.get(name)
    assert info["status"] == "ready" and info["version"] == 1
    assert info["config"]["env"] == {"APP_MODE": "test", "APP_NAME": "demo app"}
    assert info["config"]["user"] == "user" and info["config"]["workdir"] == "/app"
    assert info["config"]["start_cmd"][:3] == ["python3", "-m", "http.server"]
    assert [b["build_id"] for b in info["builds"]] == [build["build_id"]]

    sb = Sandbox.create(name, vcpu=1, memory_mib=512, api_url=sbx_server.url, api_key=org_key)
    try:
        # From the template's own snapshot, made at the end of the build.
        assert how_started(sbx_server, sb.sandbox_id) == "from template snapshot"
        r = sb.commands.run("pwd; whoami; echo $APP_MODE/$APP_NAME; cat built.txt; "
                            "python3 -c 'import sbxdemo0, sbxdemo3; print(sbxdemo3.VALUE)'")
        assert r.stdout.splitlines() == ["/app", "user", "test/demo app", "hello from build",
                                         "sbxdemo3 1.0"]
        # The start command runs and serves the copied files.
        page = sb.commands.run("python3 -c \"import urllib.request as u; "
                               "print(u.urlopen('http://127.0.0.1:8000/index.html').read())\"")
        assert "served by the start command" in page.stdout
        assert sb.commands.run("test -x /app/run.sh && /app/run.sh").stdout == "run\n"
    finally:
        sb.kill()
    # The sandbox's own variables win over the template's.
    sb2 = Sandbox.create(name, vcpu=1, memory_mib=512, env_vars={"APP_MODE": "mine"},
                         api_url=sbx_server.url, api_key=org_key)
    try:
        assert sb2.commands.run("echo $APP_MODE").stdout == "mine\n"
    finally:
        sb2.kill()

    # Seed 002: the template's vcpu, memory and disk size the sandbox.
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key},
                      timeout=120) as api:
        r = api.post("/sandboxes", json={"template": name})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["template_id"] == f"tpl-{name}" and body["name"] == name
        assert (body["vcpu"], body["memory_mib"]) == (1, 512)
        api.delete(f"/sandboxes/{body['id']}")


def test_layer_cache_and_versions(sbx_server: Server, org_key: str, templates: Templates,
                                  tmp_path: Path) -> None:
    name = _name()
    text = ("FROM base\nRUN sleep 2 && echo one > /one\nCOPY f.txt /f.txt\n"
            "RUN echo two > /two\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("v1\n")
    (ctx / "Dockerfile").write_text(text)
    first, _ = _build(templates, name, ctx, vcpu=1, memory_mib=512)
    assert first["version"] == 1

    # Unchanged: every layer comes from the cache.
    again, events = _build(templates, name, ctx, vcpu=1, memory_mib=512)
    assert again["version"] == 2
    done = {e["step"]: e["cached"] for e in events if e["type"] == "step_done"}
    assert done == {1: False, 2: True, 3: True, 4: True}
    assert not [e for e in events if e["type"] == "log"]

    # Only the last RUN changed: the steps before it are not run again.
    (ctx / "Dockerfile").write_text(text.replace("echo two", "echo three"))
    t0 = time.monotonic()
    _, events = _build(templates, name, ctx, vcpu=1, memory_mib=512)
    took = time.monotonic() - t0
    done = {e["step"]: e["cached"] for e in events if e["type"] == "step_done"}
    assert done == {1: False, 2: True, 3: True, 4: False}
    assert took < 30, took
    # A changed COPY source invalidates its step and those after it.
    (ctx / "f.txt").write_text("v2\n")
    _, events = _build(templates, name, ctx, vcpu=1, memory_mib=512)
    done = {e["step"]: e["cached"] for e in events if e["type"] == "step_done"}
    assert done == {1: False, 2: True, 3: False, 4: False}

    sb = Sandbox.create(name, vcpu=1, memory_mib=512, api_url=sbx_server.url, api_key=org_key)
    try:
        assert sb.commands.run("cat /one /two /f.txt 2>&1; cat /three 2>&1 || true"
                               ).stdout.splitlines()[:3] == ["one", "three", "v2"]
    finally:
        sb.kill()
    versions = [(b["version"], b["status"]) for b in templates.get(name)["builds"]]
    # Versions no sandbox uses lose their files; the current one is ready.
    assert versions[0] == (4, "ready")
    assert {s for _, s in versions[1:]} <= {"retired", "ready"}


def test_failed_build_names_its_line_and_keeps_the_previous_version(
        sbx_server: Server, org_key: str, templates: Templates) -> None:
    name = _name()
    good, _ = _build(templates, name, None, "FROM base\nRUN echo good > /marker\n",
                     vcpu=1, memory_mib=512)
    with pytest.raises(TemplateBuildError) as err:
        _build(templates, name, None,
               "FROM base\nRUN echo about to fail\n\nRUN echo bad > /marker && exit 3\n",
               vcpu=1, memory_mib=512)
    assert err.value.status == "failed" and err.value.line == 4
    assert "RUN exited with code 3" in str(err.value)
    info = templates.get(name)
    assert info["status"] == "ready" and info["version"] == good["version"]
    assert [(b["version"], b["status"], b["error_line"]) for b in info["builds"]] == [
        (2, "failed", 4), (1, "ready", None)]
    # The failed version left no files.
    assert not (sbx_server.data_dir / "templates" / name / "v2").exists()
    sb = Sandbox.create(name, vcpu=1, memory_mib=512, api_url=sbx_server.url, api_key=org_key)
    try:
        assert sb.commands.run("cat /marker").stdout == "good\n"
    finally:
        sb.kill()
    # A template with no version yet is not usable after a failed build.
    fresh = _name()
    with pytest.raises(TemplateBuildError):
        _build(templates, fresh, None, "FROM base\nRUN false\n")
    assert templates.get(fresh)["status"] == "failed"
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key}) as api:
        r = api.post("/v1/sandbox/", json={"template_name": fresh, "vcpu": 1,
                                           "memory_mib": 512})
        assert r.status_code == 400 and "unknown template" in r.text


@pytest.mark.parametrize("case,members,message", [
    ("parent escape", [("../evil", b"x")], "evil"),
    ("absolute name", [("/etc/evil", b"x")], "evil"),
    ("absolute symlink", [("link", "/etc/passwd")], "link"),
    ("escaping symlink", [("link", "../../etc")], "link"),
])
def test_hostile_contexts_are_refused_and_leave_nothing(
        sbx_server: Server, org_key: str, case: str, members: list[tuple[str, Any]],
        message: str) -> None:
    entries = []
    docker = tarfile.TarInfo("Dockerfile")
    text = b"FROM base\nCOPY . /ctx/\n"
    docker.size = len(text)
    entries.append((docker, text))
    for path, content in members:
        info = tarfile.TarInfo(path)
        if isinstance(content, bytes):
            info.size = len(content)
            entries.append((info, content))
        else:
            info.type = tarfile.SYMTYPE
            info.linkname = content
            entries.append((info, None))
    name = _name()
    before = set((sbx_server.data_dir / "builds").glob("*")) \
        if (sbx_server.data_dir / "builds").exists() else set()
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key}) as api:
        r = api.post("/templates", params={"name": name}, content=_tar(entries),
                     headers={"Content-Type": "application/x-tar"})
        assert "context" in seed002_error(r, 400) and message in r.text, (case, r.text)
        assert api.get(f"/templates/{name}").status_code == 404
    after = set((sbx_server.data_dir / "builds").glob("*")) \
        if (sbx_server.data_dir / "builds").exists() else set()
    assert after == before


@pytest.mark.parametrize("text,line,fragment", [
    ("FROM base\nEXPOSE 80\n", 2, "EXPOSE is not supported"),
    ("RUN true\n", 1, "FROM must be the first instruction"),
    ("FROM base\nFROM base\n", 2, "multi-stage"),
    ("FROM no-such-template-here\n", 1, "no such template"),
    ("FROM base\nCOPY missing.txt /x\n", 2, "missing.txt"),
])
def test_bad_dockerfiles_get_400_with_the_line(sbx_server: Server, org_key: str, text: str,
                                               line: int, fragment: str) -> None:
    name = _name()
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key}) as api:
        r = api.post("/templates", json={"name": name, "dockerfile": text})
        message = seed002_error(r, 400)
        assert f"line {line}" in message and fragment in message, message
        assert api.get(f"/templates/{name}").status_code == 404


def test_bad_options(sbx_server: Server, org_key: str) -> None:
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key}) as api:
        assert "name" in seed002_error(
            api.post("/templates", json={"name": "Bad_Name", "dockerfile": "FROM base"}), 400)
        assert "built-in" in seed002_error(
            api.post("/templates", json={"name": "base", "dockerfile": "FROM base"}), 400)
        assert "vcpu" in seed002_error(api.post(
            "/templates", json={"name": _name(), "dockerfile": "FROM base", "vcpu": 64}), 403)
        assert "admin" in seed002_error(api.post(
            "/templates", json={"name": _name(), "dockerfile": "FROM base", "public": True}),
            403)
        assert seed002_error(api.post("/templates", json={"name": _name()}), 400)
        r = httpx.post(sbx_server.url + "/templates", json={"name": _name(),
                                                            "dockerfile": "FROM base"})
        seed002_error(r, 401)


def test_cancel_and_time_budget_leave_nothing_running(
        sbx_server: Server, org_key: str, templates: Templates) -> None:
    name = _name()
    started = templates.start_build(name, None, dockerfile_text="FROM base\nRUN sleep 120\n")
    deadline = time.monotonic() + 60
    for event in templates.events(name, started["build_id"]):
        if event["type"] == "step" and event["line"] == 2:
            break
        assert time.monotonic() < deadline
    time.sleep(1.5)
    t0 = time.monotonic()
    out = templates.cancel(name, started["build_id"])
    assert out["status"] == "cancelled" and time.monotonic() - t0 < 10
    assert templates.get(name)["status"] == "failed"
    with pytest.raises(TemplateBuildError) as err:
        _build(templates, name, None, "FROM base\nRUN echo start\nRUN sleep 60\n", timeout_s=8)
    assert err.value.line == 3 and "time budget" in str(err.value)
    # No build sandbox, netns or firewall entry outlives its step.
    assert leaks(sbx_server.node_tag) == {}


def test_ownership_public_templates_and_delete(sbx_server: Server, org_key: str,
                                               templates: Templates) -> None:
    name = _name()
    _build(templates, name, None, "FROM base\nRUN echo mine > /owner\n", vcpu=1, memory_mib=512)
    other = sbx_server.new_org(f"org-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": other}, timeout=60) as api:
        assert api.get(f"/templates/{name}").status_code == 404
        assert name not in [t["name"] for t in api.get("/templates").json()]
        r = api.post("/v1/sandbox/", json={"template_name": name, "vcpu": 1, "memory_mib": 512})
        assert r.status_code == 400
        assert "taken" in seed002_error(
            api.post("/templates", json={"name": name, "dockerfile": "FROM base"}), 409)
        assert api.delete(f"/templates/{name}").status_code == 404
    # A public template (admin key) is everyone's, and a FROM of it works.
    public = _name()
    with _templates(sbx_server, sbx_server.api_key) as admin:
        _build(admin, public, None, "FROM base\nRUN echo shared > /shared\n", public=True,
               vcpu=1, memory_mib=512)
    with _templates(sbx_server, other) as t:
        assert public in [x["name"] for x in t.list() if x["public"]]
        child = _name()
        _build(t, child, None, f"FROM {public}\nRUN cat /shared > /child\n", vcpu=1,
               memory_mib=512)
        sb = Sandbox.create(child, vcpu=1, memory_mib=512, api_url=sbx_server.url,
                            api_key=other)
        try:
            assert sb.commands.run("cat /child").stdout == "shared\n"
        finally:
            sb.kill()
        # Not the owner: a member key cannot delete the public template.
        with pytest.raises(Exception, match="admin"):
            t.delete(public)

    # Delete: refused while a sandbox (a paused one too) uses it.
    sb = Sandbox.create(name, vcpu=1, memory_mib=512, api_url=sbx_server.url, api_key=org_key)
    try:
        sb.pause()
        with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key}) as api:
            assert "used by 1 sandbox" in seed002_error(api.delete(f"/templates/{name}"), 409)
    finally:
        sb.kill()
    templates.delete(name)
    assert not (sbx_server.data_dir / "templates" / name).exists()
    assert name not in [t["name"] for t in templates.list()]
    # The name is free again, for anyone.
    with _templates(sbx_server, other) as t:
        again, _ = _build(t, name, None, "FROM base\n", vcpu=1, memory_mib=512)
        assert again["status"] == "ready"
        t.delete(name)
