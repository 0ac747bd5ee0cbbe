"""The real Code Interpreter SDKs, unchanged, against a real sbx server and
its `code-interpreter-v1` template: `e2b-code-interpreter` (Python, in an
environment of its own: tests/compat/ci_driver.py) and `@e2b/code-interpreter`
(JavaScript: tests/compat/js_driver.cjs), and the plain `e2b` JavaScript SDK
on `base`. One server for the module; the template is built once per
machine into the shared template cache (minutes, the first time), and its
snapshot holds the warm Python kernel. The npm packages are installed into
a directory of the test run."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server import Server, free_subnet, leaks, mounts_of

SDK = "e2b-code-interpreter==2.11.5"
# The e2b release it is tested with (its dependency, pinned for repeatable runs).
E2B = "e2b==2.64.0"
VENVS = Path(os.environ.get("SBX_TEST_E2B_VENVS", "/var/cache/sbx-test/e2b-venvs"))
DRIVER = Path(__file__).with_name("ci_driver.py")
JS_DRIVER = Path(__file__).with_name("js_driver.cjs")
JS_INTERPRETER = "@e2b/code-interpreter@2.8.0"
# 2.51.0, and the newest release when the test runs.
JS_E2B = ["2.51.0", "latest"]
READY_LINE = "code-interpreter-v1 template ready in"
BUILD_WAIT_S = 1500.0


def sdk_python() -> Path:
    venv = VENVS / "ci-2.11.5"
    py = venv / "bin" / "python"
    ok = venv / ".installed"
    if not ok.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", SDK, E2B], check=True)
        ok.touch()
    return py


@pytest.fixture(scope="module")
def ci_server() -> Iterator[Server]:
    server = Server(Path(f"/var/tmp/sbx-test-{uuid.uuid4().hex[:8]}"), subnet=free_subnet(22),
                    extra_env={"SBX_CODE_INTERPRETER": "1"})
    try:
        server.start()
        end = time.monotonic() + BUILD_WAIT_S
        while READY_LINE not in server.tail(1 << 20):
            if "could not be made" in server.tail(1 << 20) or time.monotonic() > end:
                raise RuntimeError(f"code-interpreter-v1 not ready:\n{server.tail()}")
            time.sleep(1)
        yield server
    finally:
        tag, data_dir = server.node_tag, server.data_dir
        server.teardown()
        assert leaks(tag) == {}, leaks(tag)
        assert mounts_of(data_dir) == []


def npm_install(dest: Path, *packages: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "package.json").write_text('{"private": true}\n')
    subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--silent",
                    *packages], cwd=dest, check=True, timeout=600)
    return dest


def drive(server: Server, argv: list[str], timeout: float = 900,
          extra_env: dict[str, str] | None = None) -> list[dict[str, object]]:
    key = server.new_org(f"ci-{uuid.uuid4().hex[:10]}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
        "E2B_API_URL": server.url, "E2B_SANDBOX_URL": server.url, "E2B_API_KEY": key,
        **(extra_env or {}),
    }
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0, res.stderr[-3000:]
    assert results, res.stderr[-3000:]
    failed = [r for r in results if not r["ok"]]
    assert failed == [], json.dumps(failed, indent=1)
    return results


CHECKS = {"run": 13, "contexts": 10, "async": 3, "limits": 4, "lifecycle": 4}


@pytest.mark.parametrize("mode", ["run", "contexts", "async", "limits", "lifecycle"])
def test_code_interpreter_sdk(ci_server: Server, mode: str) -> None:
    results = drive(ci_server, [str(sdk_python()), str(DRIVER), mode])
    # A driver that stopped early (a create that failed) ran fewer checks.
    assert len(results) == CHECKS[mode], [r["check"] for r in results]


def test_code_interpreter_js_sdk(ci_server: Server, tmp_path: Path) -> None:
    npm = npm_install(tmp_path / "npm", JS_INTERPRETER)
    results = drive(ci_server, ["node", str(JS_DRIVER), "interpreter"],
                    extra_env={"SBX_NPM_DIR": str(npm)})
    assert len(results) == 13, [r["check"] for r in results]


@pytest.mark.parametrize("version", JS_E2B)
def test_e2b_js_sdk_on_base(ci_server: Server, tmp_path: Path, version: str) -> None:
    npm = npm_install(tmp_path / "npm", f"e2b@{version}")
    results = drive(ci_server, ["node", str(JS_DRIVER), "base"],
                    extra_env={"SBX_NPM_DIR": str(npm)})
    assert len(results) == 5, [r["check"] for r in results]
