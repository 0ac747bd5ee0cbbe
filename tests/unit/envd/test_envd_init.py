"""POST /init: token (re)configuration, environment and defaults."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import httpx

from .envd_testlib import TOKEN, Rpc


def init(url: str, body: Any, token: str | None = None) -> httpx.Response:
    headers = {"X-Access-Token": token} if token else {}
    return httpx.post(url + "/init", json=body, headers=headers)


def list_status(url: str, token: str | None) -> int:
    with Rpc(url, token) as rpc:
        return rpc.unary("process.Process/List", {}).status_code


def test_no_token_until_init_sets_one(envd_factory: Any) -> None:
    envd = envd_factory(token=None)
    assert list_status(envd.url, None) == 200

    assert init(envd.url, {"accessToken": "first"}).status_code == 204
    assert list_status(envd.url, None) == 401
    assert list_status(envd.url, "first") == 200

    # Once set, only its holder may re-initialise, e.g. to rotate it.
    assert init(envd.url, {"accessToken": "second"}).status_code == 401
    assert init(envd.url, {"accessToken": "second"}, "wrong").status_code == 401
    assert init(envd.url, {"accessToken": "second"}, "first").status_code == 204
    assert list_status(envd.url, "first") == 401
    assert list_status(envd.url, "second") == 200
    assert httpx.get(envd.url + "/health").status_code == 204


def test_init_env_vars_and_workdir(envd_factory: Any, workdir: Path) -> None:
    envd = envd_factory()
    body = {"envVars": {"FOO": "from-init", "BAR": "b"}, "defaultWorkdir": str(workdir)}
    assert init(envd.url, body, TOKEN).status_code == 204
    script = "echo $FOO $BAR; pwd"
    request = {"process": {"cmd": "/bin/sh", "args": ["-c", script], "envs": {"BAR": "req"}}}
    with Rpc(envd.url, TOKEN) as rpc:
        result = rpc.stream("process.Process/Start", request)
        assert result.output().decode().split("\n")[:2] == ["from-init req", str(workdir)]
        assert rpc.http.get("/envs").json() == {"FOO": "from-init", "BAR": "b"}
        # An empty path means the default working directory for files too.
        entry = rpc.call("filesystem.Filesystem/Stat", {"path": ""})["entry"]
        assert entry["path"] == str(workdir)


def test_init_default_user(envd_factory: Any) -> None:
    envd = envd_factory()
    assert init(envd.url, {"defaultUser": "no-such-user-xyz"}, TOKEN).status_code == 400
    assert init(envd.url, {"defaultUser": "nobody"}, TOKEN).status_code == 204
    request = {"process": {"cmd": "/bin/sh", "args": ["-c", "id -u"], "cwd": "/"}}
    with Rpc(envd.url, TOKEN) as rpc:
        result = rpc.stream("process.Process/Start", request)
    if os.geteuid() == 0:
        assert result.output().decode().strip() == str(pwd.getpwnam("nobody").pw_uid)
    else:
        assert result.end["error"]["code"] == "permission_denied"


def test_init_rejects_bad_bodies(envd_factory: Any) -> None:
    envd = envd_factory()
    headers = {"X-Access-Token": TOKEN, "content-type": "application/json"}
    bad = httpx.post(envd.url + "/init", content=b"{not json", headers=headers)
    assert bad.status_code == 400
    for body in ([], {"envVars": {"A": 1}}, {"accessToken": 5}, {"accessToken": ""}):
        assert init(envd.url, body, TOKEN).status_code == 400, body
    # Nothing was half-applied: the original token still works.
    assert list_status(envd.url, TOKEN) == 200
    assert init(envd.url, {}, TOKEN).status_code == 204
    assert httpx.post(envd.url + "/init", headers={"X-Access-Token": TOKEN}).status_code == 204


def test_init_memory_limit(envd) -> None:  # type: ignore[no-untyped-def]
    """memoryMib: a positive integer, validated before anything changes."""
    import httpx

    base, token = envd.url, envd.token
    h = {"X-Access-Token": token}
    for bad in ("512", 0, -1, True, 1.5):
        r = httpx.post(base + "/init", json={"memoryMib": bad, "envVars": {"X": "1"}}, headers=h)
        assert r.status_code == 400, bad
    r = httpx.post(base + "/init", json={"memoryMib": 512}, headers=h)
    assert r.status_code == 204


def test_init_trust_adds_the_ca_once(envd_factory: Any, tmp_path: Path) -> None:
    """trust: the CA goes into the system bundle between markers (a second
    call replaces it, never stacks) and alone into caFile, as root 0644;
    a bad value refuses the whole body and changes nothing."""
    envd = envd_factory()
    bundle = tmp_path / "etc" / "ssl" / "bundle.pem"
    bundle.parent.mkdir(parents=True)
    system = "-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----"
    bundle.write_text(system)  # no final newline
    ca_file = tmp_path / "ca" / "sbx.crt"
    pem = lambda x: f"-----BEGIN CERTIFICATE-----\n{x}\n-----END CERTIFICATE-----\n"  # noqa: E731
    good = {"pem": pem("ONE"), "bundle": str(bundle), "caFile": str(ca_file)}
    for bad in ({**good, "bundle": "relative"}, {**good, "pem": "not a cert"},
                {**good, "extra": "x"}, {**good, "caFile": 5}, [good]):
        r = init(envd.url, {"trust": bad, "accessToken": "rotated"}, TOKEN)
        assert r.status_code == 400, bad
    assert bundle.read_text() == system and not ca_file.exists()
    assert list_status(envd.url, TOKEN) == 200  # the token did not change either
    assert init(envd.url, {"trust": good}, TOKEN).status_code == 204
    assert init(envd.url, {"trust": {**good, "pem": pem("TWO")}}, TOKEN).status_code == 204
    text = bundle.read_text()
    assert text.startswith(system + "\n")
    assert "TWO" in text and "ONE" not in text and text.count("BEGIN CERTIFICATE") == 2
    assert ca_file.read_text() == pem("TWO")
    assert bundle.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle.pem"]
