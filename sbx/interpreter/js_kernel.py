"""A Jupyter kernel for JavaScript and TypeScript (``--typescript``): a
wrapper kernel (as bash_kernel is) around one Node.js process running
js_repl.js, which evaluates the cells in one global scope. Run inside the
image as a script; imports nothing of sbx.

Node's own Jupyter kernels need ZeroMQ's native addon, which cannot be
built or fetched here; the wrapper uses ipykernel's ZeroMQ side instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

REPL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js_repl.js")
NODE = os.environ.get("SBX_NODE", "/usr/bin/node")


class _Pipe(threading.Thread):
    """Copies one of node's output streams into stream messages, and tells
    when the marker of a cell's end has passed."""

    def __init__(self, kernel: JSKernel, fileobj: Any, name: str) -> None:
        super().__init__(daemon=True)
        self.kernel, self.fileobj, self.name = kernel, fileobj, name
        self.marker = b""
        self.seen = threading.Event()

    def expect(self, cell_id: int) -> None:
        self.marker = f"\0sbx-end-{cell_id}\0".encode()
        self.seen.clear()

    def run(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.fileobj.fileno(), 65536)
            if not chunk:
                self.seen.set()
                return
            pending += chunk
            while True:
                cut = pending.find(self.marker) if self.marker else -1
                if cut < 0:
                    break
                self._emit(pending[:cut])
                pending = pending[cut + len(self.marker):]
                self.seen.set()
            # Keep what could be the start of a marker for the next read.
            keep = len(self.marker) - 1 if self.marker else 0
            if len(pending) > keep:
                self._emit(pending[:len(pending) - keep] if keep else pending)
                pending = pending[len(pending) - keep:] if keep else b""

    def _emit(self, data: bytes) -> None:
        if data:
            self.kernel.stream(self.name, data.decode(errors="replace"))


class JSKernel(Kernel):  # type: ignore[misc]
    implementation = "sbx-javascript"
    implementation_version = "1"
    banner = "JavaScript (Node.js) for sbx"
    typescript = False
    # The cell being run is silent (the service's own env-setting cells).
    _silent = False

    @property
    def language_info(self) -> dict[str, str]:  # type: ignore[override]
        if self.typescript:
            return {"name": "typescript", "mimetype": "text/typescript",
                    "file_extension": ".ts"}
        return {"name": "javascript", "mimetype": "text/javascript", "file_extension": ".js"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cell = 0
        self._lock = threading.Lock()
        self._start_node()

    def _start_node(self) -> None:
        ours, theirs = socket.socketpair()
        self._node = subprocess.Popen(
            [NODE, REPL], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(3, theirs.fileno()),
            preexec_fn=lambda: os.dup2(theirs.fileno(), 3))
        theirs.close()
        self._control = ours.makefile("rwb", buffering=0)
        self._out = _Pipe(self, self._node.stdout, "stdout")
        self._err = _Pipe(self, self._node.stderr, "stderr")
        self._out.start()
        self._err.start()

    def stream(self, name: str, text: str) -> None:
        if not self._silent:
            self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def do_execute(self, code: str, silent: bool, store_history: bool = True,
                   user_expressions: Any = None, allow_stdin: bool = False,
                   **_: Any) -> dict[str, Any]:
        self._silent = silent
        self._cell += 1
        cell_id = self._cell
        self._out.expect(cell_id)
        self._err.expect(cell_id)
        request = {"id": cell_id, "code": code, "typescript": self.typescript}
        try:
            self._control.write(json.dumps(request).encode() + b"\n")
            line = self._control.readline()
        except KeyboardInterrupt:
            # The interrupt of the cell: node stops its script (breakOnSigint)
            # or the awaited promise, and answers.
            self._node.send_signal(signal.SIGINT)
            line = self._control.readline()
        if not line:
            return self._error(cell_id, "KernelDiedError", "node exited", "")
        self._out.seen.wait(5)
        self._err.seen.wait(5)
        answer = json.loads(line)
        if not answer["ok"]:
            return self._error(cell_id, answer["name"], answer["message"], answer["stack"])
        if answer["value"] is not None and not silent:
            self.send_response(self.iopub_socket, "execute_result", {
                "execution_count": self.execution_count,
                "data": {"text/plain": answer["value"]}, "metadata": {}})
        return {"status": "ok", "execution_count": self.execution_count,
                "payload": [], "user_expressions": {}}

    def _error(self, cell_id: int, name: str, value: str, stack: str) -> dict[str, Any]:
        content = {"ename": name, "evalue": value, "traceback": stack.splitlines() or [value]}
        if not self._silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self._node.kill()
        return {"status": "ok", "restart": restart}


class TSKernel(JSKernel):
    implementation = "sbx-typescript"
    typescript = True


if __name__ == "__main__":
    typescript = "--typescript" in sys.argv
    if typescript:
        sys.argv.remove("--typescript")
    IPKernelApp.launch_instance(kernel_class=TSKernel if typescript else JSKernel)
