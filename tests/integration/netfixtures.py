"""Test-only network peers: an "internet" host in a network namespace of
the test's own, and listeners on the host. Everything is removed at the end."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Peer:
    ip: str
    port: int


@contextlib.contextmanager
def internet_peer(name: str = "sbxt-inet", host_ip: str = "198.18.0.1",
                  peer_ip: str = "198.18.0.2", port: int = 8080) -> Iterator[Peer]:
    """A netns with an HTTP server, reachable from the host over a veth,
    standing in for a server on the internet (198.18.0.0/15 is the
    benchmarking range: never a real host)."""
    host_if = name[:10] + "-h"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        cmds = [
            ["ip", "netns", "add", name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", name, "addr", "add", f"{peer_ip}/30", "dev", "eth0"],
            ["ip", "-n", name, "link", "set", "eth0", "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "route", "add", "default", "via", host_ip],
        ]
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        server = (
            "import http.server, socketserver\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        body = ('peer saw ' + self.client_address[0]).encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers(); self.wfile.write(body)\n"
            "    def log_message(self, *a): pass\n"
            f"socketserver.TCPServer.allow_reuse_address = True\n"
            f"http.server.HTTPServer(('0.0.0.0', {port}), H).serve_forever()\n"
        )
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{name}", sys.executable,
                                 "-c", server])
        for _ in range(100):
            r = subprocess.run(["nsenter", f"--net=/var/run/netns/{name}", "bash", "-c",
                                f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
            if r.returncode == 0:
                break
            import time
            time.sleep(0.05)
        yield Peer(peer_ip, port)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def host_listener() -> Iterator[int]:
    """A TCP listener on every host address; answers 'host' to anyone."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join()
        srv.close()


def host_ipv4() -> str:
    """The host's primary address (the one its default route uses)."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.250"],
                         capture_output=True, text=True).stdout.split()
    return out[out.index("src") + 1] if "src" in out else "127.0.0.1"
