"""sbx.guard.pii: each detector's positives and hard negatives, the checksums
behind them, resolution of overlaps, allow_list, redact, speed, and floors on
the labelled corpus."""

from __future__ import annotations

import itertools
import time

import pytest

from bench.bench_guard import PII_CORPUS, evaluate_pii, load_jsonl, synthetic_document
from sbx.guard.pii import (
    PII_TYPES,
    Finding,
    find_pii,
    iban_valid,
    ipv6_valid,
    luhn_valid,
    redact,
    shannon_entropy,
    ssn_valid,
)


def found(text: str, types: tuple[str, ...] = PII_TYPES) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in find_pii(text, types)]


def assert_finds(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text), found(text)


# -- checksums and ranges ----------------------------------------------------------------------
@pytest.mark.parametrize("number", ["4111111111111111", "5555555555554444", "378282246310005",
                                    "6011111111111117", "3530111333300000", "0"])
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "5555555555554445", "378282246310006",
                                    "1234567812345678"])
def test_luhn_rejects_a_changed_digit(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize("iban", ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
                                  "NO9386011117947", "gb82 west 1234 5698 7654 32"])
def test_iban_mod97_accepts_valid(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize("iban", [
    "DE89 3704 0044 0532 0130 01",  # mod 97 fails
    "DE88 3704 0044 0532 0130 00",  # check digits changed
    "GB82WEST1234569876543",        # one character short for GB
    "XX82WEST12345698765432",       # no such country
    "DE00370400440532013000",       # check digits 00 never valid
])
def test_iban_rejects_bad_checksum_length_or_country(iban: str) -> None:
    assert not iban_valid(iban)


@pytest.mark.parametrize(("area", "group", "serial"), [
    ("000", "12", "3456"), ("666", "12", "3456"), ("900", "12", "3456"), ("999", "12", "3456"),
    ("123", "00", "4567"), ("123", "45", "0000"), ("078", "05", "1120"),
])
def test_ssn_invalid_ranges(area: str, group: str, serial: str) -> None:
    assert not ssn_valid(area, group, serial)


@pytest.mark.parametrize(("area", "group", "serial"), [("001", "01", "0001"), ("536", "22", "4187"),
                                                      ("899", "99", "9999"), ("665", "12", "3456")])
def test_ssn_valid_ranges(area: str, group: str, serial: str) -> None:
    assert ssn_valid(area, group, serial)


@pytest.mark.parametrize("addr", ["::1", "fe80::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1",
                                  "2001:0db8:0000:0000:0000:ff00:0042:8329"])
def test_ipv6_valid(addr: str) -> None:
    assert ipv6_valid(addr)


@pytest.mark.parametrize("addr", ["1::2::3", "2001:db8:::1", "12345::1", "1:2:3:4:5:6:7",
                                  "::ffff:256.0.2.1"])
def test_ipv6_invalid(addr: str) -> None:
    assert not ipv6_valid(addr)


def test_entropy_of_random_token_exceeds_that_of_words() -> None:
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("k9Qz2LmX8vR4tY7wP1nB6cJ3") > 4.0 > shannon_entropy("passwordpassword")


# -- positives per type ------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("mail maria.gonzalez@northwind-traders.com today", "maria.gonzalez@northwind-traders.com"),
    ('{"email": "priya+billing@example.org"}', "priya+billing@example.org"),
    ("<a href=\"mailto:press@news.example.net\">", "press@news.example.net"),
    ('{"body": "hi\\nk.nakamura@example.jp\\nbye"}', "k.nakamura@example.jp"),
    ("Escalated by o'connor@example.ie today", "o'connor@example.ie"),
])
def test_email_found(text: str, value: str) -> None:
    assert_finds(text, "email", value)


@pytest.mark.parametrize("text", [
    "git@github.com:acme/widgets.git", "logo@2x.png", "npm i lodash@4.17.21",
    "follow @acme_support", "https://user@example.com/path", "alice at example dot com",
])
def test_email_hard_negatives(text: str) -> None:
    assert found(text, ("email",)) == []


@pytest.mark.parametrize(("text", "value"), [
    ("Call (415) 555-0132 now", "(415) 555-0132"),
    ("Mobile: +1 415-555-0187", "+1 415-555-0187"),
    ("Toll free 1-800-555-0199.", "1-800-555-0199"),
    ("Desk 212.555.0143", "212.555.0143"),
    ("London +44 20 7946 0321", "+44 20 7946 0321"),
    ("Büro 030 90182044", "030 90182044"),
    ("Tél. 01 42 68 53 00", "01 42 68 53 00"),
    ("Москва +7 495 123-45-67", "+7 495 123-45-67"),
    ('{"phone": "+14155550163"}', "+14155550163"),
    ('{"phone_number": "4155550174"}', "4155550174"),
    ("Phone: 415 555 0110", "415 555 0110"),
    ("from abroad 0044 20 7946 0999", "0044 20 7946 0999"),
])
def test_phone_found(text: str, value: str) -> None:
    assert_finds(text, "phone", value)


