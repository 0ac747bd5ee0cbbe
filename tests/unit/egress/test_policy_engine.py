"""The decision function: every rule of the security model, in order."""

from __future__ import annotations

import pytest

from sbx.egress.policy_engine import (
    CompiledPolicy,
    Ranges,
    compile_policy,
    decide,
    decide_dns,
    normalise_host,
)
from sbx.shared.policy import NetworkPolicy

RANGES = Ranges.for_node("10.231.0.0/16", ["192.0.2.0/24"])


def pol(**kw: object) -> CompiledPolicy:
    return compile_policy(NetworkPolicy.model_validate(kw, strict=False), RANGES)


ALLOW_ALL = pol(mode="allow-all")
DENY_ALL = pol(mode="deny-all")
CUSTOM = pol(mode="custom", allow_domains=["api.example.com", "*.wild.example"],
             allow_cidrs=["10.9.0.0/16", "203.0.113.0/24"])


@pytest.mark.parametrize("policy", [ALLOW_ALL, DENY_ALL, CUSTOM])
@pytest.mark.parametrize("ip,rule", [
    ("169.254.169.254", "never:169.254.0.0/16"),
    ("10.231.0.6", "never:10.231.0.0/16"),
    ("127.0.0.1", "never:127.0.0.0/8"),
    ("224.0.0.1", "never:224.0.0.0/3"),
    ("255.255.255.255", "never:224.0.0.0/3"),
    ("::1", "never:ipv6"),
    ("2001:db8::1", "never:ipv6"),
])
def test_never_reach_in_every_mode(policy: CompiledPolicy, ip: str, rule: str) -> None:
    d = decide(policy, "api.example.com", ip, 443)
    assert not d.allow and d.rule == rule


def test_allow_all_is_the_internet_without_private_ranges() -> None:
    assert decide(ALLOW_ALL, None, "198.18.0.10", 22).allow
    for ip in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "192.0.2.1"):
        d = decide(ALLOW_ALL, "x.example", ip, 443)
        assert not d.allow and d.rule.startswith("private:"), ip


def test_deny_all_refuses_everything() -> None:
    assert decide(DENY_ALL, "api.example.com", "198.18.0.10", 443).rule == "deny-all"


def test_custom_domains_only_on_web_ports_and_marked_by_domain() -> None:
    d = decide(CUSTOM, "api.example.com", "198.18.0.10", 443)
    assert d.allow and d.by_domain and d.rule == "domain:api.example.com"
    assert decide(CUSTOM, "API.Example.COM.", "198.18.0.10", 80).allow
    assert decide(CUSTOM, "api.example.com", "198.18.0.10", 8443).rule == "domain-port"
    assert decide(CUSTOM, "evil.example.com", "198.18.0.10", 443).rule == "not-allowed"
    assert decide(CUSTOM, None, "198.18.0.10", 443).rule == "no-host"


def test_wildcards_match_subdomains_not_the_apex_nor_lookalikes() -> None:
    assert decide(CUSTOM, "a.wild.example", "198.18.0.1", 443).rule == "domain:*.wild.example"
    assert decide(CUSTOM, "a.b.wild.example", "198.18.0.1", 443).allow
    assert not decide(CUSTOM, "wild.example", "198.18.0.1", 443).allow
    assert not decide(CUSTOM, "evilwild.example", "198.18.0.1", 443).allow
    assert not decide(CUSTOM, "wild.example.evil", "198.18.0.1", 443).allow


def test_cidrs_allow_any_port_and_unlock_named_private_ranges_only() -> None:
    d = decide(CUSTOM, None, "10.9.1.1", 5432)
    assert d.allow and d.rule == "cidr:10.9.0.0/16" and not d.by_domain
    assert decide(CUSTOM, None, "203.0.113.7", 22).allow
    # An allowed domain never opens a private address (DNS rebinding).
    assert decide(CUSTOM, "api.example.com", "10.8.0.1", 443).rule == "private:10.0.0.0/8"
    # Nor does a CIDR open the never list.
    wide = pol(mode="custom", allow_cidrs=["0.0.0.0/0"])
    assert decide(wide, None, "169.254.169.254", 80).rule == "never:169.254.0.0/16"
    assert decide(wide, None, "10.231.0.2", 80).rule == "never:10.231.0.0/16"


def test_ip_literals_are_not_host_names() -> None:
    assert normalise_host("198.18.0.10") is None
    assert normalise_host("[::1]") is None
    assert decide(pol(mode="custom", allow_domains=["a.example"]), "198.18.0.10",
                  "198.18.0.10", 443).rule == "no-host"
    assert normalise_host("bad name") is None
    assert normalise_host("ex\u00e4mple.com") is None


def test_dns_decisions() -> None:
    assert decide_dns(DENY_ALL, "api.example.com").rule == "deny-all"
    assert decide_dns(ALLOW_ALL, "anything.example").allow
    assert decide_dns(CUSTOM, "api.example.com").allow
    assert decide_dns(CUSTOM, "x.wild.example").allow
    tunnel = decide_dns(CUSTOM, "aGVsbG8gd29ybGQ.exfil.attacker.example")
    assert not tunnel.allow and tunnel.rule == "not-allowed"
    # Reverse lookups: only allow-all, only for addresses it may reach.
    assert decide_dns(ALLOW_ALL, "10.18.198.198.in-addr.arpa").allow
    assert not decide_dns(ALLOW_ALL, "254.169.254.169.in-addr.arpa").allow
    assert not decide_dns(ALLOW_ALL, "1.0.0.10.in-addr.arpa").allow
    assert not decide_dns(CUSTOM, "10.18.198.198.in-addr.arpa").allow


def test_transforms_match_exact_and_wildcard_in_order() -> None:
    p = pol(mode="allow-all", transforms=[
        {"domain": "api.example.com", "inject_headers": {"A": "1"}},
        {"domain": "*.example.com", "strip_headers": ["B"]},
    ])
    assert [t.domain for t in p.transforms_for("api.example.com")] == [
        "api.example.com", "*.example.com"]
    assert [t.domain for t in p.transforms_for("x.example.com")] == ["*.example.com"]
    assert p.transforms_for("example.com") == []
    assert p.transforms_for(None) == []
