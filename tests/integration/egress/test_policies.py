"""What each mode lets through (the positive side of the escape probes, so
those cannot pass by accident), credential brokering end to end, policy
changes at runtime, the audit route, and the lifecycle of the rules."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import httpx
import pytest

from sbx import Sandbox
from tests.integration.egress import inet as n
from tests.integration.egress.conftest import (
    SECRET,
    SECRET_KEY,
    EgressEnv,
    run_probes,
)
from tests.integration.egress.inet import wait_for
from tests.integration.server import Server, leaks

pytestmark = pytest.mark.integration


def get(ip: str, host: str, path: str = "/", **kw: Any) -> dict[str, Any]:
    return {"kind": "http", "ip": ip, "port": kw.pop("port", 80),
            "requests": [f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"], **kw}


def ok_ids(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    return {k: bool(v.get("ok")) for k, v in results.items()}


# -- what gets through -------------------------------------------------------------------------
def test_allow_all_reaches_the_internet_on_any_port(
        egress_env: EgressEnv, mode_sandboxes: dict[str, Sandbox]) -> None:
    res = run_probes(mode_sandboxes["allow-all"], [
        {"id": "http", **get(n.DENIED_IP, "denied.test")},
        {"id": "https", "kind": "tls", "ip": n.DENIED_IP, "port": 443, "sni": "denied.test",
         "data": "GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n"},
        {"id": "ip-literal", **get(n.DENIED_IP, n.DENIED_IP)},
        {"id": "tcp", "kind": "tcp", "ip": n.DENIED_IP, "port": 9000, "data": "hi"},
        {"id": "udp", "kind": "udp", "ip": n.DENIED_IP, "port": 9999, "data": "hi"},
        {"id": "icmp", "kind": "icmp", "ip": n.DENIED_IP, "data": "hi"},
        {"id": "dns", "kind": "dns", "server": "169.254.53.53", "name": "denied.test"},
        {"id": "dns-port", "kind": "dns", "server": n.DNS_IP, "port": 53,
         "name": "denied.test", "tcp": True},
    ])
    assert all(ok_ids(res).values()), res


def test_custom_allows_named_domains_wildcards_and_cidrs_only(
        egress_env: EgressEnv, mode_sandboxes: dict[str, Sandbox]) -> None:
    sb = mode_sandboxes["custom"]
    res = run_probes(sb, [
        {"id": "http", **get(n.ALLOWED_IP, "allowed.test")},
        {"id": "https", "kind": "tls", "ip": n.ALLOWED_IP, "port": 443, "sni": "allowed.test",
         "data": "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"},
        {"id": "wild", "kind": "tls", "ip": n.WILD_IP, "port": 443, "sni": "deep.api.wild.test",
         "data": "GET / HTTP/1.1\r\nHost: deep.api.wild.test\r\n\r\n"},
        {"id": "dns", "kind": "dns", "server": "169.254.53.53", "name": "api.wild.test"},
        {"id": "cidr-tcp", "kind": "tcp", "ip": n.BENCH_IP, "port": 9000, "data": "hi"},
        {"id": "cidr-udp", "kind": "udp", "ip": n.BENCH_IP, "port": 9999, "data": "hi"},
        {"id": "cidr-http-ip", **get(n.BENCH_IP, n.BENCH_IP)},
        {"id": "keepalive", "kind": "http", "ip": n.ALLOWED_IP, "port": 80, "requests": [
            "GET /1 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            "GET /2 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n"]},
        {"id": "ws", "kind": "http", "ip": n.ALLOWED_IP, "port": 80, "requests": [
            "GET /ws HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"]},
        {"id": "h2", "kind": "cmd", "cmd": "curl -sS -m 5 -k --http2 https://allowed.test/h2",
         "expect": "h2 hello from allowed.test"},
        {"id": "curl-dns", "kind": "cmd", "cmd": "curl -sS -m 5 http://allowed.test/x",
         "expect": "hello from allowed.test"},
        # multi.test has two addresses; a connection to either is the name's.
        {"id": "multi", "kind": "cmd", "cmd": "curl -sS -m 5 -k --resolve "
         f"multi.test:443:{n.MULTI_IP2} https://multi.test/m --http1.1", "expect": "hello"},
    ])
    assert all(ok_ids(res).values()), res
    assert res["ws"]["status"] == 101


def test_deny_all_leaves_only_loopback(mode_sandboxes: dict[str, Sandbox]) -> None:
    sb = mode_sandboxes["deny-all"]
    r = sb.commands.run("curl -sS -m 3 http://allowed.test/ ; getent hosts allowed.test; "
                        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
                        "49983), 2); print('loopback ok')\"", timeout=30)
    assert "loopback ok" in r.stdout
    assert "198.18" not in r.stdout


# -- credential brokering ----------------------------------------------------------------------
def test_transforms_inject_strip_and_never_show_the_secret(
        egress_env: EgressEnv, mode_sandboxes: dict[str, Sandbox]) -> None:
    sb = mode_sandboxes["custom"]
    # No -k, no --cacert: the sandbox trusts its egress CA through the system bundle.
    r = sb.commands.run("curl -sS -m 5 -H 'X-Sandbox-Secret: own' -H 'Authorization: mine' "
                        "https://echo.test/headers", timeout=30)
    assert r.exit_code == 0, r.stderr
    seen_by_sandbox = json.loads(r.stdout)
    assert seen_by_sandbox["Authorization"] == "*" * len(SECRET)
    assert seen_by_sandbox["X-Api-Key"] == "*" * len(SECRET_KEY)
    assert "X-Sandbox-Secret" not in seen_by_sandbox
    upstream = [e for e in egress_env.inet.entries()
                if e.get("kind") == "http" and e.get("local") == n.ECHO_IP][-1]
    hd = {k.lower(): v for k, v in upstream["headers"]}
    assert hd["authorization"] == SECRET and hd["x-api-key"] == SECRET_KEY
    assert "x-sandbox-secret" not in hd and "mine" not in json.dumps(upstream)
    # An upstream echoing the secret in a header or body: masked both ways.
    r = sb.commands.run("curl -sS -m 5 -D - 'https://echo.test/echo?v=" +
                        SECRET.replace(" ", "%20") + "'", timeout=30)
    assert SECRET.split()[1] not in r.stdout and "*" * len(SECRET) in r.stdout
    # Other clients: Python's urllib (SSL_CERT_FILE / system bundle), plain HTTP too.
    r = sb.commands.run("python3 -c \"import urllib.request as u; "
                        "print(u.urlopen('https://echo.test/headers').read().decode()); "
                        "print(u.urlopen('http://echo.test/headers').read().decode())\"",
                        timeout=30)
    assert r.exit_code == 0, r.stderr
    assert SECRET_KEY not in r.stdout
    answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [a["X-Api-Key"] for a in answers] == ["*" * len(SECRET_KEY)] * 2
    # The secret exists nowhere in the sandbox: environment, files, trust store.
    r = sb.commands.run("env; cat /proc/1/environ | tr '\\0' '\\n'; "
                        "grep -rIl -e 'Zq8wX2vN4mP7rT1y' -e 'Hd93kLm20PqWzX' / "
                        "--exclude-dir=proc --exclude-dir=sys 2>/dev/null; echo done", timeout=120)
    assert "Zq8wX2vN4mP7rT1y" not in r.stdout and "Hd93kLm20PqWzX" not in r.stdout
    assert r.stdout.strip().endswith("done")
    # Nor in the audit log, nor in the API's answers.
    entries = egress_env.audit(sb)
    assert "Zq8wX2vN4mP7rT1y" not in json.dumps(entries)
    info = httpx.get(f"{egress_env.server.url}/v1/sandbox/{sb.sandbox_id}",
                     headers=egress_env.headers).json()
    assert "Zq8wX2vN4mP7rT1y" not in json.dumps(info)
    assert info["network_policy"]["transforms"][0]["inject_headers"]["Authorization"] == "********"
    assert "Zq8wX2vN4mP7rT1y" not in egress_env.server.tail(10_000_000)


def test_only_transform_domains_are_intercepted(mode_sandboxes: dict[str, Sandbox]) -> None:
    sb = mode_sandboxes["custom"]
    script = (
        "import socket, ssl\n"
        "for host in ('allowed.test', 'echo.test'):\n"
        "    ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "    ctx.verify_mode = ssl.CERT_NONE\n"
        "    s = ctx.wrap_socket(socket.create_connection((host, 443), 5),"
        " server_hostname=host)\n"
        "    der = s.getpeercert(binary_form=True)\n"
        "    print(host, b'sbx egress CA' in der, b'sbx tests CA' in der)\n"
    )
    sb.files.write("/tmp/issuer.py", script)
    r = sb.commands.run("python3 /tmp/issuer.py", timeout=30)
    assert r.stdout.split("\n")[:2] == ["allowed.test False True", "echo.test True False"], r


# -- policy changes at runtime -----------------------------------------------------------------
def test_policy_change_applies_within_a_second_and_cuts_connections(
        egress_env: EgressEnv) -> None:
    sb = egress_env.create({"mode": "allow-all"})
    probe = ("import socket,sys,time\n"
             f"s = socket.create_connection(('{n.DENIED_IP}', 9000), 3)\n"
             "s.sendall(b'open'); s.recv(100)\n"
             "print('connected', flush=True)\n"
             "open('/tmp/ready', 'w').close()\n"
             "t = time.time()\n"
             "try:\n"
             "    while time.time() - t < 20:\n"
             "        s.sendall(b'x'); data = s.recv(100)\n"
             "        if not data: break\n"
             "        time.sleep(0.05)\n"
             "    print('ended', round(time.time() - t, 2))\n"
             "except OSError as e:\n"
             "    print('cut', type(e).__name__)\n")
    sb.files.write("/tmp/hold.py", probe)
    handle = sb.commands.run("python3 /tmp/hold.py > /tmp/hold.out 2>&1", background=True)
    assert wait_for(lambda: sb.files.exists("/tmp/ready"), 10)
    t0 = time.monotonic()
    r = egress_env.put_policy(sb, {"mode": "deny-all"})
    assert r.status_code == 200, r.text
    assert r.json()["network_policy"] == {"mode": "deny-all", "allow_domains": [],
                                          "allow_cidrs": [], "transforms": []}
    blocked = sb.commands.run(
        f"python3 -c \"import socket; socket.create_connection(('{n.DENIED_IP}', 9000), 2)\"",
        timeout=30)
    assert blocked.exit_code != 0 and time.monotonic() - t0 < 3.0
    handle.wait()
    assert "cut" in sb.files.read("/tmp/hold.out"), sb.files.read("/tmp/hold.out")
    # And back: allowed again at once, DNS included.
    t0 = time.monotonic()
    assert egress_env.put_policy(sb, {"mode": "custom", "allow_domains": ["denied.test"]}
                                 ).status_code == 200
    r = sb.commands.run("curl -sS -m 3 http://denied.test/again", timeout=30)
    assert "hello from denied.test" in r.stdout
    assert time.monotonic() - t0 < 3.0
    r = sb.commands.run("curl -sS -m 3 http://allowed.test/no", timeout=30)
    assert "hello" not in r.stdout


def measure_switch(egress_env: EgressEnv, sb: Sandbox) -> float:
    """Seconds from the PUT's answer until a new connection is refused."""
    script = ("import socket,time,sys\n"
              "t = time.time()\n"
              "while time.time() - t < 10:\n"
              "    try:\n"
              f"        socket.create_connection(('{n.DENIED_IP}', 9000), 1).close()\n"
              "    except OSError:\n"
              "        print(time.time()); sys.exit(0)\n"
              "    time.sleep(0.01)\n")
    sb.files.write("/tmp/switch.py", script)
    h = sb.commands.run("python3 /tmp/switch.py > /tmp/switch.out", background=True)
    time.sleep(0.5)
    assert egress_env.put_policy(sb, {"mode": "deny-all"}).status_code == 200
    answered = time.time()
    h.wait()
    return float(sb.files.read("/tmp/switch.out").strip()) - answered


