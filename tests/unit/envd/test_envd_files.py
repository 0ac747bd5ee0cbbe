"""GET/POST /files: downloads, uploads (raw, multipart, gzip) and signed URLs."""

from __future__ import annotations

import gzip
import hashlib
import os
import pwd
import time
from pathlib import Path

import httpx
from e2b.sandbox.signature import get_signature

from .envd_testlib import TOKEN, Envd, Rpc


def test_raw_upload_and_download(rpc: Rpc, workdir: Path) -> None:
    target = workdir / "deep" / "er" / "notes.txt"
    resp = rpc.http.post(
        "/files",
        params={"path": str(target)},
        content=b"hello files",
        headers={"content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200
    assert resp.json() == [{"name": "notes.txt", "type": "file", "path": str(target)}]
    assert target.read_bytes() == b"hello files"
    got = rpc.http.get("/files", params={"path": str(target)})
    assert got.status_code == 200
    assert got.content == b"hello files"
    assert got.headers["content-type"].startswith("text/plain")


def test_ten_mib_round_trip(rpc: Rpc, workdir: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    target = workdir / "big.bin"
    started = time.monotonic()
    resp = rpc.http.post(
        "/files",
        params={"path": str(target)},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200
    got = rpc.http.get("/files", params={"path": str(target)})
    elapsed = time.monotonic() - started
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    assert got.headers["content-length"] == str(len(data))
    assert elapsed < 5, elapsed


def test_multipart_several_files(rpc: Rpc, workdir: Path) -> None:
    one, two = workdir / "one.txt", workdir / "sub" / "two.bin"
    resp = rpc.http.post(
        "/files",
        files=[
            ("file", (str(one), b"first")),
            ("other", ("ignored", b"not a file field")),
            ("file", (str(two), os.urandom(300_000))),
        ],
    )
    assert resp.status_code == 200, resp.text
    assert [e["path"] for e in resp.json()] == [str(one), str(two)]
    assert one.read_bytes() == b"first"
    assert two.stat().st_size == 300_000


def test_multipart_with_path_param_and_duplicate(rpc: Rpc, workdir: Path) -> None:
    target = workdir / "named.txt"
    resp = rpc.http.post("/files", params={"path": str(target)}, files={"file": ("x", b"abc")})
    assert resp.status_code == 200
    assert target.read_bytes() == b"abc"
    resp = rpc.http.post(
        "/files",
        params={"path": str(target)},
        files=[("file", ("a", b"1")), ("file", ("b", b"2"))],
    )
    assert resp.status_code == 400


def test_gzip_upload_and_download(rpc: Rpc, workdir: Path) -> None:
    text = b"compress me please\n" * 5000
    target = workdir / "z.txt"
    resp = rpc.http.post(
        "/files",
        params={"path": str(target)},
        content=gzip.compress(text),
        headers={"content-type": "application/octet-stream", "content-encoding": "gzip"},
    )
    assert resp.status_code == 200
    assert target.read_bytes() == text
    raw = rpc.http.get("/files", params={"path": str(target)}, headers={"accept-encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.content == text  # httpx decodes it
    assert int(raw.num_bytes_downloaded) < len(text) // 10
    plain = rpc.http.get(
        "/files", params={"path": str(target)}, headers={"accept-encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert plain.content == text


def test_download_errors(rpc: Rpc, workdir: Path) -> None:
    resp = rpc.http.get("/files", params={"path": str(workdir / "missing")})
    assert resp.status_code == 404
    assert resp.json()["code"] == 404
    assert "does not exist" in resp.json()["message"]
    resp = rpc.http.get("/files", params={"path": str(workdir)})
    assert resp.status_code == 400
    assert resp.json()["code"] == 400
    resp = rpc.http.get("/files", params={"path": "/etc/hostname", "username": "no-such-user"})
    assert resp.status_code == 401


def test_upload_errors(rpc: Rpc, workdir: Path) -> None:
    octet = {"content-type": "application/octet-stream"}
    assert rpc.http.post("/files", content=b"x", headers=octet).status_code == 400
    resp = rpc.http.post("/files", params={"path": str(workdir)}, content=b"x", headers=octet)
    assert resp.status_code == 400
    resp = rpc.http.post(
        "/files",
        params={"path": str(workdir / "a")},
        content=b"x",
        headers={"content-type": "text/plain"},
    )
    assert resp.status_code == 400
    (workdir / "plainfile").write_text("x")
    resp = rpc.http.post(
        "/files", params={"path": str(workdir / "plainfile" / "child")}, content=b"x", headers=octet
    )
    assert resp.status_code >= 400


def test_upload_owner_is_requested_user(rpc: Rpc, workdir: Path) -> None:
    workdir.chmod(0o777)
    target = workdir / "owned" / "by-nobody.txt"
    resp = rpc.http.post(
        "/files",
        params={"path": str(target), "username": "nobody"},
        content=b"x",
        headers={"content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200
    expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert target.stat().st_uid == expected
    assert target.parent.stat().st_uid == expected


def test_signed_urls(envd: Envd, workdir: Path) -> None:
    target = workdir / "signed.txt"
    target.write_text("signed content")
    path = str(target)
    sig = get_signature(path, "read", None, TOKEN)
    ok = httpx.get(envd.url + "/files", params={"path": path, "signature": sig["signature"]})
    assert ok.status_code == 200 and ok.text == "signed content"
    # Wrong operation, tampered path, expired: all refused.
    write_sig = get_signature(path, "write", None, TOKEN)["signature"]
    assert (
        httpx.get(envd.url + "/files", params={"path": path, "signature": write_sig}).status_code
        == 401
    )
    assert (
        httpx.get(
            envd.url + "/files", params={"path": path + "x", "signature": sig["signature"]}
        ).status_code
        == 401
    )
    expired = get_signature(path, "read", None, TOKEN, -10)
    resp = httpx.get(
        envd.url + "/files",
        params={
            "path": path,
            "signature": expired["signature"],
            "signature_expiration": str(expired["expiration"]),
        },
    )
    assert resp.status_code == 401
    up = get_signature(str(workdir / "up.txt"), "write", "nobody", TOKEN, 60)
    resp = httpx.post(
        envd.url + "/files",
        params={
            "path": str(workdir / "up.txt"),
            "username": "nobody",
            "signature": up["signature"],
            "signature_expiration": str(up["expiration"]),
        },
        files={"file": ("up.txt", b"via signed url")},
    )
    assert resp.status_code == 200, resp.text
    assert (workdir / "up.txt").read_bytes() == b"via signed url"


def test_metadata_headers(rpc: Rpc, workdir: Path) -> None:
    target = workdir / "meta.txt"
    resp = rpc.http.post(
        "/files",
        params={"path": str(target)},
        content=b"x",
        headers={"content-type": "application/octet-stream", "X-Metadata-Owner-Team": "Blue"},
    )
    if resp.status_code == 500:
        # Filesystems without user xattrs refuse metadata outright.
        assert "metadata" in resp.json()["message"]
        return
    assert resp.json()[0]["metadata"] == {"owner-team": "Blue"}
    entry = rpc.call("filesystem.Filesystem/Stat", {"path": str(target)})["entry"]
    assert entry["metadata"] == {"owner-team": "Blue"}
