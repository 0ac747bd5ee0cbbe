"""The HTTP layer, authentication and the small plain endpoints."""

from __future__ import annotations

import json
import socket
import time

import httpx

from .envd_testlib import TOKEN, Envd, Rpc


def raw_exchange(envd: Envd, data: bytes, expect_responses: int = 1) -> bytes:
    """Send raw bytes, read until ``expect_responses`` complete responses arrived."""
    with socket.create_connection(("127.0.0.1", envd.port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while buf.count(b"HTTP/1.") < expect_responses or not _complete(buf, expect_responses):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def _complete(buf: bytes, n: int) -> bool:
    """True when the last of ``n`` Content-Length responses is fully in ``buf``."""
    parts = buf.split(b"HTTP/1.1 ")[1:]
    if len(parts) < n:
        return False
    head, sep, body = parts[-1].partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_health_needs_no_token(envd: Envd) -> None:
    resp = httpx.get(envd.url + "/health")
    assert resp.status_code == 204
    assert resp.content == b""


def test_rpc_without_token_is_unauthenticated(envd: Envd) -> None:
    for headers in ({}, {"X-Access-Token": "wrong"}):
        resp = httpx.post(
            envd.url + "/process.Process/List",
            content=b"{}",
            headers={"content-type": "application/json", **headers},
        )
        assert resp.status_code == 401
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["code"] == "unauthenticated"


def test_streaming_rpc_without_token_is_unauthenticated(envd: Envd) -> None:
    resp = httpx.post(
        envd.url + "/process.Process/Start",
        content=b"\x00\x00\x00\x00\x02{}",
        headers={"content-type": "application/connect+json"},
    )
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthenticated"


def test_plain_endpoints_without_token_are_401(envd: Envd) -> None:
    for method, path in (
        ("GET", "/envs"),
        ("GET", "/files?path=/etc/hostname"),
        ("POST", "/files?path=/tmp/x"),
        ("GET", "/metrics"),
    ):
        resp = httpx.request(method, envd.url + path, headers={"X-Access-Token": "nope"})
        assert resp.status_code == 401, path
        assert resp.json()["code"] == 401


def test_unknown_route_and_wrong_content_type(rpc: Rpc) -> None:
    assert rpc.http.get("/nope").status_code == 404
    resp = rpc.http.post(
        "/process.Process/List", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert resp.status_code == 415
    resp = rpc.http.get("/process.Process/List")
    assert resp.status_code == 405
    resp = rpc.unary("process.Process/NoSuchMethod", {})
    assert resp.status_code == 501
    assert resp.json()["code"] == "unimplemented"


def test_invalid_json_is_invalid_argument(rpc: Rpc) -> None:
    resp = rpc.http.post(
        "/filesystem.Filesystem/Stat",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["code"] == "invalid_argument"


def test_keep_alive_pipelining_and_chunked_request_body(envd: Envd) -> None:
    body = b'{"path": "/"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    first = (
        b"POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"X-Access-Token: " + TOKEN.encode() + b"\r\n\r\n" + chunked
    )
    second = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    third = (
        b"POST /process.Process/List HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nX-Access-Token: " + TOKEN.encode() + b"\r\n\r\n{}"
    )
    out = raw_exchange(envd, first + second + third, expect_responses=3)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert b"HTTP/1.1 204 No Content" in out
    assert b'"path":"/"' in out
    assert b'{"processes":' in out


def test_expect_continue_and_http10(envd: Envd) -> None:
    body = b'{"path": "/tmp"}'
    head = (
        b"POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\nX-Access-Token: %s\r\n\r\n" % (len(body), TOKEN.encode())
    )
    with socket.create_connection(("127.0.0.1", envd.port), timeout=5) as s:
        s.sendall(head)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 OK")
    out = raw_exchange(envd, b"GET /health HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 204")
    assert b"Connection: close" in out


def test_malformed_request_is_400(envd: Envd) -> None:
    out = raw_exchange(envd, b"THIS IS NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


def test_unary_round_trip_is_fast(envd: Envd) -> None:
    request = (
        b"POST /process.Process/List HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nX-Access-Token: " + TOKEN.encode() + b"\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", envd.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timings = []
        for _ in range(60):
            start = time.perf_counter()
            s.sendall(request)
            buf = b""
            while not _complete(buf, 1):
                buf += s.recv(65536)
            timings.append(time.perf_counter() - start)
    timings.sort()
    median = timings[len(timings) // 2]
    assert median < 0.002, f"median unary round trip {median * 1000:.2f} ms"


def test_metrics_and_envs(rpc: Rpc) -> None:
    metrics = rpc.http.get("/metrics").json()
    assert metrics["cpu_count"] >= 1
    assert metrics["mem_total"] > metrics["mem_used"] > 0
    assert metrics["disk_total"] > 0
    assert isinstance(rpc.http.get("/envs").json(), dict)


def test_concurrent_connections(envd: Envd) -> None:
    sockets = [socket.create_connection(("127.0.0.1", envd.port), timeout=5) for _ in range(30)]
    try:
        for s in sockets:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in sockets:
            assert s.recv(1000).startswith(b"HTTP/1.1 204")
    finally:
        for s in sockets:
            s.close()
    assert json.loads(httpx.get(envd.url + "/envs", headers={"X-Access-Token": TOKEN}).text) == {}