def test_policy_change_latency_is_under_a_second(egress_env: EgressEnv) -> None:
    sb = egress_env.create({"mode": "allow-all"})
    delay = measure_switch(egress_env, sb)
    print(f"policy change took effect {delay * 1000:.0f} ms after the PUT answered")
    assert delay < 1.0


def test_put_policy_validation_and_states(egress_env: EgressEnv) -> None:
    sb = egress_env.create({"mode": "deny-all"})
    url = f"{egress_env.server.url}/v1/sandbox/{sb.sandbox_id}/network_policy"
    h = egress_env.headers
    r = httpx.put(url, headers=h, json={"mode": "sometimes", "allow_cidrs": ["10.0.0.0/33"]})
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"mode", "allow_cidrs.0"}, r.json()
    r = httpx.put(url, headers=h, json={"mode": "allow-all", "allow_domains": ["a.example"]})
    assert r.status_code == 400 and r.json()["message"]
    assert httpx.put(url, headers=h, content=b"not json").status_code == 400
    assert httpx.put(url, headers={"X-API-Key": "nope"}, json={"mode": "deny-all"}
                     ).status_code == 401
    other = egress_env.server.new_org(f"other-{time.time_ns()}")
    assert httpx.put(url, headers={"X-API-Key": other}, json={"mode": "deny-all"}
                     ).status_code == 404
    missing = url.replace(sb.sandbox_id, "sbx-zzzzzzzz")
    assert httpx.put(missing, headers=h, json={"mode": "deny-all"}).status_code == 404
    sb.kill()
    r = httpx.put(url, headers=h, json={"mode": "allow-all"})
    assert r.status_code == 409, r.text


