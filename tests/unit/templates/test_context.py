"""The build context of custom templates: packing, safe extraction, source
expansion and digests, and COPY/ADD into an image's root filesystem. Real
archives and directories under tmp_path; the tests run as root (chown)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import socket
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbx.templates_build import context
from sbx.templates_build.context import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    BuildContext,
    ContextError,
    _ImageWriter,
    copy_into,
    extract,
    owner,
    pack,
    resolve_in_root,
)
from sbx.templates_build.dockerfile import Copy, cache_keys, parse

Member = tuple[tarfile.TarInfo, bytes | None]


# -- archive helpers ----------------------------------------------------------------


def file_(name: str, data: bytes = b"data", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    return info, data


def dir_(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def link(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def hardlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 1, 3
    return info, None


def make(members: list[Member], compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def snapshot(path: Path) -> dict[str, bytes | str | None]:
    """Everything under path: what a refused extraction must leave as it was."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = None
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "sentinel").write_text("host file")
    return out


def refused(data: bytes, tmp_path: Path, outside: Path, match: str, **limits: int) -> None:
    dest = tmp_path / "ctx"
    before = snapshot(outside)
    with pytest.raises(ContextError, match=match):
        extract(data, dest, **limits)
    assert not dest.exists()
    assert snapshot(outside) == before
    assert not [p for p in tmp_path.rglob("evil*")]


# -- extract: accepted archives -----------------------------------------------------


def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "app" / "lib").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('hi')\n")
    (src / "app" / "lib" / "util.py").write_text("X = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "run.sh").chmod(0o755)
    (src / "README.md").write_text("readme\n")
    os.symlink("app/main.py", src / "main-link")
    os.symlink("lib", src / "app" / "lib-link")
    return src


def test_pack_then_extract_round_trips(tmp_path: Path) -> None:
    src = tree(tmp_path)
    ctx = extract(pack(src), tmp_path / "ctx")
    root = ctx.root
    assert root == tmp_path / "ctx"
    assert (root / "app/main.py").read_text() == "print('hi')\n"
    assert (root / "app/lib/util.py").read_text() == "X = 1\n"
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "README.md").stat().st_mode) == 0o644
    assert os.readlink(root / "main-link") == "app/main.py"
    assert os.readlink(root / "app/lib-link") == "lib"
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert ctx.digest(".") == BuildContext(src).digest(".")


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_extract_detects_compression(tmp_path: Path, compression: str) -> None:
    data = make([file_("a.txt", b"hello")], compression)
    ctx = extract(data, tmp_path / "ctx")
    assert (ctx.root / "a.txt").read_bytes() == b"hello"


def test_extract_strips_setuid_setgid_sticky_and_keeps_mtime(tmp_path: Path) -> None:
    data = make([file_("suid", mode=0o4755), file_("sgid", mode=0o2711), dir_("tmp", 0o1777)])
    root = extract(data, tmp_path / "ctx").root
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "sgid").stat().st_mode) == 0o711
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o777
    assert int((root / "suid").stat().st_mtime) == 1_600_000_000


def test_extract_creates_missing_parents_and_accepts_dot_names(tmp_path: Path) -> None:
    data = make([dir_("./"), file_("./a/b/c.txt", b"deep"), dir_("a/", 0o700), file_("x//y")])
    root = extract(data, tmp_path / "ctx").root
    assert (root / "a/b/c.txt").read_bytes() == b"deep"
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o700  # explicit, after the fact
    assert stat.S_IMODE((root / "a/b").stat().st_mode) == 0o755  # implicit
    assert (root / "x/y").is_file()


def test_extract_fills_read_only_directories(tmp_path: Path) -> None:
    data = make([dir_("ro", 0o555), file_("ro/f", b"in", mode=0o444)])
    root = extract(data, tmp_path / "ctx").root
    assert (root / "ro/f").read_bytes() == b"in"
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "ro/f").stat().st_mode) == 0o444


def test_extract_hardlink_to_an_earlier_file(tmp_path: Path) -> None:
    data = make([file_("a", b"shared"), hardlink("sub/b", "./a")])
    root = extract(data, tmp_path / "ctx").root
    assert (root / "sub/b").read_bytes() == b"shared"
    assert (root / "a").stat().st_ino == (root / "sub/b").stat().st_ino


def test_extract_accepts_links_that_stay_inside(tmp_path: Path) -> None:
    data = make([
        dir_("sub/deeper"),
        link("here", "."),
        link("sub/up", ".."),
        link("sub/deeper/top", "../../here/sub"),
        link("dangling", "does/not/exist"),
    ])
    root = extract(data, tmp_path / "ctx").root
    assert os.readlink(root / "sub/deeper/top") == "../../here/sub"


def test_extract_into_existing_empty_dir_but_not_a_full_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    extract(make([file_("a")]), empty)
    assert (empty / "a").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        extract(make([file_("a")]), full)
    assert (full / "keep").read_text() == "mine"


def test_extract_limits_are_inclusive(tmp_path: Path) -> None:
    data = make([file_(f"f{i}", b"") for i in range(10)])
    extract(data, tmp_path / "ctx", max_files=10)
    assert len(list((tmp_path / "ctx").iterdir())) == 10
    assert DEFAULT_MAX_BYTES == 1 << 30 and DEFAULT_MAX_FILES == 100_000


# -- extract: refused archives ------------------------------------------------------


def test_refuses_absolute_member(tmp_path: Path, outside: Path) -> None:
    refused(make([file_(str(outside / "evil"))]), tmp_path, outside, "absolute path")


@pytest.mark.parametrize("name", ["../outside/evil", "a/../../outside/evil", "./../evil"])
def test_refuses_member_outside(tmp_path: Path, outside: Path, name: str) -> None:
    refused(make([file_("ok"), file_(name)]), tmp_path, outside, "outside the build context")


def test_refuses_absolute_symlink(tmp_path: Path, outside: Path) -> None:
    refused(make([link("evil-link", str(outside))]), tmp_path, outside, "absolute path")


