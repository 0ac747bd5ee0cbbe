"""Template builds under stress and from the command line: the disk budget,
a server SIGKILLed in the middle of a RUN (the previous version stays in
use; nothing of the cut build remains), the CLI's progress output and exit
codes, and the async SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sbx.sdk import AsyncTemplates, Sandbox, TemplateBuildError, Templates
from tests.integration.server import SBX, Server, mounts_of, own_server


def test_disk_budget_and_a_server_killed_mid_build() -> None:
    with own_server({"SBX_BUILD_MAX_LAYER_MIB": "20"}) as server:
        with Templates(server.url, server.api_key) as t:
            with pytest.raises(TemplateBuildError) as err:
                t.build("big", None, dockerfile_text=(
                    "FROM base\nRUN head -c 64M /dev/urandom > /big && sleep 20\n"))
            assert err.value.line == 2 and "disk budget of 20 MiB" in str(err.value)
            t.build("keep", None, dockerfile_text="FROM base\nRUN echo v1 > /v\n", vcpu=1,
                    memory_mib=512)
            started = t.start_build("keep", None, dockerfile_text=(
                "FROM base\nRUN echo v2 > /v && sleep 300\n"), vcpu=1, memory_mib=512)
            for event in t.events("keep", started["build_id"]):
                if event["type"] == "step" and event["line"] == 2:
                    break
        # The RUN's sandbox is up and sleeping when the server dies.
        time.sleep(3)
        builds = server.data_dir / "layers" / "tmp"
        assert any(builds.iterdir())
        server.stop(signal.SIGKILL)
        server.start()
        with Templates(server.url, server.api_key) as t:
            info = t.get("keep")
            assert info["status"] == "ready" and info["version"] == 1
            cut = info["builds"][0]
            assert (cut["version"], cut["status"]) == (2, "failed")
            assert "interrupted" in cut["error"]
            sb = Sandbox.create("keep", vcpu=1, memory_mib=512, api_url=server.url,
                                api_key=server.api_key)
            try:
                assert sb.commands.run("cat /v").stdout == "v1\n"
            finally:
                sb.kill()
        # Nothing of the cut build: no mount, no half version, no workspace.
        assert [m for m in mounts_of(server.data_dir) if "/layers/" in m] == []
        assert not (server.data_dir / "templates" / "keep" / "v2").exists()
        assert list(builds.iterdir()) == []


def _cli(server: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SBX_API_URL": server.url, "SBX_API_KEY": server.api_key,
           "COLUMNS": "120"}
    return subprocess.run([SBX, "template", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cli_build_list_show_delete(sbx_server: Server, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hi\n")
    (ctx / "secret.key").write_text("not for the image\n")
    (ctx / ".dockerignore").write_text("*.key\n")
    # The Dockerfile outside the context, given with -f (relative to the cwd).
    (tmp_path / "build.Dockerfile").write_text(
        "FROM base\nCOPY . /ctx/\nRUN ls /ctx && echo built-by-cli\n")
    name = f"cli-{os.urandom(3).hex()}"
    r = _cli(sbx_server, "build", "--name", name, "-f", "build.Dockerfile", "--vcpu", "1",
             "--memory-mib", "512", "ctx", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "#3 line 3: RUN ls /ctx && echo built-by-cli" in r.stdout
    assert "built-by-cli" in r.stdout and "hello.txt" in r.stdout
    assert "secret.key" not in r.stdout
    assert f"template {name} v1 is ready" in r.stdout
    listed = json.loads(_cli(sbx_server, "list", "--json").stdout)
    assert [t["version"] for t in listed if t["name"] == name] == [1]
    shown = json.loads(_cli(sbx_server, "show", name).stdout)
    assert shown["builds"][0]["status"] == "ready"

    (tmp_path / "bad.Dockerfile").write_text("FROM base\nRUN echo x\nRUN exit 7\n")
    r = _cli(sbx_server, "build", "--name", name, "-f", "bad.Dockerfile", "ctx", cwd=tmp_path)
    assert r.returncode != 0
    assert "line 3" in r.stderr and "code 7" in r.stderr
    (tmp_path / "worse.Dockerfile").write_text("FROM base\nHEALTHCHECK CMD true\n")
    r = _cli(sbx_server, "build", "--name", name, "-f", "worse.Dockerfile", "ctx",
             cwd=tmp_path)
    assert r.returncode != 0 and "line 2: HEALTHCHECK is not supported" in r.stderr

    assert _cli(sbx_server, "delete", name).returncode == 0
    assert name not in _cli(sbx_server, "list", "--json").stdout
    r = _cli(sbx_server, "show", name)
    assert r.returncode != 0 and "not found" in r.stderr


def test_async_sdk(sbx_server: Server, org_key: str) -> None:
    async def go() -> None:
        async with AsyncTemplates(sbx_server.url, org_key) as t:
            events: list[dict[str, object]] = []
            name = f"async-{os.urandom(3).hex()}"
            out = await t.build(name, None, dockerfile_text="FROM base\nRUN echo async\n",
                                on_event=events.append, vcpu=1, memory_mib=512)
            assert out["status"] == "ready"
            assert any(e.get("type") == "log" and "async" in str(e.get("data"))
                       for e in events)
            assert name in [x["name"] for x in await t.list()]
            await t.delete(name)

    asyncio.run(go())


def test_cli_ctrl_c_cancels_the_build(sbx_server: Server, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN sleep 120\n")
    name = f"cli-int-{os.urandom(3).hex()}"
    env = {**os.environ, "SBX_API_URL": sbx_server.url, "SBX_API_KEY": sbx_server.api_key,
           "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([SBX, "template", "build", "--name", name, str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as cli:
        try:
            assert cli.stdout is not None
            seen = ""
            deadline = time.monotonic() + 120
            while "#2 line 2: RUN sleep 120" not in seen:
                assert time.monotonic() < deadline and cli.poll() is None, seen
                seen += cli.stdout.readline()
            time.sleep(1)
            cli.send_signal(signal.SIGINT)
            assert cli.wait(timeout=30) == 130
            assert "cancelling" in seen + cli.stdout.read()
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    with Templates(sbx_server.url, sbx_server.api_key) as t:
        build = t.get(name)["builds"][0]
        assert build["status"] == "cancelled"
        t.delete(name)
