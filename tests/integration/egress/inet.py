"""The conformance suite's own internet: a network namespace made by the
tests, joined to the host by a veth, holding fake public servers on the
198.18.0.0/15 benchmarking range (never a real host), one private-range
address, an IPv6 address, and a DNS server for the *.test names. A test
CA signs its certificate; sbx trusts that CA through
SBX_EGRESS_UPSTREAM_CA. Everything is removed on exit, also on failure."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER = Path(__file__).with_name("inet_server.py")

HOST_IP = "198.18.0.1"
PEER_IP = "198.18.0.2"
ALLOWED_IP = "198.18.0.10"
WILD_IP = "198.18.0.11"
DENIED_IP = "198.18.0.12"
ECHO_IP = "198.18.0.13"
DOH_IP = "198.18.0.14"
MULTI_IP2 = "198.18.0.15"
BENCH_IP = "198.18.0.16"
DNS_IP = "198.18.0.53"
PRIVATE_HOST_IP = "192.168.213.1"
PRIVATE_IP = "192.168.213.2"
V6_HOST = "fd00:5b::1"
V6_PEER = "fd00:5b::2"
PEER_ADDRS = [PEER_IP, ALLOWED_IP, WILD_IP, DENIED_IP, ECHO_IP, DOH_IP, MULTI_IP2, BENCH_IP,
              DNS_IP]
NAMES = ["allowed.test", "api.wild.test", "deep.api.wild.test", "wild.test", "denied.test",
         "echo.test", "dns.test", "multi.test", "bench.test", "private.test"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA, and one server certificate for every test name and
    address; answers (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sbx tests CA")).issuer_name(_name("sbx tests CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in PEER_ADDRS]
    cert = (
        x509.CertificateBuilder().subject_name(_name("fake internet")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@dataclass
class FakeInternet:
    netns: str
    host_if: str
    log_path: Path
    ca_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _offset: int = field(default=0)

    @property
    def dns(self) -> str:
        return DNS_IP

    def entries(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def seen(self, token: str) -> list[dict[str, Any]]:
        """Every log entry that mentions token anywhere."""
        return [e for e in self.entries() if token in json.dumps(e)]


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def fake_internet(work: Path) -> Iterator[FakeInternet]:
    tag = secrets.token_hex(2)
    netns, host_if = f"sbxt-egr-{tag}", f"sbxtegr{tag}"
    ca_path, cert_path, key_path = make_pki(work / "pki")
    net = FakeInternet(netns, host_if, work / "inet.log", ca_path)
    ns = ["ip", "-n", netns]
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", host_if)
        _run("ip", "addr", "add", f"{PRIVATE_HOST_IP}/24", "dev", host_if)
        _run("ip", "-6", "addr", "add", f"{V6_HOST}/64", "dev", host_if, "nodad")
        _run("ip", "link", "set", host_if, "up")
        for a in PEER_ADDRS:
            _run(*ns, "addr", "add", f"{a}/24", "dev", "eth0")
        _run(*ns, "addr", "add", f"{PRIVATE_IP}/24", "dev", "eth0")
        _run(*ns, "-6", "addr", "add", f"{V6_PEER}/64", "dev", "eth0", "nodad")
        _run(*ns, "link", "set", "eth0", "up")
        _run(*ns, "link", "set", "lo", "up")
        _run(*ns, "route", "add", "default", "via", HOST_IP)
        with open(work / "inet.err", "ab") as err:
            net.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, str(SERVER),
                 str(net.log_path), str(cert_path), str(key_path),
                 ",".join([*PEER_ADDRS, PRIVATE_IP])],
                stdout=subprocess.PIPE, stderr=err,
            )
        assert net.proc.stdout is not None
        line = net.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"fake internet did not start: {(work / 'inet.err').read_text()}")
        yield net
    finally:
        if net.proc is not None:
            net.proc.kill()
            net.proc.wait()
            if net.proc.stdout is not None:
                net.proc.stdout.close()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def wait_for(pred: Any, timeout: float = 5.0, step: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)