def test_refuses_escaping_relative_symlink(tmp_path: Path, outside: Path) -> None:
    refused(make([dir_("sub"), link("sub/evil", "../../outside")]), tmp_path, outside,
            "points outside")


def test_refuses_symlink_chain_escape(tmp_path: Path, outside: Path) -> None:
    refused(make([link("a", "."), link("b", "a/../..")]), tmp_path, outside, "'b'.*outside")


def test_refuses_escape_that_looks_inside_lexically(tmp_path: Path, outside: Path) -> None:
    # sub/a/../x is sub/x on paper, but sub/a is the root, so it is root/../x.
    refused(make([dir_("sub"), link("sub/a", ".."), link("sub/b", "a/../x")]),
            tmp_path, outside, "'sub/b'.*outside")


def test_refuses_escape_created_by_a_later_member(tmp_path: Path, outside: Path) -> None:
    # When sub/b is written, sub/a does not exist yet: only the final tree shows the escape.
    refused(make([dir_("sub"), link("sub/b", "a/.."), link("sub/a", "..")]),
            tmp_path, outside, "'sub/b'.*outside")


def test_refuses_symlink_loop(tmp_path: Path, outside: Path) -> None:
    refused(make([link("a", "b"), link("b", "a")]), tmp_path, outside, "loop")


def test_symlink_chains_up_to_forty_links(tmp_path: Path, outside: Path) -> None:
    chain = [dir_("l41")] + [link(f"l{i}", f"l{i + 1}") for i in range(1, 41)]
    extract(make(chain), tmp_path / "ok")  # l1 .. l40: 40 links, as Linux allows
    refused(make([*chain, link("l0", "l1")]), tmp_path, outside, "'l0'.*too many levels")


def test_refuses_write_through_absolute_symlink(tmp_path: Path, outside: Path) -> None:
    refused(make([link("x", str(outside)), file_("x/evil")]), tmp_path, outside, "x")


def test_refuses_write_through_inside_symlink(tmp_path: Path, outside: Path) -> None:
    refused(make([dir_("sub"), link("x", "sub"), file_("x/evil")]), tmp_path, outside,
            "below the symlink 'x'")


def test_refuses_write_through_symlink_via_dotdot(tmp_path: Path, outside: Path) -> None:
    refused(make([dir_("sub"), link("x", "sub"), file_("y/../x/evil")]), tmp_path, outside,
            "below the symlink")


@pytest.mark.parametrize("target", ["../outside/sentinel", "/outside/sentinel"])
def test_refuses_hardlink_outside(tmp_path: Path, outside: Path, target: str) -> None:
    if target.startswith("/"):
        target = str(outside / "sentinel")
    refused(make([hardlink("evil", target)]), tmp_path, outside, "hardlink")
    assert (outside / "sentinel").stat().st_nlink == 1


@pytest.mark.parametrize("members", [
    [hardlink("evil", "later"), file_("later")],
    [dir_("d"), hardlink("evil", "d")],
    [file_("f"), link("l", "f"), hardlink("evil", "l")],
])
def test_refuses_hardlink_to_non_extracted_or_non_regular(
    tmp_path: Path, outside: Path, members: list[Member]
) -> None:
    refused(make(members), tmp_path, outside, "not a regular file extracted before it")


@pytest.mark.parametrize(("kind", "what"), [
    (tarfile.CHRTYPE, "character device"),
    (tarfile.BLKTYPE, "block device"),
    (tarfile.FIFOTYPE, "fifo"),
    (tarfile.GNUTYPE_SPARSE, "sparse file"),
])
def test_refuses_special_members(tmp_path: Path, outside: Path, kind: bytes, what: str) -> None:
    refused(make([file_("ok"), special("evil-dev", kind)]), tmp_path, outside, what)


def test_refuses_unknown_member_type(tmp_path: Path, outside: Path) -> None:
    refused(make([special("evil", b"V")]), tmp_path, outside, "unsupported type")


def pax_sparse(name: str, sparse_map: bytes, realsize: int) -> Member:
    """A GNU sparse file, format 1.0: pax records, then the map in the data."""
    info, data = file_(name, sparse_map + bytes(-len(sparse_map) % 512))
    info.pax_headers = {
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
        "GNU.sparse.name": name, "GNU.sparse.realsize": str(realsize),
    }
    return info, data


def test_refuses_pax_sparse_file(tmp_path: Path, outside: Path) -> None:
    # One 1 GB hole: expanding it would write far more than was sent.
    refused(make([pax_sparse("evil", b"1\n1000000000\n0\n", 1_000_000_000)]), tmp_path,
            outside, "sparse file")


def test_refuses_huge_member_headers(tmp_path: Path, outside: Path) -> None:
    # tarfile holds a sparse map as a list of ints (many times its size) and a
    # pax record in memory: each member's headers get 1 MiB, not max_bytes.
    huge_map = b"1000000\n" + b"1\n" * (1 << 20)
    refused(make([pax_sparse("evil", huge_map, 10)]), tmp_path, outside, "headers larger")
    info, data = file_("evil-long")
    info.pax_headers = {"comment": "x" * (2 << 20)}
    refused(make([(info, data)]), tmp_path, outside, "headers larger")


def test_refuses_duplicate_member(tmp_path: Path, outside: Path) -> None:
    refused(make([file_("a"), file_("a", b"again")]), tmp_path, outside, "appears twice")


def test_refuses_root_as_a_file(tmp_path: Path, outside: Path) -> None:
    refused(make([file_("./")]), tmp_path, outside, "root")


def test_refuses_gzip_bomb(tmp_path: Path, outside: Path) -> None:
    data = make([file_("bomb", bytes(20 << 20))])
    assert len(data) < 100_000
    refused(data, tmp_path, outside, "larger than", max_bytes=1 << 20)


def test_refuses_many_small_files_over_max_bytes(tmp_path: Path, outside: Path) -> None:
    data = make([file_(f"f{i}", bytes(4000)) for i in range(40)])
    refused(data, tmp_path, outside, "larger than", max_bytes=100_000)


