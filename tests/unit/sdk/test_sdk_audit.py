"""The egress audit log in the SDK and the CLI, against a real HTTP server
that answers like the control plane (``GET /v1/sandbox/{id}`` and
``GET /v1/sandbox/{id}/audit``) over a log the tests grow and a sandbox they
delete."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from sbx.sdk import (
    AsyncSandbox,
    AuditEntry,
    AuditPage,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    Sandbox,
    ServerError,
)
from sbx.sdk import _audit as audit_ops
from tests.unit.sdk.conftest import REPO_ROOT
from tests.unit.sdk.test_sdk_cli import invoke

KEY = "audit-test-key"
SID = "sbx-audit001"
T0 = datetime(2026, 11, 29, 22, 41, 7, 120000, tzinfo=UTC)
FAST = 0.02


def entry(i: int, **fields: Any) -> dict[str, Any]:
    """An entry as the server writes it, ``i`` seconds after T0."""
    at = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    return {
        "id": i, "time": at, "sandbox_id": SID, "protocol": "https",
        "host": "api.example.com", "ip": "93.184.216.34", "port": 443, "method": "GET",
        "path": f"/v1/{i}", "status": 200, "bytes_up": 10 * i, "bytes_down": 100 * i,
        "decision": "allow", "rule": "domain:api.example.com", **fields,
    }


class FakeControlPlane:
    """The two routes the audit log needs, with the real server's rules for
    ``since``, ``limit`` and ``next_since``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, str] = {SID: "running"}
        self.log: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        # Runs (under the lock) when a GET of the sandbox answers that it is
        # deleted: the place to play an entry that lands in the log late.
        self.on_deleted_seen: Callable[[], None] = lambda: None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, *entries: dict[str, Any]) -> None:
        with self.lock:
            self.log.extend(entries)

    def set_state(self, state: str | None) -> None:
        with self.lock:
            if state is None:
                self.state.pop(SID, None)
            else:
                self.state[SID] = state

    def audit_reads(self) -> list[dict[str, str]]:
        with self.lock:
            return [q for path, q, _ in self.requests if path.endswith("/audit")]

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] != ["v1", "sandbox"] or len(parts) not in (3, 4):
            return 404, {"message": "no such route"}
        sandbox_id = parts[2]
        state = self.state.get(sandbox_id)
        if state is None:
            return 404, {"message": f"Sandbox {sandbox_id} not found"}
        if len(parts) == 3:
            if state == "deleted":
                self.on_deleted_seen()
            return 200, {"id": sandbox_id, "state": state, "template_id": "base",
                         "envd_access_token": "tok"}
        limit = int(query.get("limit", "100"))
        if not 1 <= limit <= 1000:
            return 400, {"message": "Invalid request",
                         "errors": [{"field": "limit", "error": "must be between 1 and 1000"}]}
        since = query.get("since") or None
        rows = [e for e in self.log if e["sandbox_id"] == sandbox_id]
        if since is not None and since.isdigit():
            rows = [e for e in rows if e["id"] > int(since)]
        elif since is not None:
            try:
                at = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                return 400, {"message": "Invalid request", "errors": [
                    {"field": "since", "error": "must be an entry id or an ISO 8601 time"}]}
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            rows = [e for e in rows if datetime.fromisoformat(e["time"]) >= at]
        rows = rows[:limit]
        cursor: int | str | None = int(since) if since and since.isdigit() else since
        next_since = rows[-1].get("id") if rows else cursor
        return 200, {"sandbox_id": sandbox_id, "entries": rows, "next_since": next_since}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with fake.lock:
                    fake.requests.append((url.path, query, dict(self.headers.items())))
                    if self.headers.get("X-API-Key") != KEY:
                        status, body = 401, {"message": "Invalid API key"}
                    else:
                        status, body = fake.answer(url.path, query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()


@pytest.fixture
def sb(cp: FakeControlPlane) -> Iterator[Sandbox]:
    sandbox = Sandbox.connect(SID, api_url=cp.url, api_key=KEY)
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture
def quick_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_ops, "FLUSH_GRACE", FAST)


@contextmanager
def detached(cp: FakeControlPlane, sandbox_id: str, key: str = KEY) -> Iterator[Sandbox]:
    """A sandbox object without connect()'s check, as the CLI uses for the log."""
    sandbox = Sandbox._for_api(sandbox_id, api_url=cp.url, api_key=key)
    try:
        yield sandbox
    finally:
        sandbox.close()


