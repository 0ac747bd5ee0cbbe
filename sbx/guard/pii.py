"""PII and secrets in text a sandbox sends out.

Each detector is a cheap candidate search plus a validator (checksum,
issuer table, separators, context), because a pattern alone cannot tell a
card from an order number or an IBAN from a product code. Candidates of all
detectors are resolved into non-overlapping findings, the more specific
detector winning a conflict, so a card number is never also a phone number.

Speed: CPython's regex engine costs tens of nanoseconds per position when a
pattern opens with a character class, so no detector walks the text that
way. Literal prefixes are found with str.find; digit runs, IBANs and
assigned values are found in a one-byte-per-character "shape" of the text
where character classes become single letters that the engine skips to.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

PII_TYPES = ("email", "phone", "credit_card", "us_ssn", "iban", "ip_address", "secret")


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int


Span = tuple[int, int]


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _shape_table() -> bytes:
    table = bytearray(range(256))
    for lo, hi, cls in (("0", "9", "0"), ("A", "Z", "A"), ("a", "z", "a")):
        for c in range(ord(lo), ord(hi) + 1):
            table[c] = ord(cls)
    for c in b"=:\"'`":  # what may introduce a value
        table[c] = ord("=")
    return bytes(table)


_SHAPE_TABLE = _shape_table()
# Each opens with a literal, which the regex engine finds as fast as str.find.
_LABELLED_SHAPES = (re.compile(rb"000000000(?:0{0,3})(?!0)"), re.compile(rb"000 000 0000(?!0)"),
                    re.compile(rb"000 00 0000(?!0)"))
# Token characters "b", blanks " ", anything else ".".
_TOKEN_SHAPE_TABLE = bytes(
    ord("b") if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/_-.~")
    else ord(" ") if chr(c) in " \t" else ord(".")
    for c in range(256)
)
_LABEL_WINDOW = 48


class _Scan:
    """One text and the passes several detectors share, made on first use."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def shape(self) -> bytes:
        # One byte per code point: anything outside Latin-1 becomes "?".
        return self.text.encode("latin-1", "replace").translate(_SHAPE_TABLE)

    @cached_property
    def bare_numbers(self) -> list[Span]:
        """Digit runs that are a phone or SSN only when labelled as one:
        9-12 digits in one piece, or spaced like 415 555 0132 / 123 45 6789."""
        text, out = self.text, []
        for pattern in _LABELLED_SHAPES:
            for m in pattern.finditer(self.shape):
                start, end = _with_country_one(text, m.start()), m.end()
                if start != m.start() and not _free_left(text, start, _PHONE_LEFT):
                    start = m.start()
                if _free_left(text, start, _PHONE_LEFT) and not _glued(text, end):
                    out.append((start, end))
        return out

    @cached_property
    def token_shape(self) -> bytes:
        return self.text.encode("latin-1", "replace").translate(_TOKEN_SHAPE_TABLE)


Detector = Callable[[_Scan], Iterator[Span]]


def _find_all(text: str, literal: str) -> Iterator[int]:
    i = text.find(literal)
    while i != -1:
        yield i
        i = text.find(literal, i + 1)


def _free_left(text: str, start: int, also: str = "") -> bool:
    """Whether a match at ``start`` begins a token rather than continuing
    one. JSON bodies put values right after escapes such as "\\n", whose
    letter does not count."""
    if start == 0:
        return True
    prev = text[start - 1]
    if prev.isalnum() or prev == "_":
        return prev in "nrt" and text[start - 2 : start - 1] == "\\"
    return prev not in also


def _glued(text: str, end: int) -> bool:
    """Whether a match ending at ``end`` is only the start of a longer token."""
    nxt = text[end : end + 2]
    return bool(nxt) and (nxt[0].isalnum() or nxt[0] == "_" or _SEP_DIGIT.match(nxt) is not None)


_SEP_DIGIT = re.compile(r"[.\-/]\d")
_DIGIT_RUN = re.compile(r"(\d+)")


def _longest_valid_prefix(pattern: re.Pattern[str], text: str, span: Span, left: str,
                          digits: range, valid: Callable[[str, int, int], bool]) -> Iterator[Span]:
    """Matches of ``pattern`` within ``span`` that start a token, each cut
    back at a digit-group boundary to the longest part that has a count of
    digits in ``digits`` and that ``valid`` accepts: a greedy run of digits
    and separators swallows the next number ("415-555-0132 020 7946 0958")."""
    pos, hi = span
    while (m := pattern.search(text, pos, hi)) is not None:
        start = m.start()
        groups = list(_DIGIT_RUN.finditer(m.group()))
        pos = start + groups[0].end()
        if not _free_left(text, start, left):
            continue
        count = sum(g.end() - g.start() for g in groups)
        for g in reversed(groups):
            end = start + g.end()
            if count in digits and valid(text, start, end):
                yield start, end
                pos = end
                break
            count -= g.end() - g.start()
            if count < digits.start:
                break


