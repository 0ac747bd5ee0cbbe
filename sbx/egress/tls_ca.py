"""The per-sandbox certificate authority for TLS interception.

Each sandbox gets its own CA (EC P-256), made when it starts; the private
key stays in a root-only directory on the host, outside anything the
sandbox can read, and the certificate goes into the sandbox's trust store.
A CA per sandbox means one sandbox's trust never lets another's traffic be
read, and deleting the sandbox's directory retires the key. Leaf
certificates for intercepted host names are issued on first use and kept
(with their SSL contexts) for the sandbox's life."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.rename(path)


@dataclass
class SandboxCA:
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, directory: Path, sandbox_id: str) -> tuple[SandboxCA, bool]:
        """The sandbox's CA from directory, made there if absent; the flag
        says it is new (and so not yet in the sandbox's trust store)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return cls(directory, cert, key), False
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sbx egress"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sbx egress CA {sandbox_id}"),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key), True

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for host signed by this CA,
        speaking HTTP/1.1 only (the interceptor relays HTTP/1.1)."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is not None:
                return ctx
            path = self._leaf(host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(path)
            ctx.set_alpn_protocols(["http/1.1"])
            self._contexts[host] = ctx
            return ctx

    def _leaf(self, host: str) -> Path:
        leaf_dir = self.directory / "leaf"
        leaf_dir.mkdir(exist_ok=True, mode=0o700)
        path = leaf_dir / (hashlib.sha256(host.encode()).hexdigest()[:32] + ".pem")
        if path.exists():
            return path
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            # Below the 398 days clients accept for a leaf.
            .not_valid_after(now + dt.timedelta(days=390))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        _write_private(path, pem)
        return path


def upstream_context(extra_ca: Path | None) -> ssl.SSLContext:
    """How the interceptor checks real servers: the host's trust store plus
    the operator's extra CA file, with host name checking."""
    ctx = ssl.create_default_context()
    if extra_ca is not None:
        ctx.load_verify_locations(cafile=str(extra_ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