def test_counts_the_stream_not_only_file_sizes(tmp_path: Path, outside: Path) -> None:
    # Empty files: their headers claim 0 bytes, yet the stream is > 100 kB.
    data = make([file_(f"f{i}", b"") for i in range(400)])
    refused(data, tmp_path, outside, "larger than", max_bytes=100_000)


def test_refuses_too_many_files(tmp_path: Path, outside: Path) -> None:
    refused(make([file_(f"f{i}", b"") for i in range(11)]), tmp_path, outside,
            "more than 10 entries", max_files=10)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


# A tar followed by MiBs of zeros (which tar readers skip): reading stops long
# before the gzip trailer, so its CRC is only checked if the rest is drained.
BIG_GZ = gzip.compress(make([file_("a", b"a")], "") + bytes(3 << 20), mtime=0)


def test_implied_directories_count_as_files(tmp_path: Path, outside: Path) -> None:
    # One member, 2000 directories: each is an inode on the server's disk.
    refused(make([file_("/".join(["d"] * 2000) + "/evil")]), tmp_path, outside,
            "more than 100 entries", max_files=100)


@pytest.mark.parametrize("members", [
    [file_("x" * 256)],
    [file_("/".join(["d" * 200] * 21))],
    [link("evil", "d/" * 2100)],
], ids=["component", "path", "link-target"])
def test_refuses_names_linux_cannot_hold(
    tmp_path: Path, outside: Path, members: list[Member]
) -> None:
    refused(make(members), tmp_path, outside, "too long")


def test_hostile_symlink_checks_are_bounded(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long targets through a chain of links: every check walks thousands of
    # names; past a total the archive is refused rather than keep the server busy.
    monkeypatch.setattr(context, "_MAX_LINK_STEPS", 100_000)
    chain = [dir_("d"), link("s", "d/..")] + [
        link(f"evil{i}", "/".join(["s"] * 39 + ["d/.."] * 790)) for i in range(100)
    ]
    refused(make(chain), tmp_path, outside, "too many symlinks to check")
    extract(make(chain[:30]), tmp_path / "fewer")


def valid_plain() -> bytes:
    return make([file_("a", b"A" * 700), file_("b", b"B" * 10)], "")


@pytest.mark.parametrize("data", [
    b"this is not a tar archive" * 100,
    b"",
    b"\x1f\x8b" + os.urandom(2000),
    gzip.compress(valid_plain())[:-4],  # the gzip trailer (CRC, size) cut
    flip(gzip.compress(valid_plain(), mtime=0), 30),  # a bit flipped in the deflate stream
    flip(BIG_GZ, len(BIG_GZ) - 8),  # the CRC, past the tar's end: read only when draining
    bz2.compress(b"x" * 1000)[:-10],
    lzma.compress(valid_plain())[:-30],
    valid_plain()[:1000],  # member data cut short
    valid_plain()[:512 * 3] + b"\xff" * 512 + valid_plain()[512 * 4 :],  # a damaged header
], ids=["text", "empty", "bad-gzip", "truncated-gzip", "flipped-gzip", "bad-crc", "truncated-bz2",
        "truncated-xz", "truncated-data", "damaged-header"])
def test_refuses_corrupt_archives(tmp_path: Path, outside: Path, data: bytes) -> None:
    refused(data, tmp_path, outside, "corrupt|not a valid|truncated")


def test_damaged_header_offset_is_a_real_header() -> None:
    # Keeps the "damaged-header" case above meaningful: block 3 is member b's header
    # (a takes a header and two data blocks).
    plain = valid_plain()
    assert tarfile.TarInfo.frombuf(plain[512 * 3 : 512 * 4], "utf-8", "strict").name == "b"


# -- pack ---------------------------------------------------------------------------


def test_pack_is_deterministic(tmp_path: Path) -> None:
    one = tree(tmp_path)
    first = pack(one)
    time.sleep(0.01)
    assert pack(one) == first
    # The same tree elsewhere, with the same mtimes, gives the same bytes.
    two = tmp_path / "two"
    os.rename(one, two)
    assert pack(two) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "README.md", "app", "app/lib", "app/lib/util.py", "app/lib-link", "app/main.py",
        "main-link", "run.sh",
    ]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
    assert gzip.decompress(first)  # a plain gzip stream


def test_pack_changes_with_content(tmp_path: Path) -> None:
    src = tree(tmp_path)
    before = pack(src)
    (src / "README.md").write_text("changed\n")
    assert pack(src) != before


def test_pack_symlinks_are_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "inner.txt").write_text("x")
    os.symlink("real", src / "alias")
    with tarfile.open(fileobj=io.BytesIO(pack(src))) as tar:
        alias = tar.getmember("alias")
        assert alias.issym() and alias.linkname == "real"
        assert "alias/inner.txt" not in tar.getnames()


def test_pack_skips_fifos_and_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    os.mkfifo(src / "fifo")
    monkeypatch.chdir(src)  # a socket path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        assert names(pack(src)) == ["file"]


def test_pack_refuses_over_max_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(100_000))
    with pytest.raises(ContextError, match=r"larger than 50000 bytes.*'big'"):
        pack(src, max_bytes=50_000)
    (src / "big").unlink()
    for i in range(200):
        (src / f"small{i:03}").write_bytes(b"x" * 300)
    with pytest.raises(ContextError, match="larger than"):
        pack(src, max_bytes=50_000)
    assert pack(src, max_bytes=300_000)


def test_pack_output_fits_the_servers_limit(tmp_path: Path) -> None:
    src = tree(tmp_path)
    size = len(gzip.decompress(pack(src)))
    data = pack(src, max_bytes=size)
    with pytest.raises(ContextError):
        pack(src, max_bytes=size - 1)
    extract(data, tmp_path / "ctx", max_bytes=size)


def test_pack_refuses_links_the_server_would(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/usr/bin/python3", src / "python")
    with pytest.raises(ContextError, match=r"'python'.*absolute"):
        pack(src)
    (src / "python").unlink()
    os.symlink("../../elsewhere", src / "up")
    with pytest.raises(ContextError, match=r"'up'.*outside"):
        pack(src)
    # Ignored, it is not sent and not checked.
    (src / ".dockerignore").write_text("up\n")
    assert names(pack(src)) == [".dockerignore"]


def test_pack_refuses_a_non_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ContextError, match="not a directory"):
        pack(tmp_path / "f")