# -- email -------------------------------------------------------------------------------------
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-'")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24})"
    r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"
)
# "icon@2x.png" and "logo@3x.webp" have the shape of an address.
_FILE_TLDS = _words(
    "png jpg jpeg gif svg webp ico bmp tiff js mjs cjs ts css scss map json lock yml yaml"
)
# An scp/git remote such as "git@github.com:org/repo.git" names a host, not a person.
_SSH_REMOTE = re.compile(r":[\w~./\-]")
# In "https://user:pw@host" the part before "@" is a password, not a mailbox.
_USERINFO_BEFORE = re.compile(r"://[^\s/@]{0,64}:$")


def _local_start(text: str, at: int) -> int | None:
    i = at
    while i > 0 and text[i - 1] in _LOCAL_CHARS and at - i < 64:
        i -= 1
    if i > 0 and text[i - 1] in _LOCAL_CHARS:
        return None
    if text[i - 1 : i] == "\\" and text[i : i + 1] in ("n", "r", "t"):
        i += 1
    while i < at and text[i] == "'":  # 'a@b.com' quoted; o'connor@b.com is an address
        i += 1
    local = text[i:at]
    if not local or local[0] == "." or local[-1] == "." or ".." in local:
        return None
    return i if _free_left(text, i, "/") else None


def _email_at(text: str, at: int) -> Span | None:
    start = _local_start(text, at)
    domain = _DOMAIN.match(text, at + 1) if start is not None else None
    if start is None or domain is None or domain.group(1).lower() in _FILE_TLDS:
        return None
    if _SSH_REMOTE.match(text, domain.end()):
        return None
    if _USERINFO_BEFORE.search(text, max(0, start - 72), start):
        return None
    return start, domain.end()


def _emails(scan: _Scan) -> Iterator[Span]:
    for at in _find_all(scan.text, "@"):
        span = _email_at(scan.text, at)
        if span is not None:
            yield span


# -- phone -------------------------------------------------------------------------------------
_PHONE = re.compile(r"(?:\+[ \u00a0]?|\()?\d[\d \u00a0().\-]{5,24}\d")
_PHONE_SEP = re.compile(r"[ \u00a0]?[\-.][ \u00a0]?|[ \u00a0]?\(|\)[ \u00a0\-.]?|[ \u00a0]")
_PHONE_LEADS = frozenset({"", "(", "+", "+ ", "+\u00a0"})
# Dates, and the dashed shape of a US social security number.
_NOT_PHONE_SHAPES = frozenset({(4, 2, 2), (2, 2, 4), (3, 2, 4)})
# Candidates, each kind found by a pattern with a literal first character.
_INTERNATIONAL_SHAPE = re.compile(rb"\+[ \xa0]?0[0 \xa0().\-]{5,24}0")
_AREA_IN_PARENS_SHAPE = re.compile(rb"\(000\)[ \xa0]?000[ \xa0.\-]0000")
_NANP_SHAPE = re.compile(rb"000[.\-]000[.\-]0000")
# The lookbehind after the literal "0" drops, inside the regex engine, the
# "05-02" of every date; a leading lookbehind would cost the literal search.
_TRUNK_CANDIDATE = re.compile(r"0(?<![\w.\-/+]0)[0-9]{1,4}(?:[ \u00a0.\-][0-9]{2,8}){1,5}")
# A bare digit run or a space-only grouping is a phone only when labelled as one.
_PHONE_WORDS = ("phone", "tel", "mob", "cell", "fax", "call", "sms", "whatsapp", "hotline",
                "contact")
_PHONE_LABEL = re.compile(
    r"(?i)(?<![a-z])(?:phone|telephone|tel|mobile|mob|cell|fax|call|sms|whatsapp|hotline|contact)"
    r"(?:[ _\-]?(?:no|nr|num|number|#))?\.?[\"']?[ \t]*[:=#]?[ \t]*[\"']?(?:(?:is|at|on)[ \t]+)?"
    r"\+?$"
)
# What _nanp and _trunk make of a grouping.
_NO, _IF_LABELLED, _YES = 0, 1, 2


def _phone_marks(seps: list[str]) -> set[str]:
    """The separator kinds outside parentheses: a number uses one kind."""
    return {sep.strip() or " " for sep in seps if "(" not in sep and ")" not in sep}


