"""The egress audit log end to end: a sandbox's refused connection read
back with the SDK and with `sbx sandbox audit`, and `--follow` seeing a new
one and ending when the sandbox is deleted."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sbx.sdk import AuditEntry, Sandbox

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from sbx.cli.main import main; main()", "sandbox", "audit"]


def denied_to(entries: list[AuditEntry] | list[dict[str, Any]], ip: str) -> bool:
    rows = [e.to_dict() if isinstance(e, AuditEntry) else e for e in entries]
    return any(r["ip"] == ip and r["decision"] == "deny" for r in rows)


def wait_for_denial(sb: Sandbox, ip: str) -> list[AuditEntry]:
    # The server writes the log in batches, a little after the attempt.
    deadline = time.monotonic() + 20
    while True:
        entries = sb.audit(limit=1000).entries
        if denied_to(entries, ip) or time.monotonic() > deadline:
            return entries
        time.sleep(0.25)


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "the follow printed nothing in time"
    return proc.stdout.readline()


def test_audit_from_the_sdk_and_the_cli(sbx_server: Any, org_key: str) -> None:
    env = {**os.environ, "SBX_API_URL": sbx_server.url, "SBX_API_KEY": org_key}
    sb = Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1, memory_mib=512,
                        network_policy={"mode": "deny-all"})
    follow: subprocess.Popen[str] | None = None
    try:
        sb.commands.run("curl -s -m 3 http://10.99.99.99/ || true")
        entries = wait_for_denial(sb, "10.99.99.99")
        assert denied_to(entries, "10.99.99.99"), [e.to_dict() for e in entries]

        out = subprocess.run([*CLI, sb.sandbox_id, "--json", "--limit", "1000"], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        printed = [json.loads(line) for line in out.stdout.splitlines()]
        assert denied_to(printed, "10.99.99.99"), printed

        # From the end of what is there, so that only new attempts are printed.
        since = str(entries[-1].id)
        follow = subprocess.Popen([*CLI, sb.sandbox_id, "--follow", "--json", "--since", since],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        sb.commands.run("curl -s -m 3 http://10.99.99.98/ || true")
        deadline = time.monotonic() + 30
        seen: list[dict[str, Any]] = []
        while not denied_to(seen, "10.99.99.98"):
            seen.append(json.loads(read_line(follow, deadline)))
        assert all(e["id"] > int(since) for e in seen)

        assert sb.kill()
        _, err = follow.communicate(timeout=30)
        assert follow.returncode == 0, err
        assert err == f"{sb.sandbox_id} is gone: no more entries\n"
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.wait()
        sb.kill()