# -- the audit route ---------------------------------------------------------------------------
def test_audit_route_auth_paging_and_contents(egress_env: EgressEnv) -> None:
    sb = egress_env.create({"mode": "custom", "allow_domains": ["allowed.test"]})
    sb.commands.run("curl -sS -m 3 http://allowed.test/audit-me; curl -sS -m 3 -k "
                    "https://allowed.test/; curl -sS -m 3 http://denied.test/; "
                    f"curl -sS -m 3 http://{n.DENIED_IP}:8080/", timeout=60)
    url = f"{egress_env.server.url}/v1/sandbox/{sb.sandbox_id}/audit"
    entries = wait_for(lambda: [e for e in egress_env.audit(sb)
                                if e["port"] == 8080], 5) and egress_env.audit(sb)
    kinds = {(e["protocol"], e["decision"], e["rule"]) for e in entries}
    assert ("http", "allow", "domain:allowed.test") in kinds
    assert ("tls", "allow", "domain:allowed.test") in kinds
    assert ("dns", "deny", "not-allowed") in kinds
    assert ("tcp", "deny", "not-allowed") in kinds
    http_entry = next(e for e in entries if e["path"] == "/audit-me")
    assert http_entry["method"] == "GET" and http_entry["status"] == 200
    assert http_entry["host"] == "allowed.test" and http_entry["ip"] == n.ALLOWED_IP
    assert http_entry["bytes_down"] > 0 and http_entry["time"].endswith("Z")
    tls_entry = next(e for e in entries if e["protocol"] == "tls")
    assert tls_entry["bytes_up"] > 0 and tls_entry["bytes_down"] > 0
    # Paging with the cursor; and from a time on.
    first = httpx.get(url, headers=egress_env.headers, params={"limit": 2}).json()
    assert len(first["entries"]) == 2
    rest = httpx.get(url, headers=egress_env.headers,
                     params={"since": first["next_since"]}).json()
    assert [e["id"] for e in first["entries"] + rest["entries"]] == [e["id"] for e in entries]
    later = httpx.get(url, headers=egress_env.headers,
                      params={"since": entries[-1]["time"]}).json()["entries"]
    assert later and later[-1]["id"] == entries[-1]["id"]
    assert httpx.get(url, headers={"X-Security-Proxy-Token": "spt_wrong"}).status_code == 404
    assert httpx.get(url).status_code == 401
    other = egress_env.server.new_org(f"other-{time.time_ns()}")
    assert httpx.get(url, headers={"X-API-Key": other}).status_code == 404
    bad = httpx.get(url, headers=egress_env.headers, params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "since"
    assert httpx.get(url, headers=egress_env.headers, params={"limit": 0}).status_code == 400


def test_audit_reads_with_the_proxy_token_from_the_database(egress_env: EgressEnv) -> None:
    """The sandbox's security-proxy token (what a seed-002 caller gets at
    create) works instead of a key, for its own sandbox only."""
    import sqlite3

    sb = egress_env.create({"mode": "deny-all"})
    db = sqlite3.connect(egress_env.server.data_dir / "sbx.db")
    try:
        (token,) = db.execute("select proxy_token from sandboxes where id = ?",
                              (sb.sandbox_id,)).fetchone()
    finally:
        db.close()
    sb.commands.run("curl -sS -m 2 http://allowed.test/ || true", timeout=30)
    url = f"{egress_env.server.url}/v1/sandbox/{sb.sandbox_id}/audit"
    entries = wait_for(lambda: httpx.get(url, headers={"X-Security-Proxy-Token": token}
                                         ).json()["entries"], 5)
    assert entries and all(e["decision"] == "deny" for e in entries)
    other = egress_env.made[0].sandbox_id
    r = httpx.get(url.replace(sb.sandbox_id, other), headers={"X-Security-Proxy-Token": token})
    assert r.status_code == 404


# -- lifecycle ---------------------------------------------------------------------------------
def nft_chains(server: Server) -> str:
    return subprocess.run(["nft", "list", "table", "inet", f"sbx_{server.node_tag}"],
                          capture_output=True, text=True).stdout


def test_rules_come_and_go_with_the_sandbox_and_stale_ones_are_reconciled(
        egress_env: EgressEnv) -> None:
    server = egress_env.server
    sb = egress_env.create({"mode": "deny-all"})
    key = sb.sandbox_id[4:]
    assert f"chain f_{key}" in nft_chains(server)
    ca_dir = server.data_dir / "egress" / sb.sandbox_id
    assert (ca_dir / "ca.key").stat().st_mode & 0o077 == 0
    sb.kill()
    assert f"_{key}" not in nft_chains(server)
    assert not ca_dir.exists()
    # Rules nobody owns (a crash between steps, say): the reconciler removes them.
    stale = "zzzz0000"
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
        f"add chain inet sbx_{server.node_tag} g_{stale}\n"
        f"add chain inet sbx_{server.node_tag} f_{stale}\n"
        f"add chain inet sbx_{server.node_tag} n_{stale}\n"
        f'add element inet sbx_{server.node_tag} fwd_map {{ "s{server.node_tag}{stale}" : '
        f"jump f_{stale} }}\n"))
    assert wait_for(lambda: stale not in nft_chains(server), 30), nft_chains(server)
    assert "nft" not in leaks(server.node_tag) or all(
        stale not in c for c in leaks(server.node_tag).get("nft", []))


