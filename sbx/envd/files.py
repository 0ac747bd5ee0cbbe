"""``GET /files`` (download) and ``POST /files`` (upload)."""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
import stat
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from . import users
from .auth import files_access_error
from .fsinfo import write_metadata
from .httpd import HttpError, Request, Response
from .multipart import MultipartError, MultipartParser, header_params
from .state import EnvdState

Read = Callable[[], Awaitable[bytes]]

READ_CHUNK = 256 * 1024
PROBE_SIZE = 64 * 1024
# Below this, gzip framing costs more than it saves.
MIN_GZIP_SIZE = 1024
METADATA_HEADER = "x-metadata-"


class FilesError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding makes gzip the best choice (quality-ordered, like E2B)."""
    if not header:
        return False
    choices: list[tuple[float, str]] = []
    for item in header.split(","):
        if not item.strip():
            continue
        name, params = header_params(item)
        q = 1.0
        with contextlib.suppress(ValueError):
            q = float(params.get("q", "1"))
        choices.append((q, name))
    for q, name in sorted(choices, key=lambda c: -c[0]):
        if q <= 0:
            continue
        if name == "gzip":
            return True
        if name in ("identity", "*"):
            return False
    return False


def compressible(fd: int) -> bool:
    """Whether gzip is worth it, judged on the file's first chunk.

    httpx asks for gzip on every request, so without this check every binary
    download would burn CPU for nothing (and run several times slower).
    """
    sample = os.pread(fd, PROBE_SIZE, 0)
    if len(sample) < MIN_GZIP_SIZE:
        return False
    return len(zlib.compress(sample, 1)) < len(sample) * 0.9


class Gunzip:
    """Decompresses a gzip request body as it streams in."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._z = zlib.decompressobj(wbits=31)
        self._done = False

    async def read(self) -> bytes:
        while not self._done:
            chunk = await self._read()
            if not chunk:
                self._done = True
                try:
                    return self._z.flush()
                except zlib.error as e:
                    raise FilesError(400, f"error decompressing request body: {e}") from None
            try:
                out = self._z.decompress(chunk)
            except zlib.error as e:
                raise FilesError(400, f"error decompressing request body: {e}") from None
            if out:
                return out
        return b""


