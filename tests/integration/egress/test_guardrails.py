"""The seed-002 security policy in the egress proxy, against the suite's own
internet: PII leaving a sandbox is redacted, blocked or logged; prompt
injection coming back is blocked, flagged or logged; the audit keeps
findings (never the values) and, when asked, bodies after redaction;
every check is counted for the organisation."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sbx import Sandbox
from tests.integration.egress import inet as n
from tests.integration.egress.conftest import EgressEnv

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
PAYLOAD = json.dumps({"note": f"contact {EMAIL}, card {CARD}", "ok": "nothing here"})


def create(env: EgressEnv, security: dict[str, Any]) -> Sandbox:
    r = httpx.post(f"{env.server.url}/sandboxes", headers=env.headers, timeout=120,
                   json={"template": "", "timeout": 600, "security": security})
    assert r.status_code == 201, r.text
    sb = Sandbox.connect(r.json()["id"], api_url=env.server.url, api_key=env.key)
    env.made.append(sb)
    return sb


@pytest.fixture(scope="module")
def redacting(egress_env: EgressEnv) -> Iterator[Sandbox]:
    yield create(egress_env, {
        "pii": {"enabled": True, "action": "redact", "allow_list": ["ops@example.org"]},
        "injection": {"enabled": True, "action": "block", "threshold": 0.5},
        "audit": {"enabled": True, "include_bodies": True},
    })


@pytest.fixture(scope="module")
def blocking(egress_env: EgressEnv) -> Iterator[Sandbox]:
    yield create(egress_env, {
        "pii": {"enabled": True, "action": "block", "types": ["us_ssn", "email"]},
        "injection": {"enabled": True, "action": "flag", "threshold": 0.5},
    })


def curl(sb: Sandbox, args: str) -> str:
    r = sb.commands.run(f"curl -sS -m 10 -D - {args}", timeout=60)
    assert r.exit_code == 0, r.stderr
    return r.stdout


def upstream_bodies(env: EgressEnv) -> list[str]:
    return [e.get("body", "") for e in env.inet.entries()
            if e.get("kind") == "http" and e.get("local") == n.ECHO_IP]


def last_entry(env: EgressEnv, sb: Sandbox, path_part: str) -> dict[str, Any]:
    for _ in range(40):
        hits = [e for e in env.audit(sb) if path_part in (e.get("path") or "")]
        if hits:
            return hits[-1]
        time.sleep(0.25)
    raise AssertionError(f"no audit entry for {path_part}: {env.audit(sb)[-5:]}")


def test_pii_is_redacted_before_it_leaves(egress_env: EgressEnv, redacting: Sandbox) -> None:
    redacting.files.write("/tmp/payload.json", PAYLOAD)
    out = curl(redacting, "-H 'Content-Type: application/json' --data-binary @/tmp/payload.json "
               "https://echo.test/submit?who=ops@example.org")
    assert out.startswith("HTTP/1.1 200")
    seen = upstream_bodies(egress_env)[-1]
    assert EMAIL not in seen and "4111" not in seen
    assert "[REDACTED:email]" in seen and "[REDACTED:credit_card]" in seen
    assert "nothing here" in seen
    entry = last_entry(egress_env, redacting, "/submit")
    assert entry["decision"] == "allow"
    assert entry["findings"]["email"] == 1 and entry["findings"]["credit_card"] == 1
    # The allow-listed address in the query passed as it was.
    assert "ops@example.org" in entry["path"]
    # Bodies are kept (include_bodies), after redaction: the values never.
    assert "[REDACTED:email]" in entry["request_body"]
    assert EMAIL not in json.dumps(egress_env.audit(redacting))


def test_injection_is_blocked_and_clean_pages_pass(
        egress_env: EgressEnv, redacting: Sandbox) -> None:
    out = curl(redacting, "https://echo.test/page?kind=inject")
    assert out.startswith("HTTP/1.1 403") and "security policy" in out
    assert "Ignore all previous" not in out
    entry = last_entry(egress_env, redacting, "kind=inject")
    assert entry["decision"] == "deny" and entry["rule"].startswith("injection:")
    assert entry["findings"]["injection_score"] >= 0.5
    # Compressed on the wire, judged after decompression.
    out = curl(redacting, "-H 'Accept-Encoding: gzip, br' https://echo.test/page?kind=inject"
               "\\&gzip=1")
    assert out.startswith("HTTP/1.1 403")
    out = curl(redacting, "https://echo.test/page?kind=benign")
    assert out.startswith("HTTP/1.1 200") and "Release notes" in out
    assert last_entry(egress_env, redacting, "kind=benign")["decision"] == "allow"
    # Plain HTTP goes through the same guardrails.
    out = curl(redacting, "http://echo.test/page?kind=inject")
    assert out.startswith("HTTP/1.1 403")


def test_block_and_flag_actions(egress_env: EgressEnv, blocking: Sandbox) -> None:
    before = len(upstream_bodies(egress_env))
    out = curl(blocking, f"--data 'ssn={SSN}' https://echo.test/form")
    assert out.startswith("HTTP/1.1 403") and "pii:us_ssn" in out
    # Nothing reached the upstream.
    assert len(upstream_bodies(egress_env)) == before
    # Types not named in the policy are not looked for.
    out = curl(blocking, f"--data 'card={CARD.replace(' ', '')}' https://echo.test/form2")
    assert out.startswith("HTTP/1.1 200")
    # Flag: the response arrives, marked.
    out = curl(blocking, "https://echo.test/page?kind=inject")
    assert out.startswith("HTTP/1.1 200")
    assert "x-sbx-injection-score:" in out.lower()
    entry = last_entry(egress_env, blocking, "kind=inject")
    assert entry["decision"] == "allow" and entry["findings"]["injection_score"] >= 0.5
    # No include_bodies: no bodies in the log.
    assert "request_body" not in entry and "response_body" not in entry


def test_guardrail_checks_are_counted_for_the_organisation(
        egress_env: EgressEnv, redacting: Sandbox) -> None:
    curl(redacting, "https://echo.test/page?kind=benign")
    with sqlite3.connect(egress_env.server.data_dir / "sbx.db") as db:
        org_id = db.execute("SELECT org_id FROM sandboxes WHERE id = ?",
                            (redacting.sandbox_id,)).fetchone()[0]
        for _ in range(40):
            total = db.execute("SELECT COALESCE(SUM(checks), 0) FROM guardrail_usage "
                               "WHERE org_id = ?", (org_id,)).fetchone()[0]
            if total >= 2:
                break
            time.sleep(0.25)
    # At least this request's PII scan and its response's injection score.
    assert total >= 2
    with sqlite3.connect(egress_env.server.data_dir / "sbx.db") as db:
        name = db.execute("SELECT name FROM orgs WHERE id = ?", (org_id,)).fetchone()[0]
    out = egress_env.server.admin("org", "usage", name)
    last = out.strip().splitlines()[-1]
    assert last.startswith("total guardrail_checks=")
    # Later batches may have landed since: never fewer.
    assert int(last.split("=")[1]) >= total


def test_seed_002_audit_route(egress_env: EgressEnv, redacting: Sandbox) -> None:
    curl(redacting, "https://echo.test/page?kind=benign")
    with sqlite3.connect(egress_env.server.data_dir / "sbx.db") as db:
        token = db.execute("SELECT proxy_token FROM sandboxes WHERE id = ?",
                           (redacting.sandbox_id,)).fetchone()[0]
    url = f"{egress_env.server.url}/sandboxes/{redacting.sandbox_id}/audit"
    by_key = httpx.get(url, headers=egress_env.headers, params={"limit": 1000}).json()
    by_token = httpx.get(url, headers={"X-Security-Proxy-Token": token},
                         params={"limit": 1000}).json()
    assert by_key["entries"] and by_key["entries"][:5] == by_token["entries"][:5]
    assert any("kind=benign" in (e["path"] or "") for e in by_key["entries"])
    r = httpx.get(url, headers={"X-Security-Proxy-Token": "spt_wrong"})
    assert r.status_code == 404 and set(r.json()) == {"code", "message"}
