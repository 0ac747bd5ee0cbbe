"""What the SDK itself costs per call, with the network taken out."""

from __future__ import annotations

import json
import struct
import time

import httpx

from sbx.sdk._commands import Commands
from sbx.sdk._transport import Endpoint, Transport


def frame(obj: object, flags: int = 0) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


STREAM = (
    frame({"event": {"start": {"pid": 5}}})
    + frame({"event": {"end": {"exitCode": 0, "exited": True, "status": "exit status 0"}}})
    + frame({}, 2)
)


def test_run_costs_well_under_a_millisecond_of_client_cpu() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(STREAM))

    client = httpx.Client(transport=httpx.MockTransport(answer))
    commands = Commands(Transport(None, Endpoint("http://envd", {}), None, client))
    for _ in range(50):
        commands.run("true")
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            commands.run("true")
        batches.append((time.perf_counter() - start) / 200)
    # About 0.3 ms on a laptop, most of it httpx; the bound leaves room for slow CI.
    assert sorted(batches)[2] < 0.0015, batches
    client.close()
