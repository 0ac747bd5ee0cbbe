"""Filesystem and control-plane operations: what is sent and how answers map."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from sbx.sdk import (
    AuthenticationError,
    FileType,
    InvalidRequestError,
    LimitError,
    NotFoundError,
    PermissionDeniedError,
)
from sbx.sdk import _control as control
from sbx.sdk import _filesystem as fs
from sbx.sdk._transport import Endpoint, Transport

ENTRY = {
    "name": "a.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/a.txt", "size": "10485760",
    "mode": 420, "permissions": "-rw-r--r--", "owner": "user", "group": "user",
    "modifiedTime": "2026-11-29T21:40:00.123456789Z",
}


def test_entry_info_maps_proto3_json() -> None:
    info = fs.entry_info(ENTRY)
    assert info.type is FileType.FILE
    assert info.size == 10 * 1024 * 1024
    assert info.modified_time == datetime(2026, 11, 29, 21, 40, 0, 123456, tzinfo=UTC)
    assert fs.entry_info({"type": "FILE_TYPE_DIRECTORY"}).type is FileType.DIR
    link = fs.entry_info({"type": "FILE_TYPE_SYMLINK", "symlinkTarget": "/x"})
    assert (link.type, link.symlink_target) == (FileType.SYMLINK, "/x")


def test_list_dir_drops_unknown_types() -> None:
    answer = httpx.Response(200, json={"entries": [ENTRY, {"name": "sock",
                                                          "type": "FILE_TYPE_UNSPECIFIED"}]})
    assert [e.name for e in fs.list_dir("/home/user").parse(answer)] == ["a.txt"]


def test_exists_turns_not_found_into_false_but_keeps_other_errors() -> None:
    op = fs.exists("/x")
    assert op.parse(httpx.Response(200, json={"entry": ENTRY})) is True
    assert op.parse(httpx.Response(404, json={"code": "not_found", "message": "no"})) is False
    with pytest.raises(PermissionDeniedError):
        op.parse(httpx.Response(403, json={"code": "permission_denied", "message": "no"}))


def test_make_dir_answers_false_when_it_exists() -> None:
    op = fs.make_dir("/x")
    assert op.parse(httpx.Response(200, json={})) is True
    assert op.parse(httpx.Response(409, json={"code": "already_exists", "message": "x"})) is False


def test_write_is_an_octet_stream_upload() -> None:
    op = fs.write("/a b.txt", "hé", user="root")
    assert op.request.headers["Content-Type"] == "application/octet-stream"
    assert op.request.params == {"path": "/a b.txt", "username": "root"}
    assert op.request.content == "hé".encode()
    answer = httpx.Response(200, json=[{"name": "a b.txt", "type": "file", "path": "/a b.txt"}])
    info = op.parse(answer)
    assert (info.name, info.type, info.path) == ("a b.txt", FileType.FILE, "/a b.txt")


def test_read_missing_file_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        fs.read("/x").parse(httpx.Response(404, json={"code": 404,
                                                      "message": "path '/x' does not exist"}))


SANDBOX = {
    "id": "sbx-k3j9x0qa", "template_id": "tpl-base", "vcpu": 1, "memory_mib": 512,
    "disk_mib": 2048, "state": "running", "auto_pause": False,
    "network_policy": {"mode": "allow-all", "allow_domains": [], "allow_cidrs": [],
                       "transforms": []},
    "created_at": "2026-11-29T21:40:00.123456Z", "envd_access_token": "tok",
    "timeout_min": 5, "timeout_at": "2026-11-29T21:45:00.456789Z",
}


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> Transport:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Transport(Endpoint("http://api", {"X-API-Key": "k"}), None, None, client)


def test_create_sends_the_v1_body_with_rounded_timeout() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json=SANDBOX)

    op = control.create("base", 2, 1024, 90, {"FOO": "bar"}, {"mode": "deny-all"}, True)
    info = mock(handler).call(op)
    assert info.sandbox_id == "sbx-k3j9x0qa"
    assert info.envd_access_token == "tok"
    assert "tok" not in repr(info)
    assert info.created_at == datetime(2026, 11, 29, 21, 40, 0, 123456, tzinfo=UTC)
    (request,) = sent
    assert (request.method, request.url.path) == ("POST", "/v1/sandbox/")
    assert request.headers["X-API-Key"] == "k"
    assert json.loads(request.content) == {
        "template_name": "base", "vcpu": 2, "memory_mib": 1024, "timeout_min": 2,
        "auto_pause": True, "env_vars": {"FOO": "bar"}, "network_policy": {"mode": "deny-all"}}


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(409, {"message": "Sandbox limit reached: 3 sandboxes"}, LimitError),
     (401, {"message": "Invalid API key"}, AuthenticationError),
     (400, {"message": "Invalid request", "errors": [{"field": "vcpu", "error": "too big"}]},
      InvalidRequestError)],
)
def test_create_errors(status: int, body: dict[str, object], error: type[Exception]) -> None:
    transport = mock(lambda request: httpx.Response(status, json=body))
    with pytest.raises(error):
        transport.call(control.create("base", 1, 512, 300, None, None, False))


def test_ids_cannot_change_the_path() -> None:
    assert control.get("../x").request.path == "/v1/sandbox/..%2Fx"
    assert control.delete("sbx-a").request.method == "DELETE"
    timeout = control.set_timeout("sbx-a", 125)
    assert timeout.request.path == "/v1/sandbox/sbx-a/timeout"
    assert timeout.request.content is not None
    assert json.loads(timeout.request.content) == {"timeout_min": 3}


def test_list_parses_sandboxes_and_filters_states() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{**SANDBOX, "envd_access_token": None}])

    infos = mock(handler).call(control.list_sandboxes(["running", "paused"]))
    assert [i.sandbox_id for i in infos] == ["sbx-k3j9x0qa"]
    assert seen[0].url.params["state"] == "running,paused"
    assert infos[0].to_dict()["id"] == "sbx-k3j9x0qa"
    assert "envd_access_token" not in infos[0].to_dict()