def _valid_phone(text: str, start: int, end: int, labelled: bool = False) -> bool:
    if _glued(text, end) or text[end : end + 1] in (":", "@", "%"):
        return False
    s = text[start:end]
    parts = _DIGIT_RUN.split(s)
    lead, groups, seps = parts[0], parts[1::2], parts[2:-1:2]
    if lead not in _PHONE_LEADS or s.count("(") != s.count(")"):
        return False
    if tuple(map(len, groups)) in _NOT_PHONE_SHAPES or not all(map(_PHONE_SEP.fullmatch, seps)):
        return False
    if lead.startswith("+"):
        return _international(groups, seps)
    if groups[0].startswith("00") and len(groups[0]) <= 5:
        return len(_phone_marks(seps[1:])) <= 1 and 8 <= len("".join(groups)) - 2 <= 15
    if len(_phone_marks(seps)) > 1:
        return False
    verdict = max(_nanp(groups, seps, lead), _trunk(groups))
    return verdict == _YES or (verdict == _IF_LABELLED and labelled)


def _valid_labelled_phone(text: str, start: int, end: int) -> bool:
    return _valid_phone(text, start, end, labelled=True)


def _international(groups: list[str], seps: list[str]) -> bool:
    """+CC and 7-14 more digits; "+44 (0)20" drops its "(0)". Spaces may mix
    with one other separator ("+7 495 123-45-67")."""
    digits = "".join(g for g, sep in zip(groups, ["", *seps], strict=True)
                     if not (g == "0" and "(" in sep))
    country_code_ok = len(groups) == 1 or len(groups[0]) <= 4
    return (digits[0] != "0" and 8 <= len(digits) <= 15 and country_code_ok
            and len(_phone_marks(seps) - {" "}) <= 1)


def _nanp(groups: list[str], seps: list[str], lead: str) -> int:
    """North American numbers: [1] NXX NXX XXXX, area and exchange not 0/1."""
    if len(groups) == 1:
        run = groups[0][1:] if len(groups[0]) == 11 and groups[0][0] == "1" else groups[0]
        plausible = len(run) == 10 and run[0] not in "01" and run[3] not in "01"
        return _IF_LABELLED if plausible else _NO
    if len(groups) == 4 and groups[0] == "1":
        groups, seps = groups[1:], seps[1:]
    if [len(g) for g in groups] != [3, 3, 4] or groups[0][0] in "01" or groups[1][0] in "01":
        return _NO
    if lead == "(" or "(" in "".join(seps) or _phone_marks(seps) != {" "}:
        return _YES
    return _IF_LABELLED  # "415 555 0132" could be three numbers in a table


def _trunk(groups: list[str]) -> int:
    """European national numbers: a trunk 0, then 8-11 digits in groups."""
    first, n = groups[0], sum(map(len, groups))
    if first[0] != "0" or first.startswith("00") or len(first) > 5:
        return _NO
    if len(groups) == 1:
        return _IF_LABELLED if 10 <= n <= 12 else _NO
    if not 9 <= n <= 12 or len(groups) > 6 or min(map(len, groups)) < 2:
        return _NO
    return _YES if n > 9 or len(groups) >= 3 else _NO


_PHONE_LEFT = "+.-/@#$%"
_PHONE_DIGITS = range(8, 18)


def _with_country_one(text: str, start: int) -> int:
    """Where a North American number starts if "1-" or "1 " leads it."""
    if text[start - 2 : start - 1] == "1" and text[start - 1 : start] in (" ", "-", "."):
        return start - 2
    return start


