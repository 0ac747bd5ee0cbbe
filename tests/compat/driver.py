"""Drives a running sbx with the real `e2b` SDK, installed in its own
environment. Runs with that environment's Python, not sbx's: it imports
nothing from sbx. Prints one JSON line per check: {"check", "ok", "detail"}.

Usage: E2B_API_URL=... E2B_SANDBOX_URL=... E2B_API_KEY=... python driver.py [sync|async|errors]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import e2b
from e2b import AsyncSandbox, Sandbox

RESULTS: list[dict[str, Any]] = []


def record(name: str, fn: Callable[[], Any]) -> Any:
    try:
        detail = fn()
        RESULTS.append({"check": name, "ok": True, "detail": str(detail)[:200]})
        return detail
    except Exception as exc:
        RESULTS.append({"check": name, "ok": False,
                        "detail": f"{type(exc).__name__}: {exc}"[:500],
                        "trace": traceback.format_exc()[-1500:]})
        return None


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def listed_ids() -> list[str]:
    res = Sandbox.list()
    items = res.next_items() if hasattr(res, "next_items") else res
    return [s.sandbox_id for s in items]


def sync_checks() -> None:
    sb = record("Sandbox.create", lambda: Sandbox.create(
        template="base", timeout=120, metadata={"suite": "compat"}, envs={"GREETING": "hi"}))
    if sb is None:
        return
    try:
        def run_basic() -> str:
            r = sb.commands.run("echo $GREETING; echo err >&2; whoami")
            expect(r.stdout == "hi\nuser\n", repr(r.stdout))
            expect(r.stderr == "err\n", repr(r.stderr))
            expect(r.exit_code == 0, str(r.exit_code))
            return r.stdout
        record("commands.run stdout/stderr/exit_code/envs", run_basic)

        def nonzero() -> str:
            try:
                sb.commands.run("echo out; exit 7")
            except e2b.CommandExitException as exc:
                expect(exc.exit_code == 7 and exc.stdout == "out\n", repr(exc))
                return "raised"
            raise AssertionError("no CommandExitException")
        record("commands.run non-zero -> CommandExitException", nonzero)

        def streaming() -> str:
            seen: list[str] = []
            sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done",
                            on_stdout=lambda line: seen.append(line.strip()))
            expect(seen == ["1", "2", "3"], repr(seen))
            return ",".join(seen)
        record("commands.run on_stdout streaming", streaming)

        def background() -> str:
            h = sb.commands.run("sleep 0.5; echo bg", background=True)
            r = h.wait()
            expect(r.stdout == "bg\n", repr(r.stdout))
            return r.stdout
        record("commands.run background + wait", background)

        def stdin() -> str:
            h = sb.commands.run("head -n 1", background=True, stdin=True) \
                if "stdin" in sb.commands.run.__code__.co_varnames else \
                sb.commands.run("head -n 1", background=True)
            sb.commands.send_stdin(h.pid, "typed\n")
            r = h.wait()
            expect(r.stdout == "typed\n", repr(r.stdout))
            return r.stdout
        record("commands.send_stdin", stdin)

        def list_kill() -> str:
            h = sb.commands.run("sleep 30", background=True)
            pids = [p.pid for p in sb.commands.list()]
            expect(h.pid in pids, f"{h.pid} not in {pids}")
            expect(sb.commands.kill(h.pid) is True, "kill returned False")
            with contextlib.suppress(e2b.CommandExitException):
                h.wait()
            expect(h.pid not in [p.pid for p in sb.commands.list()], "still listed")
            return "killed"
        record("commands.list + commands.kill", list_kill)

        record("files.write/read text", lambda: (
            sb.files.write("/home/user/t.txt", "héllo"),
            expect(sb.files.read("/home/user/t.txt") == "héllo", "text mismatch"))[1] or "ok")

        def big_bytes() -> str:
            data = os.urandom(10 * 1024 * 1024)
            t0 = time.time()
            sb.files.write("/home/user/big.bin", data)
            back = sb.files.read("/home/user/big.bin", format="bytes")
            expect(bytes(back) == data, "10 MiB mismatch")
            return f"{time.time() - t0:.2f}s"
        record("files.write/read bytes 10 MiB", big_bytes)

        def fs_ops() -> str:
            expect(sb.files.make_dir("/home/user/d") is True, "make_dir")
            sb.files.write("/home/user/d/x.txt", "x")
            names = sorted(e.name for e in sb.files.list("/home/user/d"))
            expect(names == ["x.txt"], repr(names))
            expect(sb.files.exists("/home/user/d/x.txt"), "exists")
            info = sb.files.get_info("/home/user/d/x.txt")
            expect(info.size == 1 and info.name == "x.txt", repr(info))
            sb.files.rename("/home/user/d/x.txt", "/home/user/d/y.txt")
            expect(not sb.files.exists("/home/user/d/x.txt"), "rename left old")
            sb.files.remove("/home/user/d/y.txt")
            expect(not sb.files.exists("/home/user/d/y.txt"), "remove")
            return "ok"
        record("files.make_dir/list/exists/get_info/rename/remove", fs_ops)

        def watch() -> str:
            events: list[Any] = []
            sb.files.make_dir("/home/user/w")
            handle = sb.files.watch_dir("/home/user/w")
            sb.files.write("/home/user/w/new.txt", "n")
            time.sleep(0.5)
            events = handle.get_new_events()
            handle.stop()
            expect(any(e.name == "new.txt" for e in events), repr(events))
            return f"{len(events)} events"
        record("files.watch_dir", watch)

        def pty() -> str:
            out: list[bytes] = []
            h = sb.pty.create(e2b.PtySize(rows=24, cols=80))
            sb.pty.resize(h.pid, e2b.PtySize(rows=40, cols=100))
            sb.pty.send_stdin(h.pid, b"stty size; exit\n")
            h.wait(on_pty=out.append)
            text = b"".join(out).decode(errors="replace")
            expect("40 100" in text, repr(text[-200:]))
            return "40 100"
        record("pty.create + send_stdin + resize", pty)

        record("Sandbox.list", lambda: expect(sb.sandbox_id in listed_ids(), "not listed")
               or "listed")

        def info() -> str:
            i = sb.get_info()
            expect(i.sandbox_id == sb.sandbox_id and i.metadata == {"suite": "compat"}, repr(i))
            return str(i.state)
        record("get_info", info)

        def set_timeout() -> str:
            before = sb.get_info().end_at
            sb.set_timeout(300)
            after = sb.get_info().end_at
            expect(after > before, f"{before} -> {after}")
            return str(after)
        record("set_timeout", set_timeout)

        def connect() -> str:
            again = Sandbox.connect(sb.sandbox_id)
            r = again.commands.run("cat /home/user/t.txt")
            expect(r.stdout == "héllo", repr(r.stdout))
            return "ok"
        record("Sandbox.connect", connect)

        def pause_connect() -> str:
            pause = getattr(sb, "pause", None) or sb.beta_pause
            pause()
            expect(Sandbox.get_info(sb.sandbox_id).state.value == "paused", "not paused")
            again = Sandbox.connect(sb.sandbox_id)
            r = again.commands.run("cat /home/user/t.txt")
            expect(r.stdout == "héllo", repr(r.stdout))
            return "paused, resumed by connect"
        record("pause + connect resumes", pause_connect)
    finally:
        record("kill", lambda: sb.kill())

    def gone() -> str:
        try:
            Sandbox.connect(sb.sandbox_id)
        except e2b.NotFoundException:
            return "NotFoundException"
        raise AssertionError("killed sandbox still connectable")
    record("killed sandbox -> NotFoundException", gone)


async def async_checks() -> None:
    async def go() -> None:
        sb = await AsyncSandbox.create(template="base", timeout=120, envs={"A": "1"})
        try:
            r = await sb.commands.run("echo $A")
            expect(r.stdout == "1\n", repr(r.stdout))
            await sb.files.write("/home/user/a.txt", "async")
            expect(await sb.files.read("/home/user/a.txt") == "async", "read")
            h = await sb.commands.run("sleep 0.2; echo bg", background=True)
            expect((await h.wait()).stdout == "bg\n", "bg")
            expect(any(e.name == "a.txt" for e in await sb.files.list("/home/user")), "list")
            info = await sb.get_info()
            expect(info.sandbox_id == sb.sandbox_id, "info")
            await sb.set_timeout(200)
        finally:
            await sb.kill()

    try:
        await go()
        RESULTS.append({"check": "AsyncSandbox create/run/files/background/info/kill",
                        "ok": True, "detail": "ok"})
    except Exception as exc:
        RESULTS.append({"check": "AsyncSandbox create/run/files/background/info/kill",
                        "ok": False, "detail": f"{type(exc).__name__}: {exc}"[:500],
                        "trace": traceback.format_exc()[-1500:]})


def error_checks() -> None:
    def unknown() -> str:
        t0 = time.time()
        try:
            Sandbox.connect("sbx-00000000")
        except e2b.NotFoundException:
            expect(time.time() - t0 < 5, "slow: retried?")
            return "NotFoundException"
        raise AssertionError("no error")
    record("unknown sandbox -> NotFoundException", unknown)

    def bad_key() -> str:
        t0 = time.time()
        try:
            Sandbox.create(template="base", api_key="sbx_wrong")
        except e2b.AuthenticationException:
            expect(time.time() - t0 < 5, "slow: retried?")
            return "AuthenticationException"
        raise AssertionError("no error")
    record("bad API key -> AuthenticationException", bad_key)

    def missing_file() -> str:
        sb = Sandbox.create(template="base", timeout=60)
        try:
            try:
                sb.files.read("/nope/missing.txt")
            except e2b.NotFoundException:
                return "NotFoundException"
            raise AssertionError("no error")
        finally:
            sb.kill()
    record("missing file -> NotFoundException", missing_file)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "sync"
    if which == "sync":
        sync_checks()
    elif which == "async":
        asyncio.run(async_checks())
    else:
        error_checks()
    for r in RESULTS:
        print(json.dumps(r))
    sys.stdout.flush()
    # Every check is done and reported: skip interpreter finalization, where
    # the SDK's own background threads once crashed the process (CI, e2b
    # 2.50.0 async: "PyGILState_Release ... finalizing", exit -6).
    os._exit(0)


if __name__ == "__main__":
    main()
