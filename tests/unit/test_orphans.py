"""The server reaps orphaned session leaders (runsc's sandbox and gofer
processes) as soon as they exit, and never a child someone else waits for.

Each check runs in a fresh interpreter: a subreaper adopts every orphan
below it, and pytest itself must not become one (a killed test server's
sandboxes would then turn into pytest's zombies)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import asyncio, os, subprocess, time
    from sbx.node import orphans

    def orphan(seconds):
        # sh starts a session leader in the background and exits: it is
        # reparented to the nearest subreaper, this process.
        out = subprocess.run(
            ["sh", "-c", f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 & echo $!"],
            capture_output=True, text=True, check=True)
        return int(out.stdout)

    def leader(pid):
        # Until setsid has run in it, the orphan is in our session.
        while orphans._stat(pid)[1] != pid:
            time.sleep(0.001)
        return pid

    def zombie(pid, within=5.0):
        end = time.monotonic() + within
        while time.monotonic() < end:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
            except FileNotFoundError:
                return False
            time.sleep(0.01)
        return False
""")


def run(body: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_orphans_are_reaped_and_own_children_are_left_alone() -> None:
    out = run("""
        assert orphans.become_subreaper()
        pid = orphan(0.05)
        assert pid in orphans.children(), "not adopted"
        assert zombie(pid)
        mine = subprocess.Popen(["sh", "-c", "exit 3"])
        assert zombie(mine.pid)
        reaped = orphans.reap_orphans()
        assert reaped == [pid], reaped
        assert pid not in orphans.children()
        # A child of our own (not a session leader) keeps its exit status.
        assert mine.poll() == 3, mine.returncode
        print("ok")
    """)
    assert out.strip() == "ok"


def test_orphans_of_another_session_are_reaped_too() -> None:
    # As systrap's stubs: in the sandbox's session, not its leader, and
    # orphaned when the sandbox process dies.
    out = run("""
        assert orphans.become_subreaper()
        out = subprocess.run(
            ["sh", "-c", "setsid sh -c 'sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!' &"
                         " wait"],
            capture_output=True, text=True, check=True)
        pid = int(out.stdout)
        end = time.monotonic() + 5
        while pid not in orphans.children():
            assert time.monotonic() < end, "not adopted"
            time.sleep(0.01)
        st = orphans._stat(pid)
        assert st[1] not in (pid, os.getsid(0)), st
        assert zombie(pid)
        assert orphans.reap_orphans() == [pid]
        print("ok")
    """)
    assert out.strip() == "ok"


def test_reaper_reaps_adopted_processes_at_once() -> None:
    out = run("""
        import uvloop
        async def main():
            r = orphans.OrphanReaper()
            await r.start()
            pid = leader(orphan(0.3))
            r.adopt()
            assert pid in r._watched
            while pid in orphans.children() and not zombie(pid, 0):
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            while pid in orphans.children():
                # Well before the 1 s sweep: the pidfd said it exited.
                assert time.monotonic() - t0 < 0.2, "not reaped when it exited"
                await asyncio.sleep(0.005)
            assert not r._watched
            # The asyncio child watcher still gets its child's exit status.
            proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
            assert await proc.wait() == 7
            await r.stop()
            print("ok")
        uvloop.run(main())
    """)
    assert out.strip() == "ok"