def _north_american(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for pattern in (_NANP_SHAPE, _AREA_IN_PARENS_SHAPE):
        for m in pattern.finditer(scan.shape):
            start, end = _with_country_one(text, m.start()), m.end()
            if start != m.start() and not _free_left(text, start, _PHONE_LEFT):
                start = m.start()
            if _free_left(text, start, _PHONE_LEFT) and _valid_phone(text, start, end):
                yield start, end


def _prefixed_or_trunk(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for shaped in _INTERNATIONAL_SHAPE.finditer(scan.shape):
        yield from _longest_valid_prefix(_PHONE, text, shaped.span(), _PHONE_LEFT, _PHONE_DIGITS,
                                         _valid_phone)
    for m in _TRUNK_CANDIDATE.finditer(text):
        if not _free_left(text, m.start(), _PHONE_LEFT):
            continue  # the lookbehind in the pattern does not cover "@#$%"
        yield from _longest_valid_prefix(_PHONE, text, m.span(), _PHONE_LEFT, _PHONE_DIGITS,
                                         _valid_phone)


def _labelled(text: str, start: int, words: Sequence[str], label: re.Pattern[str]) -> bool:
    """Whether the text just before ``start`` labels what follows, as in
    "Phone: 4155550132" or '"ssn": "123456789"'."""
    window = text[max(0, start - _LABEL_WINDOW) : start]
    lowered = window.lower()
    return any(w in lowered for w in words) and label.search(window) is not None


def _labelled_phones(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for start, end in scan.bare_numbers:
        if (_labelled(text, start, _PHONE_WORDS, _PHONE_LABEL)
                and _valid_labelled_phone(text, start, end)):
            yield start, end


def _phones(scan: _Scan) -> Iterator[Span]:
    yield from _north_american(scan)
    yield from _prefixed_or_trunk(scan)
    yield from _labelled_phones(scan)


# -- credit cards ------------------------------------------------------------------------------
_CARD = re.compile(r"\d(?:[ \-]?\d){12,18}(?!\d)")
# 4-4-4-4[-3] and 4-6-5 groupings, or 13-19 digits in one piece.
_CARD_SHAPE = re.compile(
    rb"0000[ \-]?(?:0000[ \-]?0000[ \-]?0{1,4}(?:[ \-]?0{1,3})?|000000[ \-]?0{4,5})"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _issuer_lengths(d: str) -> range:
    """The lengths a number with this prefix has; empty if no issuer uses the prefix."""
    p2, p3, p4, p6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":  # Visa
        return range(13, 20, 3)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return range(16, 17)
    if p2 in (34, 37):  # American Express
        return range(15, 16)
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:  # Discover
        return range(16, 20)
    if 3528 <= p4 <= 3589 or p2 == 62 or 2200 <= p4 <= 2204:  # JCB, UnionPay, Mir
        return range(16, 20)
    if 300 <= p3 <= 305 or p4 == 3095 or p2 in (36, 38, 39):  # Diners Club
        return range(14, 20)
    if p2 == 50 or 56 <= p2 <= 58 or p4 in (6304, 6759) or p6 in (676770, 676774):  # Maestro
        return range(12, 20)
    return range(0)


_ANOTHER_GROUP = re.compile(r"[ \-]\d{4}(?!\d)")


def _card_grouping(lengths: tuple[int, ...]) -> bool:
    if len(lengths) == 1 or lengths in ((4, 6, 5), (4, 6, 4)):
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _valid_card(text: str, start: int, end: int) -> bool:
    s = text[start:end]
    seps = set(s) - set("0123456789")
    if len(seps) > 1 or _glued(text, end):
        return False
    sep = seps.pop() if seps else ""
    if sep and _ANOTHER_GROUP.match(text, end) and text[end] == sep:
        return False  # "4111 1111 1111 1111 1111 1111" is a longer number
    groups = s.split(sep) if sep else [s]
    digits = "".join(groups)
    return (_card_grouping(tuple(map(len, groups))) and len(digits) in _issuer_lengths(digits)
            and luhn_valid(digits))


def _cards(scan: _Scan) -> Iterator[Span]:
    for m in _CARD_SHAPE.finditer(scan.shape):
        yield from _longest_valid_prefix(_CARD, scan.text, m.span(), "+.-/", range(13, 20),
                                         _valid_card)


# -- US social security numbers ----------------------------------------------------------------
_SSN_SHAPE = re.compile(rb"000-00-0000")
_SSN_WORDS = ("ssn", "ss#", "social")
_SSN_LABEL = re.compile(
    r"(?i)(?<![a-z])(?:ssn|ss#|social[\s_\-]*security(?:[\s_\-]*(?:number|num|no\.?|#))?)"
    r"[\"']?\s*(?:[:=#\-]|is|was)?\s*[\"']?$"
)
# Issued in error or in advertising, never to a person.
_SSN_RETIRED = frozenset({"078051120", "219099999"})


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """Whether the SSA could have issued this number: area 000, 666 and
    900-999, group 00 and serial 0000 never are."""
    return (area not in ("000", "666") and area[0] != "9" and group != "00"
            and serial != "0000" and area + group + serial not in _SSN_RETIRED)


def _dashed_ssns(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for m in _SSN_SHAPE.finditer(scan.shape):
        start, end = m.span()
        if (_free_left(text, start, "-./") and not _glued(text, end)
                and text[end : end + 1] != "-"
                and ssn_valid(text[start : start + 3], text[start + 4 : start + 6],
                              text[start + 7 : end])):
            yield start, end


def _labelled_ssns(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for start, end in scan.bare_numbers:
        d = text[start:end].replace(" ", "")
        if (len(d) == 9 and _labelled(text, start, _SSN_WORDS, _SSN_LABEL)
                and ssn_valid(d[:3], d[3:5], d[5:])):
            yield start, end


def _ssns(scan: _Scan) -> Iterator[Span]:
    yield from _dashed_ssns(scan)
    yield from _labelled_ssns(scan)


# -- IBAN --------------------------------------------------------------------------------------
_IBAN_SHAPE = re.compile(rb"AA00(?: ?[A0]){11,30}")
# Total length per country (SWIFT IBAN registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(value: str) -> bool:
    """The ISO 13616 checks: the country's length and ISO 7064 mod-97 check digits."""
    s = value.replace(" ", "").upper()
    if not s.isascii() or not s.isalnum() or _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    if not s[2:4].isdigit() or not "02" <= s[2:4] <= "98":
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _iban_end(text: str, start: int, length: int) -> int | None:
    """Where an IBAN of ``length`` characters starting at ``start`` ends,
    if it is written whole: in one piece or in groups of four."""
    seen, i, n = 0, start, len(text)
    spaced = text[start + 4 : start + 5] == " "
    while seen < length and i < n:
        ch = text[i]
        if ch == " ":
            if not spaced or seen % 4:
                return None
        elif ch.isascii() and ch.isalnum():
            seen += 1
        else:
            break
        i += 1
    return i if seen == length else None


def _ibans(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for m in _IBAN_SHAPE.finditer(scan.shape):
        start = m.start()
        length = _IBAN_LENGTHS.get(text[start : start + 2])
        if length is None or not _free_left(text, start):
            continue
        end = _iban_end(text, start, length)
        if end is not None and not text[end : end + 1].isalnum() and iban_valid(text[start:end]):
            yield start, end


# -- IP addresses ------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?!\d)")
_IPV4_GATE = re.compile(rb"\.0{1,3}\.")
_CIDR_SUFFIX = re.compile(r"/\d{1,2}(?!\d)")
_VERSION_BEFORE = re.compile(
    r"(?i)(?<![a-z])(?:version|ver|release|build|firmware|rev|v)\.?\s*[:=]?\s*[\"']?$"
)
# "::", or three colons: a time of day such as 10:22:31 has two.
_IPV6_GATE = re.compile(r"::|:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")
_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{1,4}:|::)[0-9A-Fa-f:.]{1,45}(?<=[0-9A-Fa-f])(?![\w:]|\.\d)")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}")
_HEX_OR_COLON = frozenset("0123456789abcdefABCDEF:")


def _ipv4_at(text: str, start: int, end: int) -> bool:
    cidr = _CIDR_SUFFIX.match(text, end) is not None
    if not _free_left(text, start, ".-") or text[end : end + 1] == "-":
        return False
    if _glued(text, end) and not cidr:
        return False
    # "Chrome/120.0.0.0" is a product version; "http://10.0.0.1" an address.
    if text[start - 1 : start] == "/" and text[start - 2 : start] != "//":
        return False
    return _VERSION_BEFORE.search(text, max(0, start - 12), start) is None


def _ipv4s(scan: _Scan) -> Iterator[Span]:
    text, shape, done = scan.text, scan.shape, 0
    for gate in _IPV4_GATE.finditer(shape):
        start = gate.start()
        if start < done:
            continue
        while start and shape[start - 1] == 48 and gate.start() - start < 3:  # b"0"
            start -= 1
        m = _IPV4.match(text, start)
        if m is not None:
            done = m.end()
            if _ipv4_at(text, start, m.end()):
                yield m.span()


def ipv6_valid(s: str) -> bool:
    """RFC 4291 text form: eight groups, or fewer around one "::",
    optionally ending in a dotted IPv4 address."""
    groups_needed = 8
    if "." in s:
        head, _, v4 = s.rpartition(":")
        if _IPV4.fullmatch(v4) is None:
            return False
        s, groups_needed = (head + ":" if head.endswith(":") else head), 6
    if s.count("::") > 1 or ":::" in s:
        return False
    left, gap, right = s.partition("::")
    groups = [g for part in (left, right) if part for g in part.split(":")]
    if not all(_HEX_GROUP.fullmatch(g) for g in groups):
        return False
    return len(groups) < groups_needed if gap else len(groups) == groups_needed


def _plausible_ipv6(s: str) -> bool:
    """Text such as "dead::beef" or the slice "a[10::100]" parses as IPv6;
    real addresses have digits and either several groups or a hex letter."""
    if s == "::1":
        return True
    groups = [g for g in s.replace("::", ":").split(":") if g]
    return (any(c.isdigit() for c in s) and len(groups) >= 2
            and (len(groups) >= 3 or any(c.isalpha() for c in s)))


def _ipv6s(scan: _Scan) -> Iterator[Span]:
    text, done = scan.text, 0
    for gate in _IPV6_GATE.finditer(text):
        start = gate.start()
        if start < done:
            continue
        while start > 0 and text[start - 1] in _HEX_OR_COLON and gate.start() - start < 40:
            start -= 1
        m = _IPV6.match(text, start)
        if m is None or not _free_left(text, start, ":."):
            continue
        done = m.end()
        if m.group().count(":") >= 2 and ipv6_valid(m.group()) and _plausible_ipv6(m.group()):
            yield m.span()


def _ips(scan: _Scan) -> Iterator[Span]:
    yield from _ipv4s(scan)
    yield from _ipv6s(scan)


# -- secrets with a known shape ----------------------------------------------------------------
# (literal that starts it, offset of the match before the literal, pattern, left boundary)
_PREFIXED: tuple[tuple[str, int, re.Pattern[str], str], ...] = tuple(
    (literal, back, re.compile(pattern), left) for literal, back, pattern, left in (
        ("-----BEGIN", 0, r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:"
         r"[A-Za-z0-9+/=\s\\:,\-]{0,16384}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
         ""),
        ("AKIA", 0, r"AKIA[A-Z0-9]{16}(?![A-Za-z0-9])", ""),  # AWS access key ids
        ("ASIA", 0, r"ASIA[A-Z0-9]{16}(?![A-Za-z0-9])", ""),
        ("gh", 0, r"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9])", ""),  # GitHub
        ("github_pat_", 0, r"github_pat_[A-Za-z0-9_]{22,255}", ""),
        ("xox", 0, r"xox[abeprs]-[A-Za-z0-9\-]{10,250}", ""),  # Slack
        ("k_live_", 1, r"[sr]k_live_[A-Za-z0-9]{16,247}(?![A-Za-z0-9])", ""),  # Stripe
        ("k_test_", 1, r"[sr]k_test_[A-Za-z0-9]{16,247}(?![A-Za-z0-9])", ""),
        ("sk-", 0, r"sk-(?:ant-[A-Za-z0-9_\-]{20,250}|(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,250}"
         r"|[A-Za-z0-9]{32,250}(?![A-Za-z0-9\-]))", "-"),  # Anthropic, OpenAI
        ("AIza", 0, r"AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])", ""),  # Google
        ("eyJ", 0, r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*", "-"),  # JWT
    )
)
_GH_PREFIX = re.compile(r"gh[pousr]_")
_URL_PASSWORD = re.compile(r"://[^\s/:@\"'<>]{1,64}:([^\s/@\"'<>]{1,128})@(?=[\w\[])")
# (literal, offset of the word's start before it): "assw" finds password,
# Password and passwd at once; the pattern then checks the whole word.
_PASSWORD_WORDS = (("assw", 1), ("ASSW", 1), ("pwd", 0), ("PWD", 0))
_PASSWORD_ASSIGNED = re.compile(
    r"(?i)(?:password|passwd|pwd)[\"']?\s*(?:=|:|=>)\s*"
    r"(?:([\"'])([^\"'\s\\]{8,128})\1|([^\s&\"'<>;,\\]{8,128}))"
)
_PLACEHOLDERS = _words(
    "password passwd secret changeme changeit example redacted hunter2 xxxxxxxx null none "
    "undefined required optional string your_password yourpassword"
)


def _placeholder(value: str) -> bool:
    v = value.lower()
    return (v in _PLACEHOLDERS or len(set(v)) <= 2 or any(c in v for c in "$<>{}*%")
            or v.startswith(("your", "my-", "my_", "example")))


def _filler(key: str) -> bool:
    """Whether a key is a documentation filler such as AKIAXXXXXXXXXXXXXXXX."""
    return len(set(key[-16:])) <= 2


def _literal_hits(text: str, literal: str) -> Iterator[int]:
    if literal == "gh":  # five prefixes, one search
        yield from (m.start() for m in _GH_PREFIX.finditer(text))
    else:
        yield from _find_all(text, literal)


def _known_secrets(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for literal, back, pattern, left in _PREFIXED:
        for i in _literal_hits(text, literal):
            m = pattern.match(text, i - back) if i >= back else None
            if m is not None and _free_left(text, m.start(), left) and not _filler(m.group()):
                yield m.span()
    for i in _find_all(text, "://"):
        m = _URL_PASSWORD.match(text, i)
        if m is not None and not _placeholder(m.group(1)):
            yield m.span(1)


def _assigned_passwords(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    hits = {i - back for word, back in _PASSWORD_WORDS for i in _find_all(text, word) if i >= back}
    for i in sorted(hits):
        m = _PASSWORD_ASSIGNED.match(text, i)
        if m is None or (i and text[i - 1].isalpha()):
            continue
        group = 2 if m.group(2) is not None else 3
        value = m.group(group)
        if not _placeholder(value) and _classes(value) >= 2:
            yield m.span(group)


# -- high-entropy tokens -----------------------------------------------------------------------
_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/_-.~"
)
# In the shape "=" stands for any of = : " ' `, which introduce a value.
_VALUE_GATE = re.compile(rb"=[ \t]{0,3}=?([aA0+/_.~\-]{20,1024})")
_TOKEN_KEYWORDS = frozenset({"bearer", "token", "basic", "key", "secret", "password"})
_TOKEN_KEYWORD_ENDINGS = tuple(_TOKEN_KEYWORDS)
_TOKEN_KEYWORD_TAILS = frozenset(w[-3:] for w in _TOKEN_KEYWORDS)
# A long value after a blank (in the token shape): the word before it may
# name it ("Bearer <token>").
_SPACED_VALUE = re.compile(rb" (bbbbbbbbbbbbbbbbbbbb+)")
_NAME_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SECRET_NAMES = _words(
    "token tokens secret secrets password passwd pwd pass apikey key keys auth authorization "
    "credential credentials bearer session cookie signature sig jwt private"
)
_SECRET_NAME_PARTS = ("token", "secret", "passw", "apikey", "credential")
# Names whose random-looking values are identifiers or digests, not credentials.
_BENIGN_NAMES = _words(
    "id ids uuid guid hash sha sha1 sha256 sha512 md5 digest checksum etag integrity commit rev "
    "revision trace span request req ref version path url uri href src file filename image "
    "avatar slug cache sort primary foreign partition public pub object idempotency"
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
# Digests, and keys made to be public (Stripe publishable keys).
_DIGEST_PREFIX = re.compile(r"(?i)(?:sha\d{0,3}|md5)[\-:_]|pk_(?:live|test)_")
_ANY_DIGIT = re.compile(r"\d")
_WORDLIKE = re.compile(r"[A-Z]?[a-z]{3,}")
_WORDY_SEGMENT = re.compile(r"[a-z0-9_.\-~]*|[A-Z]?[a-z0-9_.\-]+")
_STRONG, _WEAK, _NONE = 2, 1, 0


_XLOGX = (0.0, *(c * math.log2(c) for c in range(1, 1025)))


def shannon_entropy(s: str) -> float:
    """Bits per character of ``s`` under its own character frequencies."""
    n = len(s)
    if n > 1024:
        return -sum(c / n * math.log2(c / n) for c in Counter(s).values())
    # H = log2(n) - sum(c log2 c) / n, with c log2 c looked up.
    return math.log2(n) - sum(map(_XLOGX.__getitem__, Counter(s).values())) / n if n else 0.0


def _classes(s: str) -> int:
    """How many of lower case, upper case, digits and symbols ``s`` mixes."""
    return ((s.upper() != s) + (s.lower() != s) + (_ANY_DIGIT.search(s) is not None)
            + (not s.isalnum()))


def _name_strength(name: str) -> int:
    """How much the name a value is assigned to says it is a credential."""
    parts = {p.lower() for p in _NAME_PART.findall(name)}
    lowered = name.lower()
    if parts & _SECRET_NAMES or any(p in lowered for p in _SECRET_NAME_PARTS):
        benign_key = "key" in parts and bool(parts & _BENIGN_NAMES)
        return _WEAK if benign_key else _STRONG
    return _NONE if parts & _BENIGN_NAMES else _WEAK


def _assigned_name(text: str, start: int) -> str | None:
    """The name in `name = v`, `"name": "v"` or `Name: v` for a value at
    ``start``; "" for an operator without a name; None without an operator."""
    i = _skip_back(text, start, " \t\"'`")
    if i == 0 or text[i - 1] not in "=:>":
        return None
    i -= 1
    if text[i] == ">" or (text[i] == "=" and text[i - 1 : i] == ":"):
        i -= 1  # => and :=
    end = i = _skip_back(text, i, " \t\"'`")
    lo = max(0, i - 60)
    while i > lo and (text[i - 1].isalnum() or text[i - 1] in "_.-"):
        i -= 1
    return text[i:end]


def _skip_back(text: str, i: int, chars: str, most: int = 4) -> int:
    lo = max(0, i - most)
    while i > lo and text[i - 1] in chars:
        i -= 1
    return i


def _value_context(text: str, start: int) -> int:
    """How plainly the token at ``start`` is presented as a secret value."""
    if text.endswith(("\\n", "\\r", "\\t"), 0, start):
        return _NONE
    name = _assigned_name(text, start)
    if name is not None:
        return _name_strength(name)
    return _WEAK if start and text[start - 1] in "\"'`" else _NONE


def _path_like(token: str) -> bool:
    if "/" not in token:
        return False
    segments = [s for s in token.split("/") if s]
    wordy = sum(1 for s in segments if _WORDY_SEGMENT.fullmatch(s))
    return wordy == len(segments) or (token.startswith(("/", "./", "../", "~/"))
                                      and wordy * 2 >= len(segments))


def _decodes_to_words(token: str) -> bool:
    """Base64 of prose ("aGVsbG8gd29ybGQ=") is an encoding, not a key."""
    body = token.rstrip("=")
    alt = b"-_" if "-" in body or "_" in body else None
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=alt, validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    letters = sum(1 for c in decoded if c.isalpha() or c == " ")
    return " " in decoded.strip() and letters >= 0.8 * len(decoded)


def _benign_shape(token: str, context: int) -> bool:
    if context == _WEAK and (len(token) > 128 or _HEX.fullmatch(token) or _UUID.fullmatch(token)):
        return True
    if _DIGEST_PREFIX.match(token) or _path_like(token) or _decodes_to_words(token):
        return True
    covered = sum(len(w) for w in _WORDLIKE.findall(token))
    return covered >= 0.6 * len(token)


def _random_enough(token: str, context: int) -> bool:
    if _HEX.fullmatch(token):
        return len(token) >= 32 and shannon_entropy(token) >= 3.0
    if _classes(token) < 2:
        return False
    return shannon_entropy(token) >= (3.5 if context == _STRONG else 4.0)


def _token_span(text: str, start: int, end: int, context: int) -> Span | None:
    """The secret among token characters ``start:end``, if they hold one."""
    if end < len(text) and text[end] in _TOKEN_CHARS:
        return None  # longer than any key
    token = text[start:end].rstrip(".-")
    if len(token) < 20 or not _random_enough(token, context) or _benign_shape(token, context):
        return None
    end = start + len(token)
    while end < len(text) and text[end] == "=" and end - start - len(token) < 2:
        end += 1
    return start, end


def _assigned_tokens(scan: _Scan) -> Iterator[Span]:
    text = scan.text
    for m in _VALUE_GATE.finditer(scan.shape):
        start, end = m.span(1)
        context = _value_context(text, start)
        span = _token_span(text, start, end, context) if context else None
        if span is not None:
            yield span


def _keyword_tokens(scan: _Scan) -> Iterator[Span]:
    """Tokens after "Bearer ", "token " and the like, with no operator."""
    text = scan.text
    for m in _SPACED_VALUE.finditer(scan.token_shape):
        start, end = m.span(1)
        if text[max(0, start - 4) : start - 1].lower() not in _TOKEN_KEYWORD_TAILS:
            continue  # the cheap test first: most long words follow other words
        before = text[max(0, start - 8) : start - 1].lower()
        word = next((w for w in _TOKEN_KEYWORD_ENDINGS if before.endswith(w)), None)
        if word is None or end - start > 1024:
            continue
        if not _free_left(text, start - 1 - len(word)):
            continue
        span = _token_span(text, start, end, _STRONG)
        if span is not None:
            yield span


def _weak_secrets(scan: _Scan) -> Iterator[Span]:
    yield from _assigned_passwords(scan)
    yield from _assigned_tokens(scan)
    yield from _keyword_tokens(scan)


# -- resolution --------------------------------------------------------------------------------
# In a conflict the earlier detector wins: it is the more specific one.
_DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("secret", _known_secrets),
    ("iban", _ibans),
    ("credit_card", _cards),
    ("us_ssn", _ssns),
    ("email", _emails),
    ("ip_address", _ips),
    ("phone", _phones),
    ("secret", _weak_secrets),
)


def _resolve(candidates: list[tuple[int, int, int, str]]) -> list[Finding]:
    """Non-overlapping findings: by detector rank, then the longer match."""
    candidates.sort(key=lambda c: (c[0], c[1] - c[2], c[1]))
    starts: list[int] = []
    kept: list[Finding] = []
    for _, start, end, kind in candidates:
        i = bisect_left(starts, start)
        if (i and kept[i - 1].end > start) or (i < len(kept) and kept[i].start < end):
            continue
        starts.insert(i, start)
        kept.insert(i, Finding(kind, start, end))
    return kept


def find_pii(text: str, types: Collection[str] = PII_TYPES,
             allow_list: Collection[str] = ()) -> list[Finding]:
    """PII and secrets in ``text``: non-overlapping, sorted by start. A match
    whose text is in ``allow_list`` (emails compared case-insensitively) is
    left out, but still keeps other detectors off its span."""
    unknown = set(types) - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII types: {sorted(unknown)}")
    scan = _Scan(text)
    candidates = [
        (rank, start, end, kind)
        for rank, (kind, detect) in enumerate(_DETECTORS) if kind in types
        for start, end in detect(scan)
    ]
    allowed = set(allow_list)
    allowed_emails = {a.lower() for a in allow_list}
    return [
        f for f in _resolve(candidates)
        if text[f.start : f.end] not in allowed
        and not (f.type == "email" and text[f.start : f.end].lower() in allowed_emails)
    ]


def redact(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding replaced by "[REDACTED:<type>]". Findings
    that overlap are merged into the first one's marker: no part of either
    survives."""
    out: list[str] = []
    pos = 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start < pos:
            pos = max(pos, f.end)
            continue
        out += (text[pos : f.start], f"[REDACTED:{f.type}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