async def write_file(path: str, user: users.User, read: Read) -> None:
    """Stream a body into ``path`` (created with its parents, owned by ``user``)."""
    parent = os.path.dirname(path)
    try:
        users.ensure_dirs(parent, user)
    except OSError as e:
        raise FilesError(500, f"error ensuring directories: {e}") from None
    if os.path.isdir(path):
        raise FilesError(400, f"path is a directory: {path}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise _write_error(e, "error opening file") from None
    try:
        users.chown(path, user)
        while True:
            data = await read()
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    except OSError as e:
        raise _write_error(e, "error writing file") from None
    finally:
        os.close(fd)


def _write_error(e: OSError, what: str) -> FilesError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return FilesError(507, f"not enough disk space available: {e}")
    return FilesError(500, f"{what}: {e}")


class FilesApi:
    def __init__(self, state: EnvdState) -> None:
        self._state = state

    async def handle(self, req: Request, resp: Response) -> None:
        try:
            if req.method in ("GET", "HEAD"):
                await self._download(req, resp)
            elif req.method == "POST":
                await self._upload(req, resp)
            else:
                await resp.send(405, headers=[("Allow", "GET, HEAD, POST")])
        except FilesError as e:
            if resp.started:
                raise HttpError(e.status, e.message) from None
            await resp.send_json(e.status, {"code": e.status, "message": e.message})

    def _user_and_path(self, req: Request, operation: str) -> tuple[users.User, str]:
        denied = files_access_error(self._state, req, operation)
        if denied is not None:
            raise FilesError(401, denied)
        username = req.query.get("username") or None
        try:
            user = users.resolve(username, self._state.default_user, self._state.template_user)
        except users.UnknownUser as e:
            raise FilesError(401, f"error looking up user '{e.args[0]}'") from None
        raw_path = req.query.get("path", "")
        try:
            path = users.expand_path(raw_path, user, self._state.workdir())
        except ValueError as e:
            raise FilesError(400, str(e)) from None
        return user, path

    async def _download(self, req: Request, resp: Response) -> None:
        _, path = self._user_and_path(req, "read")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FilesError(404, f"path '{path}' does not exist") from None
        except OSError as e:
            raise FilesError(500, f"error opening file '{path}': {e}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FilesError(400, f"path '{path}' is a directory")
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            headers = [("Content-Type", ctype), ("Vary", "Accept-Encoding")]
            if accepts_gzip(req.header("accept-encoding")) and compressible(fd):
                await self._send_gzip(resp, fd, headers)
            else:
                await resp.send_file(200, headers, fd, st.st_size)
        finally:
            os.close(fd)

    @staticmethod
    async def _send_gzip(resp: Response, fd: int, headers: list[tuple[str, str]]) -> None:
        # Level 1: most of the size win for a fraction of the CPU of level 6.
        z = zlib.compressobj(1, zlib.DEFLATED, 31)
        resp.start(200, [*headers, ("Content-Encoding", "gzip")])
        while chunk := os.read(fd, READ_CHUNK):
            out = z.compress(chunk)
            if out:
                await resp.write(out)
        await resp.end(z.flush())

    async def _upload(self, req: Request, resp: Response) -> None:
        user, path_param = self._user_and_path(req, "write")
        has_path = bool(req.query.get("path"))
        read: Read = req.body.read
        encoding = req.header("content-encoding").strip().lower()
        if encoding == "gzip":
            read = Gunzip(read).read
        elif encoding not in ("", "identity"):
            raise FilesError(400, f"unsupported Content-Encoding: {encoding}")
        metadata = {
            key[len(METADATA_HEADER) :]: value
            for key, value in req.headers.items()
            if key.startswith(METADATA_HEADER) and len(key) > len(METADATA_HEADER)
        }
        mtype, params = header_params(req.header("content-type"))
        written: list[str] = []
        if mtype == "application/octet-stream":
            if not has_path:
                raise FilesError(400, "path query parameter is required for raw body upload")
            await write_file(path_param, user, read)
            written.append(path_param)
        elif mtype.startswith("multipart/"):
            try:
                parser = MultipartParser(read, params.get("boundary", ""))
                while (part := await parser.next_part()) is not None:
                    if part.name != "file":
                        continue
                    target = path_param if has_path else self._part_path(part.filename, user)
                    if target in written:
                        raise FilesError(
                            400,
                            "you cannot upload multiple files to the same path "
                            f"'{target}' in one upload request",
                        )
                    await write_file(target, user, part.read)
                    written.append(target)
            except MultipartError as e:
                raise FilesError(400, f"error reading form: {e}") from None
        else:
            raise FilesError(
                400,
                f"unsupported content type: {mtype or 'none'}, "
                "expected multipart/form-data or application/octet-stream",
            )
        entries: list[dict[str, Any]] = []
        for target in written:
            entry: dict[str, Any] = {
                "name": os.path.basename(target),
                "type": "file",
                "path": target,
            }
            if metadata:
                try:
                    write_metadata(target, metadata)
                except OSError as e:
                    raise FilesError(500, f"error setting file metadata: {e}") from None
                entry["metadata"] = {k.lower(): v for k, v in metadata.items()}
            entries.append(entry)
        await resp.send_json(200, entries)

    def _part_path(self, filename: str | None, user: users.User) -> str:
        if not filename:
            raise FilesError(400, "file part without a path (filename) and no path parameter")
        try:
            return users.expand_path(filename, user, self._state.workdir())
        except ValueError as e:
            raise FilesError(400, str(e)) from None