def test_restart_reapplies_policies(egress_env: EgressEnv) -> None:
    server = egress_env.server
    sb = egress_env.create(
        {"mode": "custom", "allow_domains": ["allowed.test", "echo.test"],
         "transforms": [{"domain": "echo.test", "inject_headers": {"X-Api-Key": SECRET_KEY}}]})
    server.stop()
    server.start()
    with Sandbox.connect(sb.sandbox_id, api_url=server.url, api_key=egress_env.key) as again:
        res = again.commands.run("curl -sS -m 3 http://allowed.test/after-restart; "
                                 "curl -sS -m 3 http://denied.test/; "
                                 f"curl -sS -m 3 http://{n.DENIED_IP}:9000/; "
                                 "curl -sS -m 3 https://echo.test/headers", timeout=60)
    assert "hello from allowed.test" in res.stdout
    assert "hello from denied.test" not in res.stdout and "raw:" not in res.stdout
    assert '"X-Api-Key": "' + "*" * len(SECRET_KEY) in res.stdout, res.stdout + res.stderr
    m = re.search(r"resolver on :(\d+), proxy on :(\d+)", server.tail(20_000))
    assert m is not None
    egress_env.proxy_port, egress_env.dns_port = int(m.group(2)), int(m.group(1))


def test_pause_keeps_the_ca_and_resume_applies_the_stored_policy(egress_env: EgressEnv) -> None:
    sb = egress_env.create(
        {"mode": "custom", "allow_domains": ["echo.test", "allowed.test"],
         "transforms": [{"domain": "echo.test", "inject_headers": {"X-Api-Key": SECRET_KEY}}]})
    before = sb.commands.run("curl -sS -m 5 https://echo.test/headers", timeout=30)
    assert "*" * len(SECRET_KEY) in before.stdout, before.stderr
    ca_dir = egress_env.server.data_dir / "egress" / sb.sandbox_id
    ca = (ca_dir / "ca.pem").read_bytes()
    sb.pause()
    assert (ca_dir / "ca.key").exists()
    assert f"chain f_{sb.sandbox_id[4:]}" not in nft_chains(egress_env.server)
    # Changed while paused: stored, applied when it comes back.
    r = egress_env.put_policy(sb, {
        "mode": "custom", "allow_domains": ["echo.test"],
        "transforms": [{"domain": "echo.test", "inject_headers": {"X-Api-Key": SECRET_KEY}}]})
    assert r.status_code == 200, r.text
    sb.resume()
    assert (ca_dir / "ca.pem").read_bytes() == ca
    after = sb.commands.run("curl -sS -m 5 https://echo.test/headers; "
                            "curl -sS -m 3 http://allowed.test/", timeout=30)
    assert "*" * len(SECRET_KEY) in after.stdout, after.stdout + after.stderr
    assert "hello from allowed.test" not in after.stdout
    sb.kill()
    assert wait_for(lambda: not ca_dir.exists(), 5)
