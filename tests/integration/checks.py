"""What integration tests look at on the host and in the store: waiting
for a condition, a sandbox's traces, its state row, a counting loop."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sbx import Sandbox
from tests.integration.server import Server, leaks, mounts_of

# Renamed into place, so a reader never sees a half-written number.
COUNTER = ("nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /root/n.tmp; "
           "mv /root/n.tmp /root/n; sleep 0.05; done' >/dev/null 2>&1 &")


def wait_for(pred: Callable[[], object], timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def counter(sb: Sandbox) -> int:
    return int(sb.commands.run("cat /root/n").stdout)


def runsc_ids(server: Server) -> list[str]:
    root = Path("/run/sbx") / server.node_tag / "runsc"
    return subprocess.run(["runsc", "--root", str(root), "list", "-quiet"],
                          capture_output=True, text=True).stdout.split()


def host_traces(server: Server, name: str) -> dict[str, list[str]]:
    """Host resources (netns, veth, runsc, cgroups, nft chains, mounts)
    whose names carry name (a sandbox id or a runtime id)."""
    short = name[4:]
    found = {k: [v for v in vs if short in v] for k, vs in leaks(server.node_tag).items()}
    found = {k: v for k, v in found.items() if v}
    mounts = [m for m in mounts_of(server.data_dir) if name in m]
    if mounts:
        found["mounts"] = mounts
    return found


def state_in_db(server: Server, sandbox_id: str) -> str:
    with sqlite3.connect(server.data_dir / "sbx.db") as db:
        row = db.execute("SELECT state FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
    return str(row[0]) if row else "missing"
