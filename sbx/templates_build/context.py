"""The build context of custom templates: the directory a Dockerfile's COPY
and ADD read from, and the code that writes what they copy into the image.

The client packs its directory (`pack`: a deterministic tar.gz honouring
.dockerignore); the server unpacks the upload into a private directory
(`extract`) and wraps it in a `BuildContext`, which expands COPY sources
(`expand`), keys the layer cache on their content (`digests`) and, with
`copy_into`, copies them into the root filesystem of the image being built.

Security model. Two inputs are untrusted: the uploaded archive, and the
image itself (its files come from earlier RUN steps, that is from the
user's code). Anything doubtful is refused, never repaired:

- An archive member may only be a regular file, a directory, a symlink or a
  hardlink below the destination. Absolute names, names whose `..` leave the
  root, devices, fifos, sparse files and unknown types are refused: a device
  node would hand host hardware to the build, and a name outside the root is
  a write anywhere on the host.
- Nothing is written through a symlink (`x -> /etc` then `x/passwd` would
  overwrite the host's file): every parent of a member must be a directory
  of the archive itself, and files are created with O_EXCL | O_NOFOLLOW. A
  name may appear once (a directory may be repeated).
- A symlink's target must be relative and stay inside the context when
  resolved as the kernel would, through the archive's other symlinks
  (`a -> .` then `b -> a/../..` escapes although neither looks like it
  does). The check runs on the final tree, as a later member changes what an
  earlier link resolves to. An absolute target would point into the host on
  the server. A hardlink may only name a regular file extracted before it.
- The decompressed stream is counted as it is read, against the byte limit,
  and members against the file limit, so a gzip bomb stops at the limit
  instead of filling the disk. Any refusal removes the whole destination.
- Reading the context (expand, digest, copy) never follows a symlink: a
  symlink is matched, hashed and copied as a symlink, and a source path
  through a symlink is refused.
- Writes into the image resolve their destination with `resolve_in_root`,
  which follows the image's symlinks as the container would see them (an
  absolute target is relative to the image root, `..` stops there), so a
  link planted by a RUN step cannot send a write to the host; the writes
  then go through directory descriptors opened with O_NOFOLLOW. The
  /etc/passwd and /etc/group that --chown reads are the image's, found the
  same way, never the host's.
- ADD unpacks a local tar archive with the rules of `extract`, into a
  private staging directory, and copies the result like a directory.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_FILES = 100_000
# Linux's own limit (MAXSYMLINKS): a chain longer than this is a loop to it too.
MAX_SYMLINK_HOPS = 40

_CHUNK = 1 << 20
_MAX_ID = 0xFFFF_FFFE  # (uid_t)-1 means "unchanged" to chown
_MAX_DB_BYTES = 16 << 20  # /etc/passwd or /etc/group of the image
_MAX_HEADER_BYTES = 1 << 20  # the headers of one archive member
_MAX_LINK_STEPS = 10_000_000  # path components walked checking an archive's symlinks
_PATH_MAX, _NAME_MAX = 4095, 255  # Linux's, in bytes
_GZIP, _BZIP2, _XZ = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_REFUSED_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class ContextError(ValueError):
    """A build context (or a COPY/ADD of it) that is refused; the message
    names the offending path and is meant for the API user."""


# -- patterns (Go's filepath.Match, Docker's .dockerignore) -------------------------


class _BadPattern(ValueError):
    pass


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    """Go's getEsc: one (possibly escaped) character of a class at
    pattern[i], and the index after it; the class must go on after it."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        raise _BadPattern(pattern)
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            raise _BadPattern(pattern)
    if i + 1 >= n:  # the class is never closed
        raise _BadPattern(pattern)
    return pattern[i], i + 1


def _parse_class(pattern: str, i: int) -> tuple[bool, list[tuple[str, str]], int]:
    """The class opening at pattern[i] ('['): (negated, ranges, index after
    its ']'). Go's syntax: '^' negates, ranges lo-hi, '\\' escapes, and a
    class may not be empty."""
    i += 1
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(pattern) and pattern[i] == "]" and ranges:
            return negated, ranges, i + 1
        lo, i = _class_char(pattern, i)
        hi = lo
        if pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
        ranges.append((lo, hi))


def _translate(pattern: str, *, doublestar: bool) -> str:
    """A regular expression for `pattern` matched against a whole
    slash-separated path; raises _BadPattern where Go's filepath.Match
    would. With `doublestar` (.dockerignore), `**` is Docker's: any number
    of directories (`**/` included), or anything at all at the end."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if doublestar and i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            negated, ranges, i = _parse_class(pattern, i - 1)
            body = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in ranges
                if lo <= hi  # Go accepts an inverted range, which matches nothing
            )
            if negated:
                out.append(f"[^/{body}]")
            else:
                out.append(f"(?!/)[{body}]" if body else "(?!)")
        elif c == "\\":
            if i >= n:
                raise _BadPattern(pattern)
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _has_meta(text: str) -> bool:
    return any(c in "*?[\\" for c in text)


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    """Go's scanChunk: (leading star, the chunk up to the next star, rest)."""
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "*" and not in_class:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _match_chunk(chunk: str, name: str) -> str | None:
    """Go's matchChunk on a validated pattern: what is left of `name` after
    `chunk` matched its start, or None."""
    i = 0
    while i < len(chunk):
        if not name:
            return None
        c = chunk[i]
        if c == "[":
            negated, ranges, i = _parse_class(chunk, i)
            inside = any(lo <= name[0] <= hi for lo, hi in ranges)
            if inside == negated:
                return None
        elif c == "?":
            i += 1
        else:
            if c == "\\":
                i += 1
            if chunk[i] != name[0]:
                return None
            i += 1
        name = name[1:]
    return name


