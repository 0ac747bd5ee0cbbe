"""The real `e2b` SDK, unchanged, against a real sbx server: the pinned
releases are installed into environments of their own (not sbx's), and
tests/compat/driver.py runs in them. 2.50.0 is the last release that creates
through `POST /sandboxes`; 2.63.0 uses `POST /v2/sandboxes`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.server import Server

VERSIONS = ["2.63.0", "2.50.0"]
VENVS = Path(os.environ.get("SBX_TEST_E2B_VENVS", "/var/cache/sbx-test/e2b-venvs"))
DRIVER = Path(__file__).with_name("driver.py")
REPORT = Path(__file__).with_name("last-report.json")


def e2b_python(version: str) -> Path:
    venv = VENVS / version
    py = venv / "bin" / "python"
    ok = venv / ".installed"
    if not ok.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"e2b=={version}"], check=True)
        ok.touch()
    return py


@pytest.mark.parametrize("mode", ["sync", "async", "errors"])
@pytest.mark.parametrize("version", VERSIONS)
def test_e2b_sdk(version: str, mode: str, sbx_server: Server, org_key: str) -> None:
    py = e2b_python(version)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
        "E2B_API_URL": sbx_server.url,
        "E2B_SANDBOX_URL": sbx_server.url,
        "E2B_API_KEY": org_key,
    }
    res = subprocess.run([str(py), str(DRIVER), mode], capture_output=True, text=True,
                         env=env, timeout=600)
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0, res.stderr[-3000:]
    assert results, res.stderr[-3000:]
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report.setdefault(version, {})[mode] = results
    REPORT.write_text(json.dumps(report, indent=1))
    failed = [r for r in results if not r["ok"]]
    assert failed == [], json.dumps(failed, indent=1)