def ignore_case(tmp_path: Path, files: list[str], dockerignore: str) -> list[str]:
    src = tmp_path / "src"
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    (src / ".dockerignore").write_text(dockerignore)
    return [n for n in names(pack(src)) if n != ".dockerignore"]


def test_dockerignore_basic_patterns_and_comments(tmp_path: Path) -> None:
    kept = ignore_case(
        tmp_path,
        ["a.log", "b.txt", "build/out.o", "sub/c.log", "Dockerfile"],
        "# a comment\n\n*.log\n  build  \n",
    )
    # `*.log` is for the top level only; `build` takes the directory's contents too.
    assert kept == ["Dockerfile", "b.txt", "sub", "sub/c.log"]


def test_dockerignore_exception_reincludes(tmp_path: Path) -> None:
    kept = ignore_case(tmp_path, ["README.md", "CHANGES.md", "x.py"], "*.md\n!README.md\n")
    assert kept == ["README.md", "x.py"]


def test_dockerignore_later_lines_win(tmp_path: Path) -> None:
    assert ignore_case(tmp_path, ["a", "b"], "!a\na\n") == ["b"]


def test_dockerignore_doublestar(tmp_path: Path) -> None:
    files = ["x.pyc", "pkg/y.pyc", "pkg/deep/z.pyc", "pkg/keep.py", "docs/a/b.md", "docsx"]
    kept = ignore_case(tmp_path, files, "**/*.pyc\ndocs/**\n")
    assert kept == ["docs", "docsx", "pkg", "pkg/deep", "pkg/keep.py"]


def test_dockerignore_everything_but(tmp_path: Path) -> None:
    files = ["src/app.py", "src/gen/big.bin", "data/raw.csv", "data/keep.txt", "Dockerfile"]
    kept = ignore_case(tmp_path, files, "*\n!src\nsrc/gen\n!data/keep.txt\n")
    # An ignored directory's entry is left out while a kept file below it is sent.
    assert kept == ["data/keep.txt", "src", "src/app.py"]
    ctx = extract(pack(tmp_path / "src"), tmp_path / "ctx")
    assert (ctx.root / "data/keep.txt").read_text() == "data/keep.txt"


def test_dockerignore_cleans_patterns(tmp_path: Path) -> None:
    files = ["foo/bar", "baz", "qux/x", "kept"]
    kept = ignore_case(tmp_path, files, "/foo/../foo/bar\n./baz\nqux/\n//kept/../nothing\n")
    assert kept == ["foo", "kept"]


def test_dockerignore_character_classes_and_escapes(tmp_path: Path) -> None:
    files = ["a1", "b2", "c3", "star*", "starx", "q?"]
    kept = ignore_case(tmp_path, files, "[ab][0-9]\nstar\\*\n")
    assert kept == ["c3", "q?", "starx"]
    kept = ignore_case(tmp_path / "2", files, "[^a]?\n")
    assert kept == ["a1", "star*", "starx"]


