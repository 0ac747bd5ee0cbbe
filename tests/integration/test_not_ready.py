"""Creates while the runtime is not there: a first start that is still
building the base template answers 503 with Retry-After; one whose build
failed answers 503 with the reason and no retry. Nothing is created."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from tests.integration.server import Server, free_subnet, leaks, mounts_of

# Stands in for mmdebstrap: the build waits until the test lets it fail.
FAILING_BUILD = """#!/bin/sh
echo "fetching packages"
while [ ! -e "$RELEASE" ]; do sleep 0.1; done
echo "E: cannot reach the archive" >&2
exit 1
"""


def test_create_before_and_after_a_failed_base_build(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mmdebstrap").write_text(FAILING_BUILD)
    (bin_dir / "mmdebstrap").chmod(0o755)
    release = tmp_path / "release"
    data_dir = Path(f"/var/tmp/sbx-test-{uuid.uuid4().hex[:8]}")
    server = Server(data_dir, subnet=free_subnet(22), extra_env={
        "SBX_TEMPLATES_PATH": str(data_dir / "templates"),
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "RELEASE": str(release),
    })
    try:
        server.start(wait_s=60, healthy=False)
        h = {"X-API-Key": server.api_key}
        assert httpx.get(server.url + "/health").json()["status"] == "starting"
        v1 = {"template_name": "base", "vcpu": 1, "memory_mib": 512}
        for path, body in (("/sandboxes", {}), ("/v1/sandbox/", v1),
                           ("/v2/sandboxes", {"templateID": "base"})):
            r = httpx.post(server.url + path, json=body, headers=h)
            assert r.status_code == 503, r.text
            assert "not ready" in r.text
            assert int(r.headers["Retry-After"]) > 0
        # Bad input is still a 400, before anything else.
        assert httpx.post(server.url + "/sandboxes", json={"timeout": -1},
                          headers=h).status_code == 400
        release.touch()
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health").json()["status"] != "failed":
            assert time.monotonic() < deadline, server.tail()
            time.sleep(0.1)
        r = httpx.post(server.url + "/sandboxes", json={}, headers=h)
        assert r.status_code == 503
        body = r.json()
        assert body["code"] == 503
        assert "base template failed" in body["message"]
        assert "archive" in body["message"]
        assert r.headers.get("Should-Retry") == "false"
        assert "Retry-After" not in r.headers
        assert httpx.get(server.url + "/sandboxes", headers=h).json() == []
    finally:
        release.touch()  # whatever happened, the stand-in build ends
        tag = server.node_tag
        server.teardown()
        assert leaks(tag) == {}
        assert mounts_of(data_dir) == []
