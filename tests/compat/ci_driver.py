"""Drives a running sbx with the real `e2b-code-interpreter` SDK, installed in
its own environment (it imports nothing from sbx). Prints one JSON line per
check: {"check", "ok", "detail"}.

Usage: E2B_API_URL=... E2B_SANDBOX_URL=... E2B_API_KEY=... \
    python ci_driver.py [run|contexts|lifecycle|limits|async]
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import e2b
from e2b_code_interpreter import AsyncSandbox, Sandbox

RESULTS: list[dict[str, Any]] = []


def record(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    try:
        detail = fn()
        RESULTS.append({"check": name, "ok": True, "detail": str(detail)[:300],
                        "seconds": round(time.monotonic() - t0, 3)})
        return detail
    except Exception as exc:
        RESULTS.append({"check": name, "ok": False,
                        "detail": f"{type(exc).__name__}: {exc}"[:800],
                        "trace": traceback.format_exc()[-2000:]})
        return None


def expect(cond: bool, what: object) -> None:
    if not cond:
        raise AssertionError(str(what)[:800])


def main_text(sb: Sandbox, code: str, **kw: Any) -> str | None:
    ex = sb.run_code(code, **kw)
    expect(ex.error is None, ex.error)
    return ex.text


FORMATS_CELL = r"""
import base64, io
from IPython.display import display, HTML, Markdown, SVG, Latex, JSON, Javascript, Image
from PIL import Image as PILImage
display(HTML("<b>bold</b>"))
display(Markdown("**md**"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'))
display(Latex(r"$x^2$"))
display(JSON({"a": 1}))
display(Javascript("console.log(1)"))
buf = io.BytesIO(); PILImage.new("RGB", (4, 4), "red").save(buf, "JPEG")
display(Image(data=buf.getvalue(), format="jpeg"))
display(PILImage.new("RGB", (4, 4), "blue"))
class Doc:
    def _repr_pdf_(self):
        return b"%PDF-1.4 sbx"
display(Doc())
import pandas as pd
pd.DataFrame({"a": [1, 2], "b": [3, 4]})
"""

CHART_CELL = """
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3], [2, 4, 8], label="growth")
ax.set_title("Growth"); ax.set_xlabel("day"); ax.set_ylabel("value")
plt.show()
"""

BAR_CELL = """
import matplotlib.pyplot as plt
plt.figure(); plt.bar(["a", "b", "c"], [3, 1, 2]); plt.title("Bars"); plt.show()
"""


def run_checks() -> None:
    sb = record("Sandbox.create() (code-interpreter-v1)",
                lambda: Sandbox.create(timeout=300, envs={"SANDBOX_VAR": "from-create"}))
    if sb is None:
        return
    try:
        def simple() -> str:
            ex = sb.run_code("1+1")
            expect(ex.text == "2", ex)
            expect(len(ex.results) == 1 and ex.results[0].is_main_result, ex.results)
            expect(isinstance(ex.execution_count, int) and ex.execution_count >= 1,
                   ex.execution_count)
            return f"text={ex.text} count={ex.execution_count}"
        record("run_code 1+1: main result, execution count", simple)

        def state() -> str:
            sb.run_code("x = 41")
            return str(main_text(sb, "x + 1"))
        record("state between cells", lambda: expect(state() == "42", "x+1") or "42")

        def streaming() -> str:
            seen: list[tuple[str, float, bool]] = []
            t0 = time.monotonic()
            ex = sb.run_code(
                "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n"
                "    time.sleep(0.4)\nprint('oops', file=sys.stderr, flush=True)",
                on_stdout=lambda m: seen.append((m.line, time.monotonic() - t0, m.error)),
                on_stderr=lambda m: seen.append((m.line, time.monotonic() - t0, m.error)))
            total = time.monotonic() - t0
            expect([s[0] for s in seen] == ["0\n", "1\n", "2\n", "oops\n"], seen)
            expect(seen[-1][2] and not seen[0][2], "error flags")
            # The first line arrived while the cell still ran (streamed).
            expect(seen[0][1] < total - 0.6, (seen, total))
            expect(ex.logs.stdout == ["0\n", "1\n", "2\n"] and ex.logs.stderr == ["oops\n"],
                   ex.logs)
            return f"first after {seen[0][1]:.2f}s of {total:.2f}s"
        record("stdout/stderr streamed as printed (on_stdout, on_stderr)", streaming)

        def formats() -> str:
            got: list[Any] = []
            ex = sb.run_code(FORMATS_CELL, on_result=got.append)
            expect(ex.error is None, ex.error)
            by = {f: r for r in ex.results for f in r.formats()}
            for f in ("html", "markdown", "svg", "latex", "json", "javascript", "jpeg", "png",
                      "pdf", "text"):
                expect(f in by, (f, [list(r.formats()) for r in ex.results]))
            expect(by["markdown"].markdown == "**md**", by["markdown"].markdown)
            expect(by["json"].json == {"a": 1}, by["json"].json)
            expect(base64.b64decode(by["jpeg"].jpeg)[:2] == b"\xff\xd8", "jpeg magic")
            expect(base64.b64decode(by["png"].png)[:4] == b"\x89PNG", "png magic")
            expect(base64.b64decode(by["pdf"].pdf).startswith(b"%PDF"), "pdf")
            main = [r for r in ex.results if r.is_main_result]
            expect(len(main) == 1 and main[0].html and "<table" in main[0].html, main)
            expect(len(got) == len(ex.results), "on_result for each")
            return ",".join(sorted(by))
        record("results in every format, main result marked, on_result", formats)

        def chart() -> str:
            ex = sb.run_code(CHART_CELL)
            charts = [r.chart for r in ex.results if r.chart is not None]
            expect(len(charts) == 1, ex.results)
            c = charts[0]
            expect(c.type.value == "line" and c.title == "Growth", (c.type, c.title))
            expect(c.x_label == "day" and c.y_label == "value", (c.x_label, c.y_label))
            expect(c.elements[0].label == "growth", c.elements[0].label)
            expect([list(p) for p in c.elements[0].points] == [[1, 2], [2, 4], [3, 8]],
                   c.elements[0].points)
            expect(any(r.png for r in ex.results), "png beside the chart")
            ex = sb.run_code(BAR_CELL)
            bars = [r.chart for r in ex.results if r.chart is not None]
            expect(bars and bars[0].type.value == "bar", bars)
            expect([(e.label, e.value) for e in bars[0].elements] == [("a", 3), ("b", 1),
                                                                      ("c", 2)],
                   [(e.label, e.value) for e in bars[0].elements])
            return f"{c.type.value} {c.title}; bar {len(bars[0].elements)}"
        record("matplotlib charts (line, bar) as structured chart", chart)

        def error() -> str:
            errs: list[Any] = []
            ex = sb.run_code("def f():\n    return 1/0\nf()", on_error=errs.append)
            expect(ex.error is not None and ex.error.name == "ZeroDivisionError", ex.error)
            expect(ex.error.value == "division by zero", ex.error.value)
            expect("ZeroDivisionError" in ex.error.traceback and "f()" in ex.error.traceback,
                   ex.error.traceback)
            expect(errs and errs[0].name == "ZeroDivisionError", errs)
            return ex.error.name
        record("error: name, value, traceback, on_error", error)

        def envs() -> str:
            got = main_text(sb, "import os; os.environ.get('CELL_VAR')", envs={"CELL_VAR": "v1"})
            expect(got == "'v1'", got)
            after = main_text(sb, "str(os.environ.get('CELL_VAR'))")
            expect(after == "'None'", after)
            sandbox = main_text(sb, "os.environ.get('SANDBOX_VAR')")
            expect(sandbox == "'from-create'", sandbox)
            return f"{got} then {after}; sandbox {sandbox}"
        record("per-call env vars (and the sandbox's)", envs)

        def bash() -> str:
            ex = sb.run_code("echo $((40+2)); echo $CELL_VAR", language="bash",
                             envs={"CELL_VAR": "b"})
            expect(ex.error is None and ex.logs.stdout == ["42\n", "b\n"], ex)
            return "".join(ex.logs.stdout)
        record("language=bash", bash)

        def r_lang() -> str:
            ex = sb.run_code("x <- c(1, 2, 3)\ncat(Sys.getenv('CELL_VAR'), '\\n')\nsum(x) * 2",
                             language="r", envs={"CELL_VAR": "r-env"})
            # IRkernel shows a cell's value as a display, not as its result.
            expect(ex.error is None and [r.text for r in ex.results] == ["[1] 12"], ex)
            expect(ex.logs.stdout == ["r-env \n"], ex.logs)
            ex = sb.run_code("mean(x)", language="r")
            expect([r.text for r in ex.results] == ["[1] 2"], ex)
            ex = sb.run_code("stop('bad input')", language="r")
            expect(ex.error is not None and "bad input" in ex.error.value, ex.error)
            return "R"
        record("language=r: state, env vars, errors", r_lang)

        def timeout() -> str:
            t0 = time.monotonic()
            try:
                sb.run_code("while True:\n    pass", timeout=2)
                raise AssertionError("no TimeoutException")
            except e2b.TimeoutException:
                pass
            took = time.monotonic() - t0
            t1 = time.monotonic()
            after = main_text(sb, "x")
            expect(after == "41", after)
            return f"timed out after {took:.1f}s; next cell in {time.monotonic() - t1:.2f}s"
        record("timeout interrupts an infinite loop; the context keeps its state", timeout)

        def files_commands() -> str:
            sb.files.write("/home/user/data.csv", "a,b\n1,2\n")
            got = main_text(sb, "import pandas as pd; int(pd.read_csv('/home/user/data.csv').b[0])")
            expect(got == "2", got)
            sb.run_code("open('/home/user/out.txt', 'w').write('from python')")
            expect(sb.files.read("/home/user/out.txt") == "from python", "files.read")
            r = sb.commands.run("whoami; pwd")
            expect(r.stdout == "user\n/home/user\n", r.stdout)
            return "ok"
        record("files and commands beside the kernel", files_commands)
    finally:
        record("kill", sb.kill)


def contexts_checks() -> None:
    sb = record("Sandbox.create", lambda: Sandbox.create(timeout=300))
    if sb is None:
        return
    try:
        ctx = record("create_code_context(cwd, language)",
                     lambda: sb.create_code_context(cwd="/tmp", language="python"))
        if ctx is None:
            return

        def attrs() -> str:
            expect(ctx.language == "python" and ctx.cwd == "/tmp" and ctx.id, vars(ctx))
            cwd = main_text(sb, "import os; os.getcwd()", context=ctx)
            expect(cwd == "'/tmp'", cwd)
            return ctx.id
        record("context attributes and cwd", attrs)

        def isolated() -> str:
            sb.run_code("secret = 7", context=ctx)
            expect(main_text(sb, "secret", context=ctx) == "7", "in ctx")
            ex = sb.run_code("secret")
            expect(ex.error is not None and ex.error.name == "NameError", ex.error)
            other = sb.create_code_context()
            ex = sb.run_code("secret", context=other)
            expect(ex.error is not None and ex.error.name == "NameError", ex.error)
            sb.remove_code_context(other)
            return "isolated"
        record("contexts are isolated", isolated)

        def listed() -> str:
            ids = [c.id for c in sb.list_code_contexts()]
            expect(ctx.id in ids, ids)
            return ",".join(ids)
        record("list_code_contexts", listed)

        def restart() -> str:
            sb.restart_code_context(ctx)
            ex = sb.run_code("secret", context=ctx)
            expect(ex.error is not None and ex.error.name == "NameError", ex.error)
            cwd = main_text(sb, "import os; os.getcwd()", context=ctx)
            expect(cwd == "'/tmp'", cwd)
            return "fresh kernel, same cwd"
        record("restart_code_context", restart)

        def bash_ctx() -> str:
            b = sb.create_code_context(language="bash", cwd="/home/user")
            sb.run_code("FOO=bar", context=b)
            ex = sb.run_code("echo $FOO; pwd", context=b)
            expect(ex.logs.stdout == ["bar\n", "/home/user\n"], ex.logs)
            sb.remove_code_context(b.id)
            return "bash"
        record("bash context keeps shell state", bash_ctx)

        def remove() -> str:
            sb.remove_code_context(ctx)
            ids = [c.id for c in sb.list_code_contexts()]
            expect(ctx.id not in ids, ids)
            try:
                sb.run_code("1", context=ctx)
                raise AssertionError("ran in a removed context")
            except e2b.NotFoundException:
                pass
            return "removed"
        record("remove_code_context; running in it is NotFound", remove)

        def unknown_language() -> str:
            try:
                sb.run_code("1", language="cobol")
            except e2b.SandboxException as exc:
                expect("400" in str(exc), exc)
                return str(exc)[:80]
            raise AssertionError("accepted")
        record("unknown language refused (400)", unknown_language)
    finally:
        record("kill", sb.kill)


PAUSE_CYCLES = 20


def lifecycle_checks() -> None:
    sb = record("Sandbox.create", lambda: Sandbox.create(timeout=600))
    if sb is None:
        return
    sandbox_id = sb.sandbox_id
    try:
        other = sb.create_code_context(language="python")
        bash = sb.create_code_context(language="bash")
        js = sb.create_code_context(language="javascript")
        sb.run_code("import json, math\nn = 0\nf = open('/home/user/log.txt', 'w')")
        sb.run_code("m = 100", context=other)
        sb.run_code("COUNT=0", context=bash)
        sb.run_code("const os = require('os'); let k = 0", context=js)

        def cycles() -> str:
            times = []
            for i in range(PAUSE_CYCLES):
                t0 = time.monotonic()
                sb.pause()
                again = Sandbox.connect(sandbox_id)
                times.append(time.monotonic() - t0)
                ex = again.run_code(f"n += 1\nf.write('{i}\\n'); f.flush()\n"
                                    "(n, math.floor(2.5), json.dumps(n))")
                expect(ex.error is None and ex.text == f"({i + 1}, 2, '{i + 1}')", (i, ex))
                ex = again.run_code("m += 1\nm", context=other)
                expect(ex.text == str(101 + i), (i, ex))
                ex = again.run_code("COUNT=$((COUNT+1)); echo $COUNT", context=bash)
                expect(ex.logs.stdout == [f"{i + 1}\n"], (i, ex.logs))
                ex = again.run_code("k += 1; [k, typeof os.cpus]", context=js)
                expect(ex.text == f"[ {i + 1}, 'function' ]", (i, ex.text, ex.error))
            content = sb.files.read("/home/user/log.txt")
            expect(content == "".join(f"{i}\n" for i in range(PAUSE_CYCLES)), content)
            times.sort()
            return f"{PAUSE_CYCLES} cycles, pause+connect p50 {times[len(times) // 2]:.2f}s"
        record(f"state of every context survives {PAUSE_CYCLES} pause/resume cycles", cycles)
    finally:
        record("kill", sb.kill)

    def killed() -> str:
        try:
            Sandbox.connect(sandbox_id)
        except e2b.NotFoundException:
            return "not found after kill"
        raise AssertionError("connect after kill worked")
    record("connect after kill -> NotFound", killed)


def limits_checks() -> None:
    sb = record("Sandbox.create", lambda: Sandbox.create(timeout=600))
    if sb is None:
        return
    try:
        def memory() -> str:
            ex = sb.run_code("keep = []\nwhile True:\n    keep.append(bytearray(64 << 20))",
                             timeout=120)
            expect(ex.error is not None and ex.error.name == "KernelDiedError", ex.error)
            expect("memory" in ex.error.value, ex.error.value)
            fresh = sb.create_code_context()
            got = main_text(sb, "sum(range(10))", context=fresh)
            expect(got == "45", got)
            again = main_text(sb, "2*3")
            expect(again == "6", again)
            return ex.error.value[:60]
        record("a cell past the sandbox's memory: clear error, fresh contexts work", memory)

        def flood() -> str:
            other = sb.create_code_context()
            got: list[int] = []
            times: list[float] = []

            def big() -> None:
                ex = sb.run_code(
                    "import sys\nline = 'x' * 1023 + '\\n'\n"
                    "for _ in range(100 * 1024):\n    sys.stdout.write(line)\n'done'",
                    timeout=300)
                got.append(sum(len(s) for s in ex.logs.stdout))
                got.append(len(ex.logs.stderr))
                expect(ex.text == "'done'", ex.text)

            t = threading.Thread(target=big)
            t.start()
            time.sleep(1.0)
            while t.is_alive() and len(times) < 10:
                t0 = time.monotonic()
                expect(main_text(sb, "1+1", context=other) == "2", "other context")
                times.append(time.monotonic() - t0)
            t.join(300)
            expect(not t.is_alive() and len(got) == 2, got)
            expect(got[0] <= 9 << 20 and got[1] >= 1, got)
            expect(max(times, default=0) < 5, times)
            return f"stdout kept {got[0] >> 20} MiB of 100; other context max {max(times):.2f}s"
        record("100 MiB of stdout is bounded and does not stall another context", flood)
    finally:
        record("kill", sb.kill)


async def async_checks() -> None:
    try:
        sb = await AsyncSandbox.create(timeout=300)
    except Exception as exc:
        RESULTS.append({"check": "AsyncSandbox.create", "ok": False, "detail": repr(exc)})
        return
    RESULTS.append({"check": "AsyncSandbox.create", "ok": True, "detail": sb.sandbox_id})
    try:
        lines: list[str] = []

        async def on_stdout(m: Any) -> None:
            lines.append(m.line)

        ex = await sb.run_code("print('a'); 6*7", on_stdout=on_stdout)
        ok = ex.text == "42" and lines == ["a\n"]
        RESULTS.append({"check": "AsyncSandbox.run_code with async callback", "ok": ok,
                        "detail": f"{ex.text} {lines}"})
        ctx = await sb.create_code_context(language="python")
        await sb.run_code("z = 5", context=ctx)
        ex = await sb.run_code("z", context=ctx)
        listed = [c.id for c in await sb.list_code_contexts()]
        await sb.restart_code_context(ctx)
        await sb.remove_code_context(ctx)
        after = [c.id for c in await sb.list_code_contexts()]
        ok = ex.text == "5" and ctx.id in listed and ctx.id not in after
        RESULTS.append({"check": "AsyncSandbox contexts", "ok": ok,
                        "detail": f"{ex.text} {ctx.id in listed} {ctx.id in after}"})
    finally:
        await sb.kill()


def main() -> None:
    mode = sys.argv[1]
    if mode == "async":
        asyncio.run(async_checks())
    else:
        {"run": run_checks, "contexts": contexts_checks, "lifecycle": lifecycle_checks,
         "limits": limits_checks}[mode]()
    for r in RESULTS:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