def _go_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match for one path component. Go's algorithm rather
    than a regular expression: it is linear per star, where a backtracking
    regex of a hostile pattern would hang the builder."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return True  # a trailing star takes the rest (a component has no '/')
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if not star:
            return False
        for skip in range(1, len(name) + 1):
            rest = _match_chunk(chunk, name[skip:])
            if rest is not None and (not rest or pattern):
                name = rest
                break
        else:
            return False
    return not name


def _go_clean(path: str) -> str:
    """Go's filepath.Clean (posixpath keeps a leading '//', Go does not)."""
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


@dataclass(frozen=True)
class _IgnoreRule:
    regex: re.Pattern[str]
    exclusion: bool  # a '!' line: re-include what matches


class _Ignore:
    """A .dockerignore, with the rules of Docker's patternmatcher: a path is
    ignored when it or one of its parent directories matches a pattern, the
    last matching line winning ('!' lines re-include)."""

    def __init__(self, rules: list[_IgnoreRule]) -> None:
        self.rules = rules
        self.has_exclusions = any(rule.exclusion for rule in rules)

    @classmethod
    def parse(cls, text: str) -> Self:
        rules: list[_IgnoreRule] = []
        for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
            line = raw.removesuffix("\r")
            if line.startswith("#"):  # only in the first column, as Docker does
                continue
            pattern = line.strip()
            if not pattern:
                continue
            exclusion = pattern.startswith("!")
            if exclusion:
                pattern = pattern[1:].strip()
                if not pattern:
                    raise ContextError(f".dockerignore line {number}: '!' needs a pattern")
            pattern = _go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
            try:
                regex = re.compile(_translate(pattern, doublestar=True), re.DOTALL)
            except _BadPattern:
                raise ContextError(
                    f".dockerignore line {number}: invalid pattern {line.strip()!r}") from None
            rules.append(_IgnoreRule(regex, exclusion))
        return cls(rules)

    @classmethod
    def read(cls, directory: Path) -> Self:
        path = directory / ".dockerignore"
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except (FileNotFoundError, IsADirectoryError):
            return cls([])
        except OSError as e:
            raise ContextError(f"cannot read {path}: {e.strerror}") from None
        return cls.parse(text)

    def ignored(self, rel: str) -> bool:
        parent = posixpath.dirname(rel)
        ancestors: list[str] = []
        if parent:
            parts = parent.split("/")
            ancestors = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = False
        for rule in self.rules:
            # An inclusion cannot change an ignored path, nor an exclusion a kept one.
            if rule.exclusion != matched:
                continue
            if rule.regex.fullmatch(rel) or any(rule.regex.fullmatch(a) for a in ancestors):
                matched = not rule.exclusion
        return matched


# -- the archive's tree (what the checks reason about instead of the disk) ----------


@dataclass(slots=True)
class _Node:
    kind: str  # "dir", "file" or "symlink"
    target: str = ""  # of a symlink
    children: dict[str, _Node] = field(default_factory=dict)  # of a directory


def _check_target(label: str, name: str, target: str) -> None:
    if not target:
        raise ContextError(f"{label} {name!r} is a symlink with an empty target")
    if target.startswith("/"):
        raise ContextError(
            f"{label} {name!r} is a symlink to the absolute path {target!r}: only relative "
            "links that stay inside the build context are allowed")
    if len(os.fsencode(target)) > _PATH_MAX:
        raise ContextError(
            f"{label} {name!r} is a symlink whose target is too long for Linux "
            f"(more than {_PATH_MAX} bytes)")