def test_dockerignore_can_drop_itself_and_the_dockerfile(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Dockerfile").write_text("FROM base\n")
    (src / "app.py").write_text("x")
    assert names(pack(src)) == ["Dockerfile", "app.py"]
    (src / ".dockerignore").write_text(".dockerignore\nDockerfile\n")
    assert names(pack(src)) == ["app.py"]


@pytest.mark.parametrize("pattern", ["[", "a[]", "x\\", "[a-]", "!", "!  "])
def test_dockerignore_bad_patterns(tmp_path: Path, pattern: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".dockerignore").write_text(f"ok\n{pattern}\n")
    with pytest.raises(ContextError, match="line 2"):
        pack(src)


# -- expand -------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> BuildContext:
    root = tmp_path / "ctx"
    for name, text in {
        "a.txt": "a", "b.txt": "b", "c.md": "c", ".hidden.txt": "h",
        "src/app/main.py": "main", "src/lib/main.py": "lib", "src/lib/util.py": "u",
        "star*": "literal star", "x1": "1", "x2": "2", "y3": "3",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    os.symlink("src", root / "srclink")
    os.symlink("/etc", root / "etclink")
    return BuildContext(root)


def test_expand_literal_paths(ctx: BuildContext) -> None:
    assert ctx.expand("a.txt", 3) == ["a.txt"]
    assert ctx.expand("src", 3) == ["src"]
    assert ctx.expand("src/app/main.py", 3) == ["src/app/main.py"]
    assert ctx.expand(".", 3) == ["."]
    assert ctx.expand("srclink", 3) == ["srclink"]  # the link itself


def test_expand_wildcards(ctx: BuildContext) -> None:
    # Go's `*` matches a leading dot too.
    assert ctx.expand("*.txt", 1) == [".hidden.txt", "a.txt", "b.txt"]
    assert ctx.expand("src/*/main.py", 1) == ["src/app/main.py", "src/lib/main.py"]
    assert ctx.expand("x?", 1) == ["x1", "x2"]
    assert ctx.expand("[xy][2-3]", 1) == ["x2", "y3"]
    assert ctx.expand("[^x]?", 1) == ["y3"]
    assert ctx.expand("star\\*", 1) == ["star*"]
    assert ctx.expand("src/lib/*", 1) == ["src/lib/main.py", "src/lib/util.py"]


def test_expand_no_match_names_line_and_source(ctx: BuildContext) -> None:
    for source in ("missing.txt", "*.rs", "src/*/nothing", "a.txt/x"):
        with pytest.raises(ContextError, match=rf"line 7: .*'{source.replace('*', '.')}'"
                                               r".*matches nothing"):
            ctx.expand(source, 7)


def test_expand_never_follows_symlinks(ctx: BuildContext) -> None:
    with pytest.raises(ContextError, match=r"line 2: .*symlink 'srclink'"):
        ctx.expand("srclink/app/main.py", 2)
    with pytest.raises(ContextError, match=r"line 2: .*symlink 'etclink'"):
        ctx.expand("etclink/passwd", 2)
    with pytest.raises(ContextError, match="matches nothing"):
        ctx.expand("*link/app", 2)  # wildcards do not descend into links either


@pytest.mark.parametrize("source", ["../x", "/etc/passwd", "a/../../x"])
def test_expand_refuses_paths_outside(ctx: BuildContext, source: str) -> None:
    with pytest.raises(ContextError, match=r"line 4: .*outside the build context"):
        ctx.expand(source, 4)


def test_expand_bad_pattern(ctx: BuildContext) -> None:
    with pytest.raises(ContextError, match=r"line 5: .*not a valid pattern"):
        ctx.expand("src/[a", 5)


def test_expand_hostile_pattern_is_fast(ctx: BuildContext) -> None:
    name = "a" * 200
    (ctx.root / name).write_text("x")
    start = time.monotonic()
    with pytest.raises(ContextError):
        ctx.expand("*a*a*a*a*a*a*a*a*a*a*a*a*b", 1)
    assert time.monotonic() - start < 2


# -- digest -------------------------------------------------------------------------


def test_digest_ignores_mtime_but_not_content_or_mode(ctx: BuildContext) -> None:
    path = ctx.root / "a.txt"
    first = ctx.digest("a.txt")
    whole = ctx.digest(".")
    os.utime(path, (1, 1))
    assert ctx.digest("a.txt") == first
    assert ctx.digest(".") == whole
    path.chmod(0o755)
    assert ctx.digest("a.txt") != first
    path.chmod(0o644)
    assert ctx.digest("a.txt") == first
    path.write_text("A")
    assert ctx.digest("a.txt") != first
    assert ctx.digest(".") != whole


def test_digest_of_directories_and_links(ctx: BuildContext, tmp_path: Path) -> None:
    src = ctx.digest("src")
    assert src == ctx.digest("src/")
    copy = tmp_path / "copy"
    (copy / "lib").mkdir(parents=True)
    (copy / "app").mkdir()
    (copy / "app/main.py").write_text("main")
    (copy / "lib/main.py").write_text("lib")
    (copy / "lib/util.py").write_text("u")
    assert BuildContext(tmp_path).digest("copy") == src
    os.rename(copy / "lib/util.py", copy / "lib/util2.py")
    assert BuildContext(tmp_path).digest("copy") != src
    assert ctx.digest("srclink") != ctx.digest("src")
    link_digest = ctx.digest("srclink")
    os.unlink(ctx.root / "srclink")
    os.symlink("src/", ctx.root / "srclink")
    assert ctx.digest("srclink") != link_digest


def test_digest_file_versus_link_with_same_text(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("target")
    os.symlink("target", root / "l")
    ctx = BuildContext(root)
    assert ctx.digest("f") != ctx.digest("l")


def test_digest_missing_path(ctx: BuildContext) -> None:
    with pytest.raises(ContextError, match="nope"):
        ctx.digest("nope")


def test_digests_keys_are_sources_as_written(ctx: BuildContext) -> None:
    digests = ctx.digests(["*.txt", "src", "a.txt"], 9)
    assert set(digests) == {"*.txt", "src", "a.txt"}
    assert digests["a.txt"] != digests["*.txt"]
    before = digests["*.txt"]
    (ctx.root / "b.txt").write_text("changed")
    assert ctx.digests(["*.txt"], 9)["*.txt"] != before
    (ctx.root / "b.txt").write_text("b")
    (ctx.root / "new.txt").write_text("n")  # one more match: a different COPY
    assert ctx.digests(["*.txt"], 9)["*.txt"] != before
    with pytest.raises(ContextError, match="line 9"):
        ctx.digests(["nothing*"], 9)


def test_digests_feed_cache_keys(ctx: BuildContext) -> None:
    df = parse("FROM base\nCOPY *.txt src /app/\nRUN true\n")
    copy = df.instructions[1]
    assert isinstance(copy, Copy)
    keys = cache_keys(df, ctx.digests(copy.sources, copy.line))
    (ctx.root / "src/lib/util.py").write_text("changed")
    changed = cache_keys(df, ctx.digests(copy.sources, copy.line))
    assert keys[0] == changed[0] and keys[1] != changed[1] and keys[2] != changed[2]


# -- resolve_in_root ----------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    for d in ("usr/bin", "usr/lib", "etc", "home/app"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    os.symlink("usr/lib", root / "lib")
    return root


def under(root: Path, path: Path) -> bool:
    return path == root or path.is_relative_to(root)


def test_resolve_plain_and_merged_usr(image: Path) -> None:
    assert resolve_in_root(image, "/") == image
    assert resolve_in_root(image, "/etc/passwd") == image / "etc/passwd"
    assert resolve_in_root(image, "/bin/sh") == image / "usr/bin/sh"
    assert resolve_in_root(image, "/lib/../etc") == image / "usr/etc"  # as the kernel does
    assert resolve_in_root(image, "/missing/a/../b") == image / "missing/b"


def test_resolve_absolute_link_stays_in_root(image: Path, outside: Path) -> None:
    os.symlink(str(outside), image / "host")
    os.symlink("/etc", image / "usr/lib/conf")
    assert resolve_in_root(image, "/host/sentinel") == image / str(outside).lstrip("/") / "sentinel"
    assert resolve_in_root(image, "/lib/conf/x") == image / "etc/x"


def test_resolve_relative_link_cannot_climb_out(image: Path) -> None:
    os.symlink("../../../../../../../../etc", image / "usr/bin/up")
    os.symlink("..", image / "dotdot")
    assert resolve_in_root(image, "/usr/bin/up/shadow") == image / "etc/shadow"
    assert resolve_in_root(image, "/dotdot/dotdot/etc") == image / "etc"
    assert resolve_in_root(image, "/../../etc") == image / "etc"


def test_resolve_follow_last(image: Path) -> None:
    os.symlink("/etc/real", image / "etc/alias")
    assert resolve_in_root(image, "/etc/alias") == image / "etc/real"
    assert resolve_in_root(image, "/etc/alias", follow_last=False) == image / "etc/alias"
    assert resolve_in_root(image, "/bin/x", follow_last=False) == image / "usr/bin/x"
    # A trailing slash makes the last component a directory to enter: followed.
    assert resolve_in_root(image, "/etc/alias/", follow_last=False) == image / "etc/real"


def test_resolve_loops(image: Path) -> None:
    os.symlink("b", image / "a")
    os.symlink("a", image / "b")
    os.symlink("self", image / "self")
    for path in ("/a", "/b/x", "/self"):
        with pytest.raises(ContextError, match="too many levels"):
            resolve_in_root(image, path)


def test_resolve_allows_forty_hops_not_forty_one(image: Path) -> None:
    for i in range(41):
        os.symlink(f"l{i + 1}", image / f"l{i}")
    (image / "l41").mkdir()
    assert resolve_in_root(image, "/l1") == image / "l41"  # 40 links
    with pytest.raises(ContextError):
        resolve_in_root(image, "/l0")  # 41


def test_resolve_random_hostile_links_stay_under_root(image: Path) -> None:
    rng = random.Random(1234)
    pieces = ["..", ".", "etc", "usr", "bin", "x", "", "l0", "l1", "l2", "l3"]
    for i in range(4):
        target = "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        os.symlink(("/" if rng.random() < 0.5 else "") + target, image / f"l{i}")
    real_root = Path(os.path.realpath(image))
    for _ in range(300):
        path = "/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        try:
            result = resolve_in_root(image, path)
        except ContextError:
            continue  # a loop
        assert under(image, result), (path, result)
        assert under(real_root, Path(os.path.realpath(result))), (path, result)


# -- owner --------------------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/bash
# a comment
broken line
app:x:1000:1001::/home/app:/bin/sh
huge:x:99999999999:1::/:/bin/sh
svc:x:998:997::/:/usr/sbin/nologin
"""
GROUP = """root:x:0:
staff:x:50:app
app:x:1001:
bad:x:notanumber:
"""


@pytest.fixture
def users(image: Path) -> Path:
    (image / "etc/passwd").write_text(PASSWD)
    (image / "etc/group").write_text(GROUP)
    return image


@pytest.mark.parametrize(("spec", "expected"), [
    (None, (0, 0)),
    ("root", (0, 0)),
    ("app", (1000, 1001)),
    ("app:staff", (1000, 50)),
    ("app:99", (1000, 99)),
    ("1000", (1000, 1001)),  # a listed uid: its primary group
    ("1234", (1234, 1234)),  # not listed: gid = uid, as Docker documents
    ("5:6", (5, 6)),
    ("1234:staff", (1234, 50)),
    ("svc:root", (998, 0)),
])
def test_owner(users: Path, spec: str | None, expected: tuple[int, int]) -> None:
    assert owner(users, spec) == expected


@pytest.mark.parametrize(("spec", "match"), [
    ("nobody", "unknown user 'nobody'"),
    ("app:wheel", "unknown group 'wheel'"),
    ("app:bad", "unknown group 'bad'"),
    (":staff", "invalid"),
    ("app:", "invalid"),
    ("99999999999", "out of range"),
    ("huge", "unknown user 'huge'"),  # its uid is not valid: the row is skipped
])
def test_owner_refusals(users: Path, spec: str, match: str) -> None:
    with pytest.raises(ContextError, match=match):
        owner(users, spec)


def test_owner_reads_the_image_not_the_host(image: Path, outside: Path) -> None:
    # No passwd in the image: "root" is unknown even though the host has one.
    with pytest.raises(ContextError, match="unknown user 'root'"):
        owner(image, "root")
    # /etc is an absolute link to a host path: it is read inside the image.
    (outside / "passwd").write_text("host:x:4242:4242::/:/bin/sh\n")
    os.rename(image / "etc", image / "real-etc")
    (image / "real-etc/passwd").write_text("img:x:7:8::/:/bin/sh\n")
    os.symlink(str(outside), image / "etc")
    with pytest.raises(ContextError, match="unknown user 'host'"):
        owner(image, "host")
    os.unlink(image / "etc")
    os.symlink("/real-etc", image / "etc")
    assert owner(image, "img") == (7, 8)


def test_owner_does_not_hang_on_a_fifo(image: Path) -> None:
    os.mkfifo(image / "etc/passwd")
    with pytest.raises(ContextError, match="unknown user"):
        owner(image, "app")
    assert owner(image, "12") == (12, 12)


# -- copy_into ----------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def ids(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def test_copy_file_to_file(ctx: BuildContext, image: Path) -> None:
    (ctx.root / "a.txt").chmod(0o640)
    os.utime(ctx.root / "a.txt", (1_500_000_000, 1_500_000_000))
    copy_into(ctx, ["a.txt"], "/opt/new/b.txt", image, chown=None, line=3)
    target = image / "opt/new/b.txt"
    assert target.read_text() == "a"
    assert mode(target) == 0o640 and ids(target) == (0, 0)
    assert int(target.stat().st_mtime) == 1_500_000_000
    assert mode(image / "opt") == mode(image / "opt/new") == 0o755
    assert ids(image / "opt/new") == (0, 0)


def test_copy_file_into_directory(ctx: BuildContext, image: Path) -> None:
    copy_into(ctx, ["a.txt"], "/srv/", image, chown=None)
    assert (image / "srv/a.txt").read_text() == "a"
    copy_into(ctx, ["b.txt"], "/etc", image, chown=None)  # an existing directory
    assert (image / "etc/b.txt").read_text() == "b"


def test_copy_replaces_a_file_with_a_new_inode(ctx: BuildContext, image: Path) -> None:
    (image / "etc/conf").write_text("old")
    os.link(image / "etc/conf", image / "etc/conf-hardlink")
    copy_into(ctx, ["a.txt"], "/etc/conf", image, chown=None)
    assert (image / "etc/conf").read_text() == "a"
    assert (image / "etc/conf-hardlink").read_text() == "old"


def test_copy_directory_contents(ctx: BuildContext, image: Path) -> None:
    (ctx.root / "src/lib").chmod(0o750)
    copy_into(ctx, ["src"], "/app", image, chown=None)
    assert (image / "app/app/main.py").read_text() == "main"
    assert (image / "app/lib/util.py").read_text() == "u"
    assert not (image / "app/src").exists()
    assert mode(image / "app/lib") == 0o750
    # Into an existing directory: merged, what is there stays.
    (image / "home/app/keep").write_text("k")
    copy_into(ctx, ["src/lib"], "/home/app/", image, chown=None)
    assert (image / "home/app/keep").read_text() == "k"
    assert (image / "home/app/util.py").read_text() == "u"


def test_copy_whole_context(ctx: BuildContext, image: Path) -> None:
    copy_into(ctx, ["."], "/work", image, chown=None)
    assert (image / "work/a.txt").read_text() == "a"
    assert (image / "work/src/lib/main.py").read_text() == "lib"
    assert os.readlink(image / "work/srclink") == "src"
    assert os.readlink(image / "work/etclink") == "/etc"  # copied, never followed


def test_copy_several_sources_need_a_trailing_slash(ctx: BuildContext, image: Path) -> None:
    with pytest.raises(ContextError, match=r"line 4: COPY: 2 sources.*ending with /"):
        copy_into(ctx, ["a.txt", "b.txt"], "/app", image, chown=None, line=4)
    with pytest.raises(ContextError, match="line 4: COPY: 3 sources"):
        copy_into(ctx, ["*.txt"], "/app", image, chown=None, line=4)
    assert not (image / "app").exists()
    copy_into(ctx, ["a.txt", "x?", "src"], "/app/", image, chown=None)
    assert sorted(p.name for p in (image / "app").iterdir()) == ["a.txt", "app", "lib", "x1", "x2"]


def test_copy_missing_source(ctx: BuildContext, image: Path) -> None:
    with pytest.raises(ContextError, match=r"line 6: .*'nope'.*matches nothing"):
        copy_into(ctx, ["nope"], "/app/", image, chown=None, line=6)


def test_copy_chown(ctx: BuildContext, users: Path) -> None:
    copy_into(ctx, ["src"], "/srv/app", users, chown="app")
    assert ids(users / "srv") == (0, 0)  # a parent: root's
    assert ids(users / "srv/app") == (1000, 1001)  # the copied tree's root
    for p in (users / "srv/app").rglob("*"):
        assert ids(p) == (1000, 1001), p
    copy_into(ctx, ["a.txt"], "/srv/other/", users, chown="svc:staff")
    assert ids(users / "srv/other/a.txt") == (998, 50)
    assert ids(users / "srv/other") == (0, 0)
    with pytest.raises(ContextError, match="line 8: COPY --chown: unknown user 'ghost'"):
        copy_into(ctx, ["a.txt"], "/x", users, chown="ghost", line=8)


def test_copy_keeps_existing_directory_owners(ctx: BuildContext, users: Path) -> None:
    copy_into(ctx, ["src"], "/etc/", users, chown="app")
    assert ids(users / "etc") == (0, 0)
    assert ids(users / "etc/lib") == (1000, 1001)


def test_copy_through_absolute_link_at_destination(
    ctx: BuildContext, image: Path, outside: Path
) -> None:
    before = snapshot(outside)
    os.symlink(str(outside / "sentinel"), image / "etc/conf")
    copy_into(ctx, ["a.txt"], "/etc/conf", image, chown=None)
    assert snapshot(outside) == before
    landed = image / str(outside).lstrip("/") / "sentinel"
    assert landed.read_text() == "a"
    assert os.readlink(image / "etc/conf") == str(outside / "sentinel")


def test_copy_through_linked_parent(ctx: BuildContext, image: Path, outside: Path) -> None:
    before = snapshot(outside)
    os.symlink(str(outside), image / "app")
    os.symlink("../../../../../../../../../../outside", image / "rel")
    copy_into(ctx, ["src"], "/app/code", image, chown=None)
    copy_into(ctx, ["a.txt"], "/rel/", image, chown=None)
    assert snapshot(outside) == before
    assert (image / str(outside).lstrip("/") / "code/lib/util.py").read_text() == "u"
    assert (image / "outside/a.txt").read_text() == "a"


def test_copy_merges_into_linked_directories(ctx: BuildContext, image: Path) -> None:
    (ctx.root / "bin").mkdir()
    (ctx.root / "bin/tool").write_text("tool")
    (ctx.root / "bin/tool").chmod(0o755)
    copy_into(ctx, ["bin"], "/bin", image, chown=None)
    copy_into(ctx, ["."], "/", image, chown=None)
    assert (image / "bin").is_symlink()
    assert (image / "usr/bin/tool").read_text() == "tool"
    assert mode(image / "usr/bin/tool") == 0o755


def test_copy_tree_link_to_outside_in_the_image(
    ctx: BuildContext, image: Path, outside: Path
) -> None:
    before = snapshot(outside)
    os.symlink(str(outside), image / "home/app/lib")
    copy_into(ctx, ["src"], "/home/app", image, chown=None)
    assert snapshot(outside) == before
    assert (image / str(outside).lstrip("/") / "util.py").read_text() == "u"


def test_copy_symlink_source_as_symlink(ctx: BuildContext, image: Path) -> None:
    copy_into(ctx, ["etclink"], "/opt/", image, chown=None)
    assert os.readlink(image / "opt/etclink") == "/etc"
    (image / "opt/existing").write_text("file")
    copy_into(ctx, ["srclink"], "/opt/existing", image, chown=None)
    assert os.readlink(image / "opt/existing") == "src"


def test_copy_refuses_file_onto_directory_and_directory_onto_file(
    ctx: BuildContext, image: Path
) -> None:
    (image / "app/lib").mkdir(parents=True)
    (ctx.root / "d").mkdir()
    (ctx.root / "d/lib").write_text("a file named like the image's directory")
    with pytest.raises(ContextError, match="line 2: COPY: cannot replace the directory /app/lib"):
        copy_into(ctx, ["d"], "/app", image, chown=None, line=2)
    (image / "f").write_text("x")
    with pytest.raises(ContextError, match="/f in the image is not a directory"):
        copy_into(ctx, ["src"], "/f", image, chown=None)
    with pytest.raises(ContextError, match="/f in the image is not a directory"):
        copy_into(ctx, ["a.txt"], "/f/", image, chown=None)


def test_image_writer_never_follows_a_link_it_did_not_resolve(
    image: Path, outside: Path
) -> None:
    # A link appearing after resolution (a race) fails the write instead of following it.
    os.symlink(str(outside), image / "swapped")
    writer = _ImageWriter(image, 0, 0, "line 1: COPY")
    try:
        with pytest.raises(ContextError, match="/swapped in the image is not a directory"):
            writer.open_dir(["swapped", "x"])
    finally:
        writer.close()
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]


def test_copy_relative_destination_uses_workdir_default(ctx: BuildContext, image: Path) -> None:
    copy_into(ctx, ["a.txt"], "sub/", image, chown=None, workdir_default="/home/app")
    assert (image / "home/app/sub/a.txt").read_text() == "a"


def test_copy_large_file(ctx: BuildContext, image: Path) -> None:
    data = os.urandom(3 << 20)
    (ctx.root / "big.bin").write_bytes(data)
    copy_into(ctx, ["big.bin"], "/big.bin", image, chown=None)
    assert (image / "big.bin").read_bytes() == data


def add_archive(ctx: BuildContext, name: str, members: list[Member], compression: str) -> None:
    (ctx.root / name).write_bytes(make(members, compression))


@pytest.mark.parametrize(("name", "compression"), [
    ("app.tar.gz", "gz"), ("app.tgz", "gz"), ("app.tar", ""), ("app.tar.bz2", "bz2"),
    ("app.tar.xz", "xz"), ("no-extension", "gz"),
])
def test_add_extracts_local_archives(
    ctx: BuildContext, users: Path, name: str, compression: str
) -> None:
    add_archive(ctx, name, [dir_("pkg"), file_("pkg/run", b"#!/bin/sh\n", 0o755),
                            link("pkg/current", "run")], compression)
    copy_into(ctx, [name], "/opt/app", users, chown="app", extract_archives=True)
    assert (users / "opt/app/pkg/run").read_bytes() == b"#!/bin/sh\n"
    assert mode(users / "opt/app/pkg/run") == 0o755
    assert os.readlink(users / "opt/app/pkg/current") == "run"
    assert ids(users / "opt/app/pkg/run") == (1000, 1001)
    assert not list(ctx.root.parent.glob(".sbx-add-*"))


def test_copy_does_not_extract_and_add_copies_non_tar(ctx: BuildContext, image: Path) -> None:
    add_archive(ctx, "app.tar.gz", [file_("inner")], "gz")
    copy_into(ctx, ["app.tar.gz"], "/x/", image, chown=None)
    assert (image / "x/app.tar.gz").read_bytes() == (ctx.root / "app.tar.gz").read_bytes()
    (ctx.root / "notes.gz").write_bytes(gzip.compress(b"just text, not a tar" * 50))
    (ctx.root / "tiny.tar").write_bytes(b"short")
    copy_into(ctx, ["notes.gz", "tiny.tar"], "/y/", image, chown=None, extract_archives=True)
    assert gzip.decompress((image / "y/notes.gz").read_bytes()).startswith(b"just text")
    assert (image / "y/tiny.tar").read_bytes() == b"short"


@pytest.mark.parametrize("members", [
    [file_("ok"), file_("../../evil")],
    [link("evil-link", "/etc")],
    [link("x", "."), link("y", "x/..")],
    [special("evil-dev", tarfile.CHRTYPE)],
    [dir_("sub"), link("sub/l", "."), file_("sub/l/evil")],
], ids=["dotdot", "absolute-link", "escaping-link", "device", "through-link"])
def test_add_refuses_malicious_archives(
    ctx: BuildContext, image: Path, outside: Path, members: list[Member]
) -> None:
    add_archive(ctx, "bad.tar.gz", members, "gz")
    before_image, before_outside = snapshot(image), snapshot(outside)
    with pytest.raises(ContextError, match=r"line 5: ADD 'bad\.tar\.gz': archive member"):
        copy_into(ctx, ["bad.tar.gz"], "/opt/", image, chown=None, extract_archives=True,
                  line=5)
    assert snapshot(image) == before_image
    assert snapshot(outside) == before_outside
    assert not list(ctx.root.parent.glob(".sbx-add-*"))
    assert not [p for p in ctx.root.parent.rglob("evil*")]


def test_add_archive_merges_into_image_links(ctx: BuildContext, image: Path) -> None:
    add_archive(ctx, "rootfs.tar", [dir_("bin"), file_("bin/busybox", b"bb", 0o755)], "")
    copy_into(ctx, ["rootfs.tar"], "/", image, chown=None, extract_archives=True)
    assert (image / "bin").is_symlink()
    assert (image / "usr/bin/busybox").read_bytes() == b"bb"


def iter_all(root: Path) -> Iterator[Path]:
    yield root
    yield from root.rglob("*")


def test_extracted_context_copies_end_to_end(tmp_path: Path, image: Path) -> None:
    src = tree(tmp_path)
    (src / ".dockerignore").write_text("README.md\n")
    ctx = extract(pack(src), tmp_path / "ctx")
    df = parse("FROM base\nWORKDIR /srv\nCOPY app run.sh ./\n")
    step = df.instructions[2]
    assert isinstance(step, Copy)
    copy_into(ctx, step.sources, step.dest, image, chown=step.chown, line=step.line)
    assert sorted(str(p.relative_to(image / "srv")) for p in iter_all(image / "srv")
                  if p != image / "srv") == [
        "lib", "lib-link", "lib/util.py", "main.py", "run.sh"]
    assert mode(image / "srv/run.sh") == 0o755
