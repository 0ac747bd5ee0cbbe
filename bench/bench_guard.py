"""Precision, recall and speed of the content guardrails (sbx.guard) on the
labelled corpora in tests/data/guard. Pure Python, no sandbox involved.

    .venv/bin/python -m bench.bench_guard [--markdown] [--errors]

A PII finding is a true positive when its type and its text equal a label's
type and value (each label matches at most one finding); injection lines
are judged at thresholds 0.3, 0.5 and 0.7. Throughput is measured on a
1 MiB synthetic document of JSON bodies, logs, code and prose with the
corpus lines mixed in.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbx.guard.injection import score_injection
from sbx.guard.pii import PII_TYPES, find_pii

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "guard"
PII_CORPUS = DATA / "pii_corpus.jsonl"
INJECTION_CORPUS = DATA / "injection_corpus.jsonl"
THRESHOLDS = (0.3, 0.5, 0.7)
MIB = 1 << 20


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- PII ---------------------------------------------------------------------------------------
Pair = tuple[str, str]  # (type, text)


def _found(text: str) -> Counter[Pair]:
    return Counter((f.type, text[f.start : f.end]) for f in find_pii(text))


def _expected(line: dict[str, Any]) -> Counter[Pair]:
    return Counter((label["type"], label["value"]) for label in line["labels"])


def line_errors(line: dict[str, Any]) -> tuple[Counter[Pair], Counter[Pair]]:
    """(labels not found, findings not labelled) for one corpus line."""
    found, expected = _found(line["text"]), _expected(line)
    return expected - found, found - expected


def evaluate_pii(corpus: Iterable[dict[str, Any]]) -> dict[str, Counts]:
    """Counts per PII type, plus "all"."""
    per_type = {t: Counts() for t in PII_TYPES}
    for line in corpus:
        found, expected = _found(line["text"]), _expected(line)
        hits = found & expected
        for kind, counter in (("tp", hits), ("fp", found - hits), ("fn", expected - hits)):
            for (pii_type, _), n in counter.items():
                setattr(per_type[pii_type], kind, getattr(per_type[pii_type], kind) + n)
    total = Counts()
    for counts in per_type.values():
        total.add(counts)
    return {**per_type, "all": total}


# -- injection ---------------------------------------------------------------------------------
def injection_scores(corpus: Iterable[dict[str, Any]]) -> list[tuple[float, bool]]:
    return [(score_injection(line["text"]).score, bool(line["injection"])) for line in corpus]


def evaluate_injection(scored: list[tuple[float, bool]],
                       thresholds: Iterable[float] = THRESHOLDS) -> dict[float, Counts]:
    out = {}
    for threshold in thresholds:
        c = Counts()
        for score, label in scored:
            flagged = score >= threshold
            c.tp += flagged and label
            c.fp += flagged and not label
            c.fn += (not flagged) and label
        out[threshold] = c
    return out


def brier(scored: list[tuple[float, bool]]) -> float:
    """Mean squared error of the score as a probability of injection."""
    return statistics.fmean((score - label) ** 2 for score, label in scored)


BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def reliability(scored: list[tuple[float, bool]],
                edges: tuple[float, ...] = BINS) -> list[tuple[str, int, float]]:
    """(score range, lines, share that are injections) per score bin; the
    last bin includes 1.0."""
    rows = []
    for lo, hi in itertools.pairwise(edges):
        labels = [label for score, label in scored if lo <= score < hi or score == hi == 1]
        share = sum(labels) / len(labels) if labels else float("nan")
        rows.append((f"{lo:.1f}-{hi:.1f}", len(labels), share))
    return rows


# -- throughput --------------------------------------------------------------------------------
# Ordinary technical prose; "instructions", "system", "prompt" and "model"
# are in it on purpose, as they are in real docs.
_VOCABULARY = (
    "the a of to and in for is on that with as it be by this are from at or an was we can "
    "which will you your not have all has more new one use also if when data time about "
    "service request returned after deploying version config user account order invoice "
    "payment build test cluster node latency cache retry queue worker region instructions "
    "system install package release notes docs guide upgrade prompt model network storage "
    "database query index schema table column backup restore monitor alert metric log trace "
    "error warning timeout limit quota token session browser page server client response "
    "previous following above below step section example default option value key field"
)
_WORDS = tuple(_VOCABULARY.split())


def _prose(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(_WORDS) for _ in range(n)).capitalize() + ".\n"


def _filler(rnd: random.Random) -> str:
    kind = rnd.randrange(4)
    if kind == 0:
        return json.dumps({
            "model": "gpt-4o-mini", "temperature": round(rnd.random(), 2),
            "messages": [{"role": "system", "content": _prose(rnd, 20)},
                         {"role": "user", "content": _prose(rnd, 60)}],
            "metadata": {"request_id": f"{rnd.getrandbits(128):032x}",
                         "ts": 1714650000 + rnd.randrange(10**5)},
        }) + "\n"
    if kind == 1:
        return "".join(
            f"2024-05-02T10:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}Z INFO GET "
            f"/api/v1/orders/{rnd.randrange(10**7)} 200 {rnd.random() * 50:.1f}ms\n"
            for _ in range(5))
    if kind == 2:
        return (f"def handle_{rnd.randrange(1000)}(event, context):\n"
                f"    items = [x for x in event['items'] if x['qty'] > {rnd.randrange(10)}]\n"
                "    return {'statusCode': 200, 'body': json.dumps(items)}\n\n")
    return "## " + _prose(rnd, 4) + _prose(rnd, 80) + "\n"


def synthetic_document(size: int = MIB, seed: int = 7) -> str:
    """``size`` characters of filler with corpus lines mixed in (one chunk in four)."""
    rnd = random.Random(seed)
    corpus = [line["text"] for path in (PII_CORPUS, INJECTION_CORPUS) for line in load_jsonl(path)]
    chunks, total = [], 0
    while total < size:
        chunk = rnd.choice(corpus) + "\n" if rnd.random() < 0.25 else _filler(rnd)
        chunks.append(chunk)
        total += len(chunk)
    return "".join(chunks)[:size]


def throughput(fn: Callable[[str], object], doc: str, repeat: int = 7) -> tuple[float, float]:
    """(median seconds per call, MiB/s at that median) over ``repeat`` calls,
    after one untimed call: the first call on a fresh 1 MiB string runs up
    to twice as long (caches, allocator), and the proxy is a long-lived process."""
    fn(doc)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(doc)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return median, len(doc.encode()) / MIB / median


# -- report ------------------------------------------------------------------------------------
def run(repeat: int) -> dict[str, Any]:
    pii_corpus, inj_corpus = load_jsonl(PII_CORPUS), load_jsonl(INJECTION_CORPUS)
    scored = injection_scores(inj_corpus)
    doc = synthetic_document()
    return {
        "pii": evaluate_pii(pii_corpus),
        "pii_lines": len(pii_corpus),
        "injection": evaluate_injection(scored),
        "injection_lines": (len(scored), sum(label for _, label in scored)),
        "brier": brier(scored),
        "reliability": reliability(scored),
        "speed": {"find_pii": throughput(find_pii, doc, repeat),
                  "score_injection": throughput(score_injection, doc, repeat)},
        "doc_mib": len(doc.encode()) / MIB,
    }


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in rows)])


def _metric_row(name: str, c: Counts) -> list[str]:
    return [name, str(c.tp), str(c.fp), str(c.fn), f"{c.precision:.3f}", f"{c.recall:.3f}",
            f"{c.f1:.3f}"]


def report(results: dict[str, Any], markdown: bool) -> str:
    head = ["", "TP", "FP", "FN", "precision", "recall", "F1"]
    n, positives = results["injection_lines"]
    speed = results["speed"]
    parts = [
        f"PII ({results['pii_lines']} lines)",
        _table(head, [_metric_row(t, c) for t, c in results["pii"].items()], markdown),
        f"\nInjection ({n} lines, {positives} injections)",
        _table(["threshold", *head[1:]],
               [_metric_row(f"{t:.1f}", c) for t, c in results["injection"].items()], markdown),
        f"\nInjection score calibration (Brier score {results['brier']:.3f})",
        _table(["score", "lines", "share injections"],
               [[b, str(k), f"{s:.2f}"] for b, k, s in results["reliability"]], markdown),
        f"\nThroughput on a {results['doc_mib']:.0f} MiB synthetic document (median)",
        _table(["function", "ms per MiB", "MiB/s"],
               [[name, f"{t / results['doc_mib'] * 1000:.1f}", f"{rate:.1f}"]
                for name, (t, rate) in speed.items()], markdown),
    ]
    return "\n".join(parts)


def print_errors() -> None:
    for line in load_jsonl(PII_CORPUS):
        missed, spurious = line_errors(line)
        if missed or spurious:
            print(f"{line['text'][:100]!r}\n  missed {dict(missed)}\n  spurious {dict(spurious)}")
    for line in load_jsonl(INJECTION_CORPUS):
        result = score_injection(line["text"])
        if (result.score >= 0.5) != line["injection"]:
            print(f"{'FN' if line['injection'] else 'FP'} {result.score:.3f} {result.signals} "
                  f"{line['text'][:120]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--errors", action="store_true", help="list the corpus lines judged wrongly")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per function")
    args = ap.parse_args()
    if args.errors:
        print_errors()
        return
    print(report(run(args.repeat), args.markdown))


if __name__ == "__main__":
    main()