@pytest.mark.parametrize("text", [
    "Order 100234556789 shipped", "at 2024-03-15 10:30:00", "created_at=1710498151",
    "version 10.0.19045.3693", "ISBN 978-0-306-40615-7", "ZIP+4 94105-1234",
    "Throughput 200 300 4000 requests", "Coordinates 37.7749, -122.4194",
    "dates 01.02.2024 and 2024-02-01", "range 555-0100 to 555-0199", "SSN 536-22-4187",
])
def test_phone_hard_negatives(text: str) -> None:
    assert found(text, ("phone",)) == []


@pytest.mark.parametrize(("text", "value"), [
    ("Card 4111 1111 1111 1111 exp 09/27", "4111 1111 1111 1111"),
    ("card=4111-1111-1111-1111;", "4111-1111-1111-1111"),
    ("Amex 3782 822463 10005", "3782 822463 10005"),
    ("MC 2-series 2223003122003222", "2223003122003222"),
    ("Visa 13 4222222222222 ok", "4222222222222"),
    ("Diners 3056 930902 5904", "3056 930902 5904"),
    ("JCB 3530111333300000", "3530111333300000"),
    ('{"card": "6011111111111117"}', "6011111111111117"),
])
def test_credit_card_found(text: str, value: str) -> None:
    assert_finds(text, "credit_card", value)


@pytest.mark.parametrize("text", [
    "Card 4111 1111 1111 1112 (Luhn fails)",
    "Account 1234567812345670 (no issuer uses prefix 1)",
    "trace_id 1710498151123456789",
    "4111 1111 1111 1111 1111 1111",  # too many digits
    "v4111111111111111",              # glued to a word
])
def test_credit_card_hard_negatives(text: str) -> None:
    assert found(text, ("credit_card",)) == []


@pytest.mark.parametrize(("text", "value"), [
    ("SSN: 536-22-4187", "536-22-4187"),
    ('{"ssn": "601-44-2913"}', "601-44-2913"),
    ("SSN 536224188 on file", "536224188"),
    ("Social Security No. 401 22 7789", "401 22 7789"),
    ('"social_security_number": "771203344"', "771203344"),
])
def test_ssn_found(text: str, value: str) -> None:
    assert_finds(text, "us_ssn", value)


@pytest.mark.parametrize("text", [
    "000-12-3456", "666-45-1234", "912-34-5678", "123-00-4567", "123-45-0000", "078-05-1120",
    "Routing number 021000021",  # nine digits without a label
    "Ticket 2024-11-0042",
])
def test_ssn_hard_negatives(text: str) -> None:
    assert found(text, ("us_ssn",)) == []


@pytest.mark.parametrize(("text", "value"), [
    ("IBAN DE89 3704 0044 0532 0130 00.", "DE89 3704 0044 0532 0130 00"),
    ('{"iban": "GB82WEST12345698765432"}', "GB82WEST12345698765432"),
    ("Konto NO9386011117947", "NO9386011117947"),
])
def test_iban_found(text: str, value: str) -> None:
    assert_finds(text, "iban", value)


@pytest.mark.parametrize("text", [
    "DE89 3704 0044 0532 0130 01", "GB82WEST1234569876543 is short", "XX12 3456 7890 1234 5678 90",
    "BIC DEUTDEFF500", "GB82WEST12345698765432X",  # glued: not a whole IBAN
])
def test_iban_hard_negatives(text: str) -> None:
    assert found(text, ("iban",)) == []


@pytest.mark.parametrize(("text", "value"), [
    ("from 10.0.0.1 in 3ms", "10.0.0.1"),
    ("gw 192.168.1.254.", "192.168.1.254"),
    ("listen 172.16.254.3:5432", "172.16.254.3"),
    ("allow 10.20.30.0/24;", "10.20.30.0"),
    ("http://[2001:db8::1]:8443/", "2001:db8::1"),
    ("lo ::1 only", "::1"),
    ("mapped ::ffff:192.0.2.128 seen", "::ffff:192.0.2.128"),
])
def test_ip_found(text: str, value: str) -> None:
    assert_finds(text, "ip_address", value)


@pytest.mark.parametrize("text", [
    "version 1.2.3.4", "v1.2.3", "build 10.0.19045.3693", "256.100.50.25", "OID 1.3.6.1.4.1.311",
    "Chrome/120.0.0.0 Safari", "at 12:30:45", "MAC 00:1A:2B:3C:4D:5E", "std::vector<int>",
    "a[1::2] and a[10::100]", "dead::beef",
])
def test_ip_hard_negatives(text: str) -> None:
    assert found(text, ("ip_address",)) == []