class _Tree:
    """The entries written so far, by normalised name and as a tree. Every
    entry's ancestors are directories of the tree (add() refuses anything
    else), so checking an entry's parent is enough."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.root = _Node("dir")
        self.nodes: dict[str, _Node] = {"": self.root}

    def add(self, name: str, kind: str, target: str = "") -> list[str]:
        """Register `name` (normalised, relative); returns its ancestors
        that do not exist yet, shallowest first, to create as directories."""
        if kind == "symlink":
            _check_target(self.label, name, target)
        missing: list[str] = []
        parent = name.rpartition("/")[0]
        while (node := self.nodes.get(parent)) is None:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        if node.kind == "symlink":
            raise ContextError(
                f"{self.label} {name!r} is below the symlink {parent!r}: "
                "nothing is written through a symlink")
        if node.kind != "dir":
            raise ContextError(f"{self.label} {name!r}: {parent!r} is not a directory")
        existing = self.nodes.get(name)
        if existing is not None:
            if kind == "dir" and existing.kind == "dir":
                return []
            raise ContextError(f"{self.label} {name!r} appears twice")
        missing.reverse()
        for ancestor in missing:
            self._insert(ancestor, _Node("dir"))
        self._insert(name, _Node(kind, target))
        return missing

    def _insert(self, name: str, node: _Node) -> None:
        parent, _, base = name.rpartition("/")
        self.nodes[parent].children[base] = node
        self.nodes[name] = node

    def check_links(self) -> None:
        budget = [_MAX_LINK_STEPS]
        for name, node in self.nodes.items():
            if node.kind == "symlink":
                self._check_link(name, node.target, budget)

    def _check_link(self, name: str, target: str, budget: list[int]) -> None:
        """Resolve `target` from the link's directory as the kernel would,
        expanding the tree's symlinks. A name the tree lacks is taken as a
        directory (a later build step could create one there): None in
        `where`. `budget` caps the steps over all links, as hostile chains
        of long targets could otherwise keep the server busy."""
        pending = target.split("/")[::-1]
        where: list[_Node | None] = [self.root]  # the nodes from the root down
        for part in name.split("/")[:-1]:
            parent = where[-1]
            where.append(parent.children.get(part) if parent is not None else None)
        budget[0] -= len(where)
        hops = 1  # the link itself, as the kernel counts
        while pending:
            budget[0] -= 1
            if budget[0] < 0:
                raise ContextError(f"{self.label}s: too many symlinks to check")
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(where) == 1:
                    raise ContextError(
                        f"{self.label} {name!r} is a symlink to {target!r}, "
                        "which points outside the build context")
                where.pop()
                continue
            top = where[-1]
            node = top.children.get(part) if top is not None else None
            if node is not None and node.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ContextError(
                        f"{self.label} {name!r}: too many levels of symbolic links (a loop)")
                _check_target(self.label, name, node.target)
                pending.extend(node.target.split("/")[::-1])
                continue
            where.append(node)


# -- pack (client side) -------------------------------------------------------------


class _Overflow(Exception):
    pass


class _Sink(io.RawIOBase):
    """Counts the uncompressed tar stream on its way into gzip, so that the
    client refuses what the server's limit would."""

    def __init__(self, target: gzip.GzipFile, limit: int) -> None:
        super().__init__()
        self._target = target
        self._limit = limit
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        n = memoryview(data).nbytes
        self.count += n
        if self.count > self._limit:
            raise _Overflow
        self._target.write(data)
        return n


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _listing(root: Path, rel: str) -> list[tuple[str, os.stat_result]]:
    path = root / rel if rel else root
    try:
        with os.scandir(path) as entries:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
    except OSError as e:
        raise ContextError(f"cannot read {path}: {e.strerror}") from None
    found.sort(key=lambda item: os.fsencode(item[0]))
    return [(f"{rel}/{name}" if rel else name, st) for name, st in found]


