"""Running host commands without blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


class CommandError(Exception):
    def __init__(self, argv: tuple[str, ...], code: int, stderr: str) -> None:
        super().__init__(f"{argv[0]} exited {code}: {stderr.strip()[:500]}")
        self.argv = argv
        self.code = code
        self.stderr = stderr


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


async def run(
    *argv: str,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 60.0,
    stdout_path: str | None = None,
) -> Result:
    """Run argv, wait for it, return its output. stdout_path sends stdout and
    stderr of the child to a file instead (for daemons that keep their stdio)."""
    data = input.encode() if isinstance(input, str) else input
    out_fd: int | None = None
    if stdout_path is not None:
        out_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
            stdout=out_fd if out_fd is not None else asyncio.subprocess.PIPE,
            stderr=out_fd if out_fd is not None else asyncio.subprocess.PIPE,
        )
    finally:
        if out_fd is not None:
            os.close(out_fd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(argv, -9, f"timed out after {timeout}s") from None
    result = Result(
        proc.returncode if proc.returncode is not None else -1,
        (out or b"").decode(errors="replace"),
        (err or b"").decode(errors="replace"),
    )
    if check and result.code != 0:
        detail = result.stderr or result.stdout
        if stdout_path is not None:
            with open(stdout_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
                detail = f.read().decode(errors="replace")
        raise CommandError(argv, result.code, detail)
    return result
