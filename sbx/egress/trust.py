"""Putting the sandbox's egress CA into its trust store.

The certificate (never the key) is written into the sandbox's own writable
layer through envd's `POST /files`, before the sandbox is reported ready:
the template's system bundle with the CA appended replaces
/etc/ssl/certs/ca-certificates.crt (what OpenSSL, curl, Python and most
tools read), and the CA alone goes to /usr/local/share/ca-certificates/
(so `update-ca-certificates` inside keeps it, and Node reads it through
NODE_EXTRA_CA_CERTS). The variables below point the common clients whose
own bundles would ignore the system one (requests/certifi, curl builds,
Node) at those files; they are set in the sandbox's environment at boot."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_FILE = "/usr/local/share/ca-certificates/sbx-egress-ca.crt"

ENV = {
    "REQUESTS_CA_BUNDLE": SYSTEM_BUNDLE,
    "SSL_CERT_FILE": SYSTEM_BUNDLE,
    "CURL_CA_BUNDLE": SYSTEM_BUNDLE,
    "NODE_EXTRA_CA_CERTS": CA_FILE,
}


def files(rootfs: Path, ca_pem: bytes) -> dict[str, bytes]:
    """Path in the sandbox -> content."""
    try:
        bundle = (rootfs / SYSTEM_BUNDLE.lstrip("/")).read_bytes()
    except OSError:
        bundle = b""
    if bundle and not bundle.endswith(b"\n"):
        bundle += b"\n"
    return {SYSTEM_BUNDLE: bundle + ca_pem, CA_FILE: ca_pem}


async def install(host: str, port: int, token: str, content: dict[str, bytes],
                  timeout: float = 10.0) -> None:
    """One multipart upload to envd (as root), raw sockets: this is on the
    create path."""
    boundary = "sbx" + secrets.token_hex(12)
    body = b""
    for path, data in content.items():
        body += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{path}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    head = (
        f"POST /files?username=root HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n"
        f"X-Access-Token: {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        if len(parts) < 2 or parts[1] != b"200":
            rest = await asyncio.wait_for(reader.read(2000), timeout)
            raise RuntimeError(f"installing the egress CA failed: {line!r} {rest[:300]!r}")
    finally:
        writer.close()
