"""Header transforms and masking; the per-sandbox nft scripts; the CA."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from sbx.egress import transforms as tf
from sbx.egress.tls_ca import SandboxCA
from sbx.node.network import firewall
from sbx.shared.policy import Transform


def t(**kw: object) -> Transform:
    return Transform.model_validate(kw)


def test_apply_strips_injects_and_replaces_what_the_sandbox_sent() -> None:
    headers = [(b"Host", b"a"), (b"Authorization", b"mine"), (b"X-Drop", b"1"),
               (b"Accept-Encoding", b"gzip")]
    out = tf.apply(headers, [t(domain="a", inject_headers={"Authorization": "Bearer s3cret"},
                               strip_headers=["x-drop"])])
    assert (b"Authorization", b"Bearer s3cret") in out
    assert not any(v == b"mine" for _, v in out)
    assert not any(n.lower() == b"x-drop" for n, _ in out)
    assert (b"accept-encoding", b"identity") in out
    assert tf.apply(headers, []) == headers


def test_masker_finds_secrets_across_chunk_boundaries_and_keeps_lengths() -> None:
    secret = "Bearer s3cret/value"
    m = tf.Masker(tf.secrets_of([t(domain="a", inject_headers={"A": secret})]))
    body = b'{"a": "' + secret.replace("/", "\\/").encode() + b'", "b": "' + secret.encode() + b'"}'
    out = b""
    for i in range(0, len(body), 5):
        out += m.feed(body[i:i + 5])
    out += m.flush()
    assert len(out) == len(body)
    assert b"s3cret" not in out
    url = tf.Masker(tf.secrets_of([t(domain="a", inject_headers={"A": secret})]))
    assert b"s3cret" not in url.mask_once(b"v=Bearer%20s3cret%2Fvalue")
    assert tf.Masker([]).feed(b"plain") == b"plain"


def test_sandbox_scripts_per_mode() -> None:
    ports = firewall.EgressPorts(dns=5353, proxy=8888, log_group=1234)
    r = firewall.SandboxRules("abcd1234", "sxyzabcd1234", "10.1.0.6", "custom",
                              ("10.9.0.0/16", "2001:db8::/32"))
    s = firewall.sandbox_script("sbx_xyz", r, ports)
    assert "add rule inet sbx_xyz g_abcd1234 ip saddr != 10.1.0.6 drop" in s
    assert "ip daddr 10.9.0.0/16 accept" in s
    assert "2001:db8" not in s
    assert "redirect to :8888" in s
    assert 'fwd_map { "sxyzabcd1234" : jump f_abcd1234 }' in s
    deny = firewall.sandbox_script("sbx_xyz", firewall.SandboxRules(
        "abcd1234", "sxyzabcd1234", "10.1.0.6", "deny-all"), ports)
    assert "redirect" not in deny and "jump refuse" in deny
    quiet = firewall.sandbox_script("sbx_xyz", r, firewall.EgressPorts(1, 2, None))
    assert " log " not in quiet
    rm = firewall.remove_script("sbx_xyz", "abcd1234", "sxyzabcd1234")
    assert rm.index("delete element") < rm.index("delete chain")
    base = firewall.ruleset("sbx_xyz", "sxyz", "10.1.0.0/20", ports, ["169.254.0.0/16"],
                            ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"])
    # Overlapping ranges are merged: nft refuses overlapping intervals.
    assert "10.1.0.0/16" not in base.split("private4")[1].split("}")[0]


def test_ca_issues_leaves_that_verify_and_keeps_its_key_private(tmp_path: Path) -> None:
    ca, created = SandboxCA.load_or_create(tmp_path / "egress", "sbx-abcd1234")
    assert created
    again, created = SandboxCA.load_or_create(tmp_path / "egress", "sbx-abcd1234")
    assert not created and again.cert_pem == ca.cert_pem
    assert (tmp_path / "egress" / "ca.key").stat().st_mode & 0o077 == 0
    ctx = ca.server_context("api.example.com")
    assert ca.server_context("api.example.com") is ctx
    leaf = next((tmp_path / "egress" / "leaf").iterdir())
    cert = x509.load_pem_x509_certificate(leaf.read_bytes().split(b"-----END PRIVATE KEY-----")[1])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com"]
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    assert client.get_ca_certs()[0]["subject"][-1][0][1] == "sbx egress CA sbx-abcd1234"