def _walk(root: Path, ignore: _Ignore) -> Iterator[tuple[str, os.stat_result]]:
    """The entries to pack, depth first in byte order of names; sockets,
    fifos and devices are left out."""
    stack = [iter(_listing(root, ""))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        rel, st = item
        ignored = ignore.ignored(rel)
        if stat.S_ISDIR(st.st_mode):
            # Only a '!' line can bring back something below an ignored directory.
            if ignored and not ignore.has_exclusions:
                continue
            if not ignored:
                yield rel, st
            stack.append(iter(_listing(root, rel)))
        elif (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and not ignored:
            yield rel, st


def pack(directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The directory as a gzip'd tar for upload: deterministic (byte-ordered
    entries, owner 0:0 without names, permission bits and whole-second mtimes
    kept, gzip header without time or name), .dockerignore applied, symlinks
    packed as symlinks, special files left out. Refused (ContextError): a
    symlink the server would refuse, more than `max_bytes` of tar stream."""
    root = Path(directory)
    if not root.is_dir():
        raise ContextError(f"the build context {str(root)!r} is not a directory")
    ignore = _Ignore.read(root)
    tree = _Tree("build context path")
    out = io.BytesIO()
    current = ""
    estimate = 0  # lets a large file be refused before it is read
    try:
        with (
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as compressed,
            io.BufferedWriter(_Sink(compressed, max_bytes), _CHUNK) as buffered,
            tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel, st in _walk(root, ignore):
                current = rel
                info = tarfile.TarInfo(rel)
                info.mode = stat.S_IMODE(st.st_mode) & 0o777
                info.mtime = int(st.st_mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                path = root / rel
                estimate += tarfile.BLOCKSIZE
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tree.add(rel, "dir")
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(path)
                    tree.add(rel, "symlink", info.linkname)
                    tar.addfile(info)
                else:
                    info.type = tarfile.REGTYPE
                    info.size = st.st_size
                    estimate += -(-st.st_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    if estimate > max_bytes:
                        raise _Overflow
                    tree.add(rel, "file")
                    try:
                        with open(path, "rb", opener=_nofollow) as f:
                            tar.addfile(info, f)
                    except OSError as e:
                        raise ContextError(f"cannot read {rel!r}: {e.strerror or e}") from None
            tree.check_links()
    except _Overflow:
        raise ContextError(
            f"the build context is larger than {max_bytes} bytes (reached at {current!r}); "
            "list what the build does not need in .dockerignore") from None
    return out.getvalue()


# -- extract (server side) ----------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _decompressing(raw: BinaryIO) -> _Readable:
    """`raw` (seekable), decompressed by its magic number, as Docker does."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(_GZIP):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(_BZIP2):
        return bz2.BZ2File(raw)
    if magic.startswith(_XZ):
        return lzma.LZMAFile(raw)
    return raw


class _Bounded(io.RawIOBase):
    """The decompressed stream, counted as it is read: the limit holds
    whatever the headers claim, and a bomb stops at it. Unbuffered: tarfile
    reads it in 10 KiB records, which keeps `header_budget` exact enough."""

    def __init__(self, source: _Readable, limit: int) -> None:
        super().__init__()
        self._source = source
        self._limit = limit
        self.count = 0
        # While tarfile parses a member's headers (pax records, long names,
        # sparse maps, which it holds in memory, several times their size),
        # what it may read; None while it reads file contents.
        self.header_budget: int | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._source.read(size if size >= 0 else _CHUNK)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ContextError(f"the archive is corrupt: {e}") from None
        self.count += len(data)
        if self.count > self._limit:
            raise ContextError(
                f"the build context is larger than {self._limit} bytes uncompressed")
        if self.header_budget is not None:
            self.header_budget -= len(data)
            if self.header_budget < 0:
                raise ContextError(
                    f"archive member headers larger than {_MAX_HEADER_BYTES} bytes")
        return data


def _strict_tarinfo(reader: _Bounded) -> type[tarfile.TarInfo]:
    """The TarInfo class tarfile parses `reader`'s headers with."""

    class Strict(tarfile.TarInfo):
        depth = 0  # fromtarfile calls itself for the header after a pax one

        @classmethod
        def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
            if cls.depth == 0:
                reader.header_budget = _MAX_HEADER_BYTES
            cls.depth += 1
            try:
                return super().fromtarfile(archive)
            finally:
                cls.depth -= 1
                if cls.depth == 0:
                    reader.header_budget = None

        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            # tarfile takes a damaged header after the first member for the
            # end of the archive and returns what came before: an error here.
            # Only a block of zeros or the end of the data ends the archive.
            if buf and buf != tarfile.NUL * tarfile.BLOCKSIZE:
                try:
                    return super().frombuf(buf, encoding, errors)
                except tarfile.HeaderError as e:
                    raise ContextError(f"the archive is corrupt: {e}") from None
            return super().frombuf(buf, encoding, errors)

    return Strict


def _member_name(raw: str) -> str:
    """The normalised relative name of a member ("" for the root itself)."""
    if not raw:
        raise ContextError("archive member with an empty name")
    if raw.startswith("/"):
        raise ContextError(f"archive member {raw!r} has an absolute path")
    name = posixpath.normpath(raw)
    if name == ".." or name.startswith("../"):
        raise ContextError(f"archive member {raw!r} is outside the build context")
    encoded = os.fsencode(name)
    if len(encoded) > _PATH_MAX or any(len(c) > _NAME_MAX for c in encoded.split(b"/")):
        raise ContextError(f"archive member {raw[:100]!r}...: name too long for Linux")
    return "" if name == "." else name


def _mtime(value: float) -> int:
    return max(0, min(int(value), 1 << 33))


class _Extractor:
    def __init__(self, dest: Path, max_bytes: int, max_files: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.tree = _Tree("archive member")
        # Directories get their final mode and mtime once all is written:
        # a read-only one must still be filled, and writing in one changes
        # its mtime. None: created implicitly (0755, mtime left as is).
        self.dirs: dict[str, tuple[int, int | None]] = {}
        self.entries = 0
        self.written = 0
        self.as_root = os.geteuid() == 0

    def run(self, raw: BinaryIO) -> None:
        reader = _Bounded(_decompressing(raw), self.max_bytes)
        try:
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=_strict_tarinfo(reader)) as tar:
                while (member := tar.next()) is not None:
                    self._member(tar, member)
            # Read to the end: only there does gzip check its CRC, so a
            # damaged or cut upload is not taken for a shorter context.
            while reader.read(_CHUNK):
                pass
        except ContextError:
            raise
        except (tarfile.TarError, ValueError, EOFError) as e:
            # ValueError: tarfile's parsing of some malformed extended
            # headers (a sparse map cut short) fails with a bare one.
            raise ContextError(f"the archive is corrupt: {e}") from None
        self.tree.check_links()
        for name in sorted(self.dirs, key=lambda n: n.count("/"), reverse=True):
            mode, mtime = self.dirs[name]
            path = self._path(name)
            os.chmod(path, mode)
            if mtime is not None:
                os.utime(path, (mtime, mtime))

    def _path(self, name: str) -> str:
        return os.path.join(self.dest, name)

    def _own(self, path: str) -> None:
        # A non-root server cannot chown; what it creates is its own anyway.
        if self.as_root:
            os.chown(path, 0, 0, follow_symlinks=False)

    def _count(self, entries: int) -> None:
        # Directories a member implies count too: they are inodes all the same.
        self.entries += entries
        if self.entries > self.max_files:
            raise ContextError(f"the archive has more than {self.max_files} entries")

    def _parents(self, missing: list[str]) -> None:
        self._count(len(missing))
        for name in missing:
            os.mkdir(self._path(name), 0o700)
            self._own(self._path(name))
            self.dirs[name] = (0o755, None)

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self._count(1)
        raw = member.name
        name = _member_name(raw)
        kind = member.type
        if kind == tarfile.DIRTYPE:
            if name:  # the root's own entry ("./") leaves the root as it is
                fresh = name not in self.tree.nodes
                self._parents(self.tree.add(name, "dir"))
                if fresh:
                    os.mkdir(self._path(name), 0o700)
                    self._own(self._path(name))
                self.dirs[name] = (member.mode & 0o777, _mtime(member.mtime))
            return
        if not name:
            raise ContextError(f"archive member {raw!r} is the root but not a directory")
        if member.sparse is not None:  # a pax-format sparse file: holes to expand
            kind = tarfile.GNUTYPE_SPARSE
        if kind in _FILE_TYPES:
            self._file(tar, member, name)
        elif kind == tarfile.SYMTYPE:
            self._parents(self.tree.add(name, "symlink", member.linkname))
            path = self._path(name)
            os.symlink(member.linkname, path)
            self._own(path)
            mtime = _mtime(member.mtime)
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        elif kind == tarfile.LNKTYPE:
            self._hardlink(member, name)
        else:
            what = _REFUSED_TYPES.get(kind, f"of unsupported type {kind!r}")
            raise ContextError(
                f"archive member {raw!r} is {what}: only files, directories and links are allowed")

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if self.written + member.size > self.max_bytes:
            raise ContextError(
                f"archive member {member.name!r}: the build context is larger than "
                f"{self.max_bytes} bytes uncompressed")
        self._parents(self.tree.add(name, "file"))
        source = tar.extractfile(member)
        if source is None:  # tarfile returns None for non-regular members only
            raise ContextError(f"archive member {member.name!r} has no content")
        fd = os.open(self._path(name), _NEW_FILE, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
            out.flush()
            if out.tell() != member.size:
                raise ContextError(f"archive member {member.name!r} is truncated")
            os.fchmod(fd, member.mode & 0o777)
            if self.as_root:
                os.fchown(fd, 0, 0)
            mtime = _mtime(member.mtime)
            os.utime(fd, (mtime, mtime))
        self.written += member.size

    def _hardlink(self, member: tarfile.TarInfo, name: str) -> None:
        raw = member.linkname
        if raw.startswith("/"):
            raise ContextError(
                f"archive member {member.name!r} is a hardlink to the absolute path {raw!r}")
        target = posixpath.normpath(raw) if raw else ""
        node = self.tree.nodes.get(target)
        if node is None or node.kind != "file":
            raise ContextError(
                f"archive member {member.name!r} is a hardlink to {raw!r}, which is not a "
                "regular file extracted before it")
        self._parents(self.tree.add(name, "file"))
        os.link(self._path(target), self._path(name), follow_symlinks=False)


def _prepare_dest(dest: Path) -> None:
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(dest)
        os.chmod(dest, 0o755)  # whatever the umask: the root's mode is in digest(".")
        return
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(dest) as entries:
            if next(entries, None) is None:
                return
    raise FileExistsError(errno.EEXIST, "not an empty directory", str(dest))


def _extract_into(raw: BinaryIO, dest: Path, max_bytes: int, max_files: int) -> None:
    _prepare_dest(dest)
    try:
        _Extractor(dest, max_bytes, max_files).run(raw)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def extract(
    data: bytes,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> BuildContext:
    """Unpack an uploaded context (tar, or tar compressed with gzip, bzip2 or
    xz) into `dest`, which must be absent or an empty directory. Anything
    refused (see the module docstring) raises ContextError and removes
    `dest`. Files are owned by root (when running as root) and keep their
    permission bits without setuid, setgid and sticky."""
    _extract_into(io.BytesIO(data), Path(dest), max_bytes, max_files)
    return BuildContext(Path(dest))


# -- the extracted context ----------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", opener=_nofollow) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class BuildContext:
    root: Path

    def _path(self, rel: str) -> Path:
        """The context path `rel`, whose parents must all be directories
        (never symlinks); the path itself may be a symlink."""
        norm = posixpath.normpath(rel)
        if norm == ".":
            return self.root
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ContextError(f"{rel!r} is outside the build context")
        parts = norm.split("/")
        path = self.root
        for i, part in enumerate(parts):
            path = path / part
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise ContextError(f"{rel!r} is not in the build context") from None
            if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                raise ContextError(
                    f"{rel!r}: {'/'.join(parts[: i + 1])!r} in the build context is not a "
                    "directory (symlinks in the build context are copied, not followed)")
        return path

    def expand(self, source: str, line: int) -> list[str]:
        """The context paths (relative, sorted) a COPY/ADD source matches:
        Go filepath.Match wildcards per component; "." is the whole context.
        Symlinks are matched as themselves, never followed."""
        norm = posixpath.normpath(source)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ContextError(f"line {line}: source {source!r} is outside the build context")
        if norm == ".":
            return ["."]
        parts = norm.split("/")
        try:
            for part in parts:
                _translate(part, doublestar=False)
        except _BadPattern:
            raise ContextError(f"line {line}: source {source!r} is not a valid pattern") from None
        current = [""]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            found: list[str] = []
            for base in current:
                base_path = self.root / base if base else self.root
                if not _has_meta(part):
                    rel = f"{base}/{part}" if base else part
                    try:
                        st = os.lstat(self.root / rel)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    if not last and stat.S_ISLNK(st.st_mode):
                        raise ContextError(
                            f"line {line}: source {source!r} goes through the symlink {rel!r} "
                            "(symlinks in the build context are copied, not followed)")
                    if last or stat.S_ISDIR(st.st_mode):
                        found.append(rel)
                    continue
                try:
                    with os.scandir(base_path) as entries:
                        for entry in entries:
                            if _go_match(part, entry.name) and (
                                last or entry.is_dir(follow_symlinks=False)
                            ):
                                found.append(f"{base}/{entry.name}" if base else entry.name)
                except (FileNotFoundError, NotADirectoryError):
                    continue
            current = found
        if not current:
            raise ContextError(
                f"line {line}: source {source!r} matches nothing in the build context")
        return sorted(set(current), key=os.fsencode)

    def digest(self, path: str) -> str:
        """SHA-256 of a context path's content: a file's bytes and
        permission bits, a symlink's target, a directory's whole tree
        (relative names, types, modes, contents). Timestamps and owners do
        not count."""
        h = hashlib.sha256(b"sbx-build-context/v1\0")
        stack: list[tuple[str, Path]] = [("", self._path(path))]
        while stack:
            rel, full = stack.pop()
            st = os.lstat(full)
            name = os.fsencode(rel)
            mode = f"{stat.S_IMODE(st.st_mode) & 0o777:o}".encode()
            if stat.S_ISDIR(st.st_mode):
                h.update(b"d\0" + name + b"\0" + mode + b"\0")
                with os.scandir(full) as entries:
                    names = sorted((e.name for e in entries), key=os.fsencode, reverse=True)
                stack.extend((f"{rel}/{n}" if rel else n, full / n) for n in names)
            elif stat.S_ISREG(st.st_mode):
                content = _sha256_file(full).encode()
                h.update(b"f\0" + name + b"\0" + mode + b"\0" + content + b"\0")
            elif stat.S_ISLNK(st.st_mode):
                h.update(b"l\0" + name + b"\0" + os.fsencode(os.readlink(full)) + b"\0")
            else:
                raise ContextError(
                    f"{path!r}: {rel or path!r} is not a file, directory or symlink")
        return h.hexdigest()

    def digests(self, sources: Iterable[str], line: int) -> dict[str, str]:
        """For each source as written (a wildcard too), a digest over the
        paths it expands to and their content: `context_digests` for
        dockerfile.cache_keys."""
        out: dict[str, str] = {}
        for source in sources:
            h = hashlib.sha256(b"sbx-build-context-source/v1\0")
            for rel in self.expand(source, line):
                h.update(os.fsencode(rel) + b"\0" + self.digest(rel).encode() + b"\0")
            out[source] = h.hexdigest()
        return out


# -- the image's root filesystem ----------------------------------------------------


def _resolve_parts(root: Path, path: str, *, follow_last: bool) -> list[str]:
    """The components, below root, that `path` designates in the image. Every
    existing component is a real directory (or the last, unfollowed link);
    the first missing one and what follows are taken literally."""
    pending = path.split("/")[::-1]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        last = not pending  # a trailing "/" or "/." follows the link, as in POSIX
        if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise ContextError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved.clear()
            pending.extend(target.split("/")[::-1])
            continue
        resolved.append(part)
    return resolved


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of the image path `path` in the root filesystem `root`,
    following the image's symlinks as if root were "/": an absolute target
    restarts at root, `..` never goes above it, more than 40 links is a
    ContextError. The result is always under root, and free of symlinks but
    for its last component when follow_last is False."""
    return Path(root).joinpath(*_resolve_parts(Path(root), path, follow_last=follow_last))


def _numeric(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    if value > _MAX_ID:
        raise ContextError(f"id {text} is out of range")
    return value


def _field_id(text: str) -> int | None:
    """An id field of the image's databases; a bad one just does not match."""
    try:
        return _numeric(text)
    except ContextError:
        return None


def _database(root: Path, path: str) -> list[list[str]]:
    """The colon-separated rows of the image's `path`; none when it is
    missing or not a regular file."""
    try:
        # O_NONBLOCK: a fifo planted at /etc/passwd must not hang the builder.
        fd = os.open(resolve_in_root(root, path), _READ | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = f.read(_MAX_DB_BYTES + 1)
    if len(data) > _MAX_DB_BYTES:
        raise ContextError(f"{path} in the image is larger than {_MAX_DB_BYTES} bytes")
    text = data.decode("utf-8", "surrogateescape")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def owner(root: Path, spec: str | None) -> tuple[int, int]:
    """(uid, gid) of a --chown `user[:group]` (names or numeric ids), names
    looked up in the image's /etc/passwd and /etc/group. None is root. A
    user without a group gets the user's primary group; a numeric uid the
    image does not list gets gid = uid, as Docker documents."""
    if spec is None:
        return 0, 0
    user, colon, group = spec.partition(":")
    if not user or (colon and not group):
        raise ContextError(f"invalid user[:group] {spec!r}")
    users = [
        (row[0], uid, gid)
        for row in _database(root, "/etc/passwd")
        if len(row) >= 4
        and (uid := _field_id(row[2])) is not None
        and (gid := _field_id(row[3])) is not None
    ]
    uid = _numeric(user)
    if uid is not None:
        primary = next((g for _, u, g in users if u == uid), uid)
    else:
        entry = next(((u, g) for name, u, g in users if name == user), None)
        if entry is None:
            raise ContextError(f"unknown user {user!r}: not in the image's /etc/passwd")
        uid, primary = entry
    if not colon:
        return uid, primary
    gid = _numeric(group)
    if gid is None:
        gid = next(
            (
                g
                for row in _database(root, "/etc/group")
                if len(row) >= 3 and row[0] == group and (g := _field_id(row[2])) is not None
            ),
            None,
        )
        if gid is None:
            raise ContextError(f"unknown group {group!r}: not in the image's /etc/group")
    return uid, gid


def _image_path(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


def _copy_fd(source: int, target: int) -> None:
    offset = 0
    try:
        while sent := os.sendfile(target, source, offset, 1 << 30):
            offset += sent
    except OSError as e:
        if offset or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        with (
            os.fdopen(source, "rb", closefd=False) as src,
            os.fdopen(target, "wb", closefd=False) as dst,
        ):
            shutil.copyfileobj(src, dst, _CHUNK)


class _ImageWriter:
    """Writes into the image under `root`. Destinations are resolved with
    _resolve_parts; directories are then opened component by component with
    O_NOFOLLOW from a descriptor of root, so a symlink can only ever be
    followed by the resolution, which keeps it inside root."""

    def __init__(self, root: Path, uid: int, gid: int, prefix: str) -> None:
        self.root = Path(root)
        self.uid, self.gid = uid, gid
        self.prefix = prefix  # "line N: COPY", for messages
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def resolve(self, image_path: str) -> list[str]:
        return _resolve_parts(self.root, image_path, follow_last=True)

    def is_dir(self, parts: Sequence[str]) -> bool:
        try:
            st = os.lstat(os.path.join(self.root, *parts))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISDIR(st.st_mode)

    def _mkdir(self, dir_fd: int, name: str, mode: int, uid: int, gid: int) -> int:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        return fd

    def open_dir(self, parts: Sequence[str], *, mode: int = 0o755, owned: bool = False) -> int:
        """A descriptor of the directory at the resolved `parts`, created
        with its missing parents (root's, 0755); the last one, if created,
        gets `mode` and, when `owned`, the --chown owner."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    uid, gid = (self.uid, self.gid) if last and owned else (0, 0)
                    child = self._mkdir(fd, part, mode if last else 0o755, uid, gid)
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    raise ContextError(
                        f"{self.prefix}: {_image_path(parts[: i + 1])} in the image is not a "
                        "directory") from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _clear(self, dir_fd: int, parts: Sequence[str], name: str) -> None:
        """Make room for a file or symlink: replace what is there (a new
        inode, so that a hardlink elsewhere in the image is not changed)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ContextError(
                f"{self.prefix}: cannot replace the directory {_image_path([*parts, name])} "
                "with a file")
        os.unlink(name, dir_fd=dir_fd)

    def write(self, dir_fd: int, parts: Sequence[str], name: str, source: Path) -> None:
        """Copy the context file or symlink `source` to `name` in dir_fd."""
        st = os.lstat(source)
        self._clear(dir_fd, parts, name)
        times = (st.st_atime_ns, st.st_mtime_ns)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), name, dir_fd=dir_fd)
            os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
            return
        if not stat.S_ISREG(st.st_mode):
            raise ContextError(f"{self.prefix}: {source.name!r} is not a file or symlink")
        src = os.open(source, _READ)
        try:
            out = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
            try:
                _copy_fd(src, out)
                os.fchown(out, self.uid, self.gid)
                os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
                os.utime(out, ns=times)
            finally:
                os.close(out)
        finally:
            os.close(src)

    def _child_dir(self, dir_fd: int, parts: list[str], name: str, mode: int) -> list[str]:
        """The resolved parts of directory `name` in `parts`, created (owned,
        `mode`) when missing, followed (inside root) when it is a symlink."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(self._mkdir(dir_fd, name, mode, self.uid, self.gid))
            return [*parts, name]
        if stat.S_ISDIR(st.st_mode):
            return [*parts, name]
        if stat.S_ISLNK(st.st_mode):
            real = self.resolve(_image_path([*parts, name]))
            os.close(self.open_dir(real, mode=mode, owned=True))
            return real
        raise ContextError(
            f"{self.prefix}: cannot copy a directory onto {_image_path([*parts, name])}, "
            "which is not a directory")

    def copy_tree(self, source: Path, dest: str, mode: int) -> None:
        """The contents of the directory `source` into the image directory
        `dest` (created, owned, with `mode`, when missing)."""
        top = self.resolve(dest)
        os.close(self.open_dir(top, mode=mode, owned=True))
        stack: list[tuple[Path, list[str]]] = [(source, top)]
        while stack:
            directory, parts = stack.pop()
            dir_fd = self.open_dir(parts)
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: os.fsencode(e.name))
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child_mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                        child = self._child_dir(dir_fd, parts, entry.name, child_mode & 0o777)
                        stack.append((Path(entry.path), child))
                    else:
                        self.write(dir_fd, parts, entry.name, Path(entry.path))
            finally:
                os.close(dir_fd)

    def copy_one(self, source: Path, dest: str, into_dir: bool) -> None:
        """A file or symlink to `dest`: into it when it ends with '/' or is
        an existing directory, else as it (a symlink there is followed)."""
        parts = self.resolve(dest)
        if into_dir or not parts or self.is_dir(parts):
            parent, name = parts, source.name
        else:
            parent, name = parts[:-1], parts[-1]
        dir_fd = self.open_dir(parent)
        try:
            self.write(dir_fd, parent, name, source)
        finally:
            os.close(dir_fd)


def _is_tar_archive(path: Path) -> bool:
    """Whether the file is a tar archive, possibly compressed, by content:
    its (decompressed) first block is a valid tar header, as Docker checks."""
    try:
        with open(path, "rb", opener=_nofollow) as raw:
            head = _decompressing(raw).read(tarfile.BLOCKSIZE)
            if len(head) < tarfile.BLOCKSIZE:
                return False
            tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except (tarfile.HeaderError, OSError, EOFError, zlib.error, lzma.LZMAError):
        return False
    return True


def copy_into(
    ctx: BuildContext,
    sources: Sequence[str],
    dest: str,
    root: Path,
    *,
    chown: str | None,
    workdir_default: str = "/",
    extract_archives: bool = False,
    line: int = 0,
) -> None:
    """Docker's COPY (ADD with extract_archives) of `sources` (as written,
    wildcards allowed) to the image path `dest` in the root filesystem
    `root`. A directory source copies its contents; a file goes to dest, or
    into it when dest ends with '/' or is a directory; several sources need
    a dest ending with '/'. Missing parents of dest are created root's,
    0755; what is copied (and a dest directory created for it) belongs to
    --chown's user (root by default) and keeps its permission bits and
    mtime. With extract_archives, a local tar archive (plain, gzip, bzip2 or
    xz) is unpacked into dest under the rules of `extract`. Blocking."""
    what = "ADD" if extract_archives else "COPY"
    prefix = f"line {line}: {what}"
    if not dest.startswith("/"):
        dest = posixpath.join(workdir_default, dest)
    into_dir = dest.endswith("/") or posixpath.basename(dest) in (".", "..")
    try:
        uid, gid = owner(root, chown)
    except ContextError as e:
        raise ContextError(f"{prefix} --chown: {e}") from None
    paths = [path for source in sources for path in ctx.expand(source, line)]
    if len(paths) > 1 and not into_dir:
        raise ContextError(
            f"{prefix}: {len(paths)} sources need a destination ending with /, got {dest!r}")
    writer = _ImageWriter(root, uid, gid, prefix)
    try:
        for rel in paths:
            source = ctx._path(rel)
            st = os.lstat(source)
            if stat.S_ISDIR(st.st_mode):
                writer.copy_tree(source, dest, stat.S_IMODE(st.st_mode) & 0o777)
            elif stat.S_ISREG(st.st_mode) and extract_archives and _is_tar_archive(source):
                _add_archive(ctx, writer, rel, source, dest, prefix)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                writer.copy_one(source, dest, into_dir)
            else:
                raise ContextError(f"{prefix}: {rel!r} is not a file, directory or symlink")
    finally:
        writer.close()


def _add_archive(
    ctx: BuildContext, writer: _ImageWriter, rel: str, source: Path, dest: str, prefix: str,
) -> None:
    # Staged next to the context (the server's disk, not the image and not
    # a possibly small /tmp), then copied like a directory, so the image's
    # own symlinks are handled by the same confined code as COPY.
    staging = Path(tempfile.mkdtemp(prefix=".sbx-add-", dir=ctx.root.parent))
    try:
        tree = staging / "tree"
        try:
            with open(source, "rb", opener=_nofollow) as raw:
                _extract_into(raw, tree, DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES)
        except ContextError as e:
            raise ContextError(f"{prefix} {rel!r}: {e}") from None
        writer.copy_tree(tree, dest, 0o755)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