def later(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


# --- one page ------------------------------------------------------------------------


def test_audit_reads_a_page_into_typed_entries(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add(entry(1, protocol="dns", ip=None, port=53, method="QUERY", path="A", status=None,
                 bytes_up=0, bytes_down=0),
           entry(2, decision="deny", rule="not-allowed"))
    page = sb.audit()
    assert isinstance(page, AuditPage)
    assert (page.sandbox_id, page.next_since, len(page.entries)) == (SID, 2, 2)
    dns, denied = page.entries
    assert isinstance(dns, AuditEntry)
    assert dns.time == T0 + timedelta(seconds=1)
    assert (dns.protocol, dns.host, dns.ip, dns.port, dns.method, dns.path, dns.status) == (
        "dns", "api.example.com", None, 53, "QUERY", "A", None)
    assert (denied.id, denied.decision, denied.rule, denied.bytes_up, denied.bytes_down) == (
        2, "deny", "not-allowed", 20, 200)
    assert denied.extra == {}
    assert cp.audit_reads() == [{"limit": "100"}]


def test_unknown_fields_are_kept_not_refused(cp: FakeControlPlane, sb: Sandbox) -> None:
    findings = {"pii": {"email": 2}}
    cp.add(entry(1, findings=findings, body_sample=None))
    (got,) = sb.audit().entries
    assert got.extra == {"findings": findings, "body_sample": None}
    out = got.to_dict()
    assert out["findings"] == findings and "body_sample" in out and "extra" not in out
    assert datetime.fromisoformat(out["time"]) == got.time
    assert {k: v for k, v in out.items() if k != "time"} == {
        k: v for k, v in entry(1, findings=findings, body_sample=None).items() if k != "time"}


def test_pages_on_with_next_since(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add(*(entry(i) for i in range(1, 6)))
    first = sb.audit(limit=2)
    second = sb.audit(since=first.next_since, limit=2)
    third = sb.audit(since=second.next_since, limit=2)
    last = sb.audit(since=third.next_since, limit=2)
    assert [[e.id for e in p.entries] for p in (first, second, third, last)] == [
        [1, 2], [3, 4], [5], []]
    # An empty page keeps the cursor where it was, so polling with it is safe.
    assert last.next_since == 5
    assert [q.get("since") for q in cp.audit_reads()] == [None, "2", "4", "5"]


def test_since_may_be_a_time(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add(*(entry(i) for i in range(1, 6)))
    at = T0 + timedelta(seconds=3)
    assert [e.id for e in sb.audit(since=at).entries] == [3, 4, 5]
    assert [e.id for e in sb.audit(since="2026-11-29T22:41:11.120Z").entries] == [4, 5]
    assert cp.audit_reads()[0]["since"] == at.isoformat()
    empty = sb.audit(since=T0 + timedelta(days=1))
    assert (empty.entries, empty.next_since) == ([], (T0 + timedelta(days=1)).isoformat())


def test_errors_are_sdk_errors(cp: FakeControlPlane, sb: Sandbox) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        sb.audit(limit=0)
    assert bad.value.errors == [{"field": "limit", "error": "must be between 1 and 1000"}]
    with pytest.raises(TypeError):
        sb.audit(since=True)
    cp.set_state(None)
    with pytest.raises(NotFoundError):
        sb.audit()


def test_a_malformed_page_is_a_server_error(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add({"time": "now", "sandbox_id": SID})
    with pytest.raises(ServerError, match="audit entry"):
        sb.audit()


def test_the_log_of_a_deleted_sandbox_stays_readable(cp: FakeControlPlane) -> None:
    cp.add(entry(1))
    cp.set_state("deleted")
    with pytest.raises(NotFoundError):
        Sandbox.connect(SID, api_url=cp.url, api_key=KEY)
    with detached(cp, SID) as gone:
        assert [e.id for e in gone.audit().entries] == [1]


# --- following -------------------------------------------------------------------------


def test_follow_pages_through_a_backlog_then_waits_for_new_entries(
    cp: FakeControlPlane, sb: Sandbox
) -> None:
    cp.add(*(entry(i) for i in range(1, 2502)))
    stop = threading.Event()
    seen: list[int] = []
    later(0.3, lambda: cp.add(entry(2502), entry(2503)))
    for got in sb.follow_audit(poll_interval=FAST, stop=stop):
        seen.append(got.id)
        if got.id == 2503:
            stop.set()
    assert seen == list(range(1, 2504))
    reads = cp.audit_reads()
    assert [q.get("since") for q in reads[:4]] == [None, "1000", "2000", "2501"]
    assert {q["limit"] for q in reads} == {"1000"}


def test_follow_starts_after_since(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add(*(entry(i) for i in range(1, 6)))
    stop = threading.Event()
    seen = []
    for got in sb.follow_audit(since=3, poll_interval=FAST, stop=stop):
        seen.append(got.id)
        if len(seen) == 2:
            stop.set()
    assert seen == [4, 5]


def test_stop_ends_an_idle_follow_at_once(cp: FakeControlPlane, sb: Sandbox) -> None:
    stop = threading.Event()
    later(0.2, stop.set)
    started = time.monotonic()
    assert list(sb.follow_audit(poll_interval=30, stop=stop)) == []
    assert time.monotonic() - started < 5


def test_follow_ends_after_the_last_entries_of_a_deleted_sandbox(
    cp: FakeControlPlane, sb: Sandbox, quick_grace: None
) -> None:
    cp.add(entry(1))

    def late_entry() -> None:
        # Written by the server's batching after the delete was observed.
        if not any(e["id"] == 3 for e in cp.log):
            cp.log.append(entry(3, decision="deny", rule="deny-all"))

    cp.on_deleted_seen = late_entry

    def delete() -> None:
        cp.add(entry(2))
        cp.set_state("deleted")

    later(0.2, delete)
    started = time.monotonic()
    seen = [e.id for e in sb.follow_audit(poll_interval=FAST)]
    assert seen == [1, 2, 3]
    assert time.monotonic() - started < 5


def test_a_404_ends_the_follow_cleanly(
    cp: FakeControlPlane, sb: Sandbox, quick_grace: None
) -> None:
    cp.add(entry(1))
    later(0.2, lambda: cp.set_state(None))
    assert [e.id for e in sb.follow_audit(poll_interval=FAST)] == [1]
    # A sandbox that never was: nothing, and no error.
    with detached(cp, "sbx-nothere") as never:
        assert list(never.follow_audit()) == []


def test_the_state_is_asked_only_when_nothing_came(cp: FakeControlPlane, sb: Sandbox) -> None:
    cp.add(entry(1))
    stop = threading.Event()
    for _ in sb.follow_audit(poll_interval=FAST, stop=stop):
        stop.set()
    with cp.lock:
        paths = [path for path, _, _ in cp.requests]
    # connect(), then one read that found an entry: no state check yet.
    assert paths == [f"/v1/sandbox/{SID}", f"/v1/sandbox/{SID}/audit"]


def test_other_errors_end_the_follow_with_an_exception(cp: FakeControlPlane) -> None:
    with detached(cp, SID, key="wrong") as wrong_key:
        with pytest.raises(AuthenticationError, match="Invalid API key"):
            next(iter(wrong_key.follow_audit()))
        with pytest.raises(ValueError, match="poll_interval"):
            next(iter(wrong_key.follow_audit(poll_interval=0)))


# --- async -----------------------------------------------------------------------------


async def test_async_audit_and_follow(cp: FakeControlPlane, quick_grace: None) -> None:
    cp.add(entry(1), entry(2, findings={"secrets": 1}))
    sb = await AsyncSandbox.connect(SID, api_url=cp.url, api_key=KEY)
    try:
        page = await sb.audit(limit=1)
        assert ([e.id for e in page.entries], page.next_since) == ([1], 1)

        stop = asyncio.Event()
        seen: list[AuditEntry] = []
        asyncio.get_running_loop().call_later(0.2, cp.add, entry(3))
        async for got in sb.follow_audit(since=page.next_since, poll_interval=FAST, stop=stop):
            seen.append(got)
            if got.id == 3:
                stop.set()
        assert [e.id for e in seen] == [2, 3]
        assert seen[0].extra == {"findings": {"secrets": 1}}

        # An idle follow ends as soon as stop is set, not after poll_interval.
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        started = time.monotonic()
        assert [e async for e in sb.follow_audit(since=3, poll_interval=30, stop=stop)] == []
        assert time.monotonic() - started < 5

        asyncio.get_running_loop().call_later(0.2, cp.set_state, "deleted")
        assert [e.id async for e in sb.follow_audit(poll_interval=FAST)] == [1, 2, 3]
        cp.set_state(None)
        assert [e.id async for e in sb.follow_audit(poll_interval=FAST)] == []
    finally:
        await sb.close()


# --- the CLI ---------------------------------------------------------------------------


def cli(cp: FakeControlPlane, *args: str) -> tuple[int, str, str]:
    return invoke("--api-url", cp.url, "--api-key", KEY, "audit", *args)


def test_cli_prints_a_table(cp: FakeControlPlane) -> None:
    cp.add(entry(1, protocol="dns", ip=None, port=53, method="QUERY", path="A", status=None,
                 bytes_up=0, bytes_down=0),
           entry(2, decision="deny", rule="not-allowed", host=None, ip="10.99.99.99",
                 port=80, protocol="tcp", method=None, path=None, status=None))
    code, out, err = cli(cp, SID)
    assert (code, err) == (0, "")
    header, dns, denied = out.splitlines()
    assert header.split() == ["TIME", "(UTC)", "DECISION", "PROTOCOL", "METHOD",
                              "DESTINATION", "PATH", "STATUS", "UP/DOWN", "RULE"]
    assert dns.split() == ["2026-11-29", "22:41:08.120", "allow", "dns", "QUERY",
                           "api.example.com:53", "A", "-", "0/0", "domain:api.example.com"]
    assert denied.split() == ["2026-11-29", "22:41:09.120", "deny", "tcp", "-",
                              "10.99.99.99:80", "-", "-", "20/200", "not-allowed"]
    # Fixed columns: every row's decision starts under the header's.
    assert dns.index("allow") == denied.index("deny") == header.index("DECISION")


def test_cli_json_is_one_object_per_line(cp: FakeControlPlane) -> None:
    cp.add(entry(1), entry(2), entry(3, findings={"pii": {"email": 1}}))
    code, out, _ = cli(cp, SID, "--json", "--since", "1", "--limit", "5")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in lines] == [2, 3]
    assert lines[1]["findings"] == {"pii": {"email": 1}}
    assert cp.audit_reads() == [{"since": "1", "limit": "5"}]


def test_cli_follow_ends_when_the_sandbox_is_deleted(cp: FakeControlPlane) -> None:
    cp.add(entry(1))

    def delete() -> None:
        cp.add(entry(2))
        cp.set_state("deleted")

    later(0.3, delete)
    code, out, err = cli(cp, SID, "--follow", "--json")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1, 2]
    assert err == f"{SID} is gone: no more entries\n"


def test_cli_reads_the_log_of_a_deleted_sandbox(cp: FakeControlPlane) -> None:
    cp.add(entry(1))
    cp.set_state("deleted")
    code, out, _ = cli(cp, SID, "--json")
    assert (code, [json.loads(line)["id"] for line in out.splitlines()]) == (0, [1])


def test_cli_errors_are_one_line(cp: FakeControlPlane) -> None:
    for args, message in (
        (["sbx-nothere"], "Sandbox sbx-nothere not found"),
        ([SID, "--since", "yesterday"], "Invalid request"),
    ):
        code, out, err = cli(cp, *args)
        assert code == 1
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert "Traceback" not in out + err
    code, _, err = cli(cp, SID, "--limit", "0")
    assert code == 2 and "--limit" in err


def test_cli_follow_of_an_unknown_sandbox_ends_like_a_deleted_one(cp: FakeControlPlane) -> None:
    code, out, err = cli(cp, "sbx-nothere", "--follow", "--json")
    assert (code, out, err) == (0, "", "sbx-nothere is gone: no more entries\n")


def test_cli_follow_ctrl_c_exits_130_without_a_traceback(cp: FakeControlPlane) -> None:
    cp.add(entry(1))
    env = {**os.environ, "SBX_API_URL": cp.url, "SBX_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sbx.cli.main import main; main()",
         "sandbox", "audit", SID, "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no entry printed"
        assert json.loads(proc.stdout.readline())["id"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"Traceback" not in err