# Made-up values in each provider's format.
SECRETS = [
    "AKIA2E4G6J8L0N2Q4S6U",
    "ASIAZ9Y8X7W6V5U4T3S2",
    "ghp_aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5",
    "gho_Zx8pQ2mL9vR4tY7wK1nB6cJ3dF5hG7jK9mN1",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "sk_live_38AibNyyurlGFb0EkjKWREhb",
    "rk_live_51H8x2LkR9vPq3mZt7YwB6cD",
    "sk_test_iGjlvhkTp3SKQOo6Cd6rvau5",
    "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s",
    "sk-ant-api03-Zx8pQ2mL9vR4tY7wK1nB6cJ3dF5h",
    "sk-kHvRwMzzuVtYkwMJFrCfZ4U2EqkNk6sEr6f4gUy0",
    "AIza378D_Cn511CFUBWkNhBm2bd2AG2-B2TFu2a",
    "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAidXNlci00ODIxIiwgImV4cCI6IDE3MzU2ODk2MDB9.zsJmW3V_RCyAxC36Ztduv8ZsTexbrSos8KHOFYkD2Wg",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_known_secret_shapes_found(secret: str) -> None:
    assert_finds(f"config: {secret}\n", "secret", secret)
    assert_finds(f'{{"value": "{secret}"}}', "secret", secret)


def test_private_key_block_found_whole() -> None:
    block = ("-----BEGIN RSA PRIVATE KEY-----\n"
             "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt\n0gBXKZ9jSGJmtYTn\n"
             "-----END RSA PRIVATE KEY-----")
    assert_finds(f"key.pem:\n{block}\n", "secret", block)
    assert_finds("-----BEGIN OPENSSH PRIVATE KEY----- (truncated)", "secret",
                 "-----BEGIN OPENSSH PRIVATE KEY-----")


@pytest.mark.parametrize(("text", "value"), [
    ("Authorization: Bearer Zx8pQ2mL9vR4tY7wK1nB6cJ3dF5hG7", "Zx8pQ2mL9vR4tY7wK1nB6cJ3dF5hG7"),
    ('"client_secret": "q8Vn2Lx7Kp4Rt9Wm3Zs6Yb1H"', "q8Vn2Lx7Kp4Rt9Wm3Zs6Yb1H"),
    ("api_key=3f2a1b4c5d6e7f8091a2b3c4d5e6f708", "3f2a1b4c5d6e7f8091a2b3c4d5e6f708"),
    ('DB_PASSWORD="Tr0ub4dor-3x!pz"', "Tr0ub4dor-3x!pz"),
    ("postgres://app:S7v9kLq2xW@db.internal:5432/app", "S7v9kLq2xW"),
])
def test_secret_in_context_found(text: str, value: str) -> None:
    assert_finds(text, "secret", value)


@pytest.mark.parametrize("text", [
    '{"request_id": "9b2f6c1e-4d3a-4f5b-8e7d-1a2b3c4d5e6f"}',
    "commit 3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
    '"integrity": "sha512-Zx8pQ2mL9vR4tY7wK1nB6cJ3dF5hG7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s=="',
    '{"data": "VGhlIHF1aWNrIGJyb3duIGZveCBqdW1wcyBvdmVyIHRoZSBsYXp5IGRvZw=="}',
    "path=/usr/local/lib/python3.11/site-packages/requests/adapters.py",
    "docs: https://docs.example.com/guides/getting-started/installation-on-linux",
    "handler = getUserAccountSettingsForOrganization(orgId)",
    "see sk-learn-compatible-estimators-overview",
    "password: ${DB_PASSWORD}",
    "placeholder AKIAXXXXXXXXXXXXXXXX",
    "pk_live_51H8x2LkR9vPq3mZt7YwB6cD is publishable",
    "-----BEGIN PUBLIC KEY-----",
    "https://user:password@example.com/",
])
def test_secret_hard_negatives(text: str) -> None:
    assert found(text, ("secret",)) == []


# -- resolution, allow_list, redact ------------------------------------------------------------
def test_findings_sorted_and_not_overlapping() -> None:
    text = ("mail a@example.com, card 4111 1111 1111 1111, call (415) 555-0132, "
            "ip 10.0.0.1, IBAN DE89 3704 0044 0532 0130 00")
    findings = find_pii(text)
    assert [f.type for f in findings] == ["email", "credit_card", "phone", "ip_address", "iban"]
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start


def test_card_is_not_also_a_phone() -> None:
    assert found("4111 1111 1111 1111") == [("credit_card", "4111 1111 1111 1111")]
    assert found("4111-1111-1111-1111") == [("credit_card", "4111-1111-1111-1111")]


def test_iban_wins_over_card_digits_inside_it() -> None:
    # This IBAN's BBAN holds "5751 7482 8740 6973", which alone is a valid card
    # number (Maestro prefix 57, Luhn passes).
    text = "IBAN DE78 5751 7482 8740 6973 87"
    assert found("5751 7482 8740 6973") == [("credit_card", "5751 7482 8740 6973")]
    assert found(text, ("credit_card",)) == [("credit_card", "5751 7482 8740 6973")]
    assert found(text) == [("iban", "DE78 5751 7482 8740 6973 87")]


def test_url_password_is_a_secret_not_an_email() -> None:
    assert found("postgres://app:S7v9kLq2xW@db.example.com/app") == [("secret", "S7v9kLq2xW")]


def test_types_restricts_detectors_and_rejects_unknown() -> None:
    text = "a@example.com 10.0.0.1"
    assert found(text, ("ip_address",)) == [("ip_address", "10.0.0.1")]
    assert find_pii(text, ()) == []
    with pytest.raises(ValueError, match="unknown PII types"):
        find_pii(text, ("email", "passport"))


def test_allow_list_skips_exact_values_and_emails_case_insensitively() -> None:
    text = "Write to Support@Example.com or bob@example.com from 10.0.0.1 or 10.0.0.2"
    kept = [text[f.start : f.end] for f in find_pii(text, allow_list=["support@example.com",
                                                                      "10.0.0.1"])]
    assert kept == ["bob@example.com", "10.0.0.2"]
    # Not case-insensitive beyond emails, and not a substring match.
    assert len(find_pii("KEY AKIA2E4G6J8L0N2Q4S6U", allow_list=["akia2e4g6j8l0n2q4s6u"])) == 1
    assert len(find_pii("10.0.0.12", allow_list=["10.0.0.1"])) == 1


def test_allow_listed_match_still_claims_its_span() -> None:
    # The allow-listed card is not reported, and its digits do not turn into a phone.
    assert find_pii("4111 1111 1111 1111", allow_list=["4111 1111 1111 1111"]) == []


def test_redact_replaces_each_finding_at_its_offsets() -> None:
    text = "To: ana@example.org, cc: 10.1.2.3; card 4111111111111111."
    findings = find_pii(text)
    assert redact(text, findings) == ("To: [REDACTED:email], cc: [REDACTED:ip_address]; "
                                      "card [REDACTED:credit_card].")
    assert redact(text, []) == text
    assert redact("abc", [Finding("secret", 0, 3)]) == "[REDACTED:secret]"


def test_redact_merges_overlapping_findings_without_leaking() -> None:
    text = "0123456789"
    out = redact(text, [Finding("phone", 2, 6), Finding("secret", 4, 9), Finding("email", 0, 1)])
    assert out == "[REDACTED:email]1[REDACTED:phone]9"


def test_offsets_are_code_points_in_unicode_text() -> None:
    text = ("Grüße aus Zürich 🇨🇭 — schreib an jürgen@example.de oder lena@example.ch, "
            "☎ +41 44 668 18 00")
    got = found(text)
    assert ("email", "lena@example.ch") in got
    assert ("phone", "+41 44 668 18 00") in got
    # The local part "jürgen" is not ASCII: not reported, and "rgen@..." is not either.
    assert all(not v.endswith("rgen@example.de") for _, v in got)
    redacted = redact(text, find_pii(text))
    assert "lena@example.ch" not in redacted and redacted.startswith("Grüße aus Zürich 🇨🇭")


def test_lone_surrogates_from_undecodable_bytes_are_harmless() -> None:
    text = b"\xff\xfe ana@example.org \x80".decode("utf-8", "surrogateescape")
    assert found(text) == [("email", "ana@example.org")]


def test_scanning_a_mebibyte_is_fast() -> None:
    doc = synthetic_document()
    find_pii(doc)  # warm up
    t0 = time.perf_counter()
    find_pii(doc)
    assert time.perf_counter() - t0 < 1.0


# -- the labelled corpus -----------------------------------------------------------------------
def test_corpus_precision_and_recall_floors() -> None:
    corpus = load_jsonl(PII_CORPUS)
    assert len(corpus) >= 150
    assert sum(1 for line in corpus if not line["labels"]) >= 50
    results = evaluate_pii(corpus)
    for pii_type in PII_TYPES:
        c = results[pii_type]
        assert c.tp >= 10, pii_type
        assert c.precision >= 0.9, (pii_type, c)
        assert c.recall >= 0.9, (pii_type, c)
    assert results["all"].f1 >= 0.95, results["all"]
