"""The host end of the channel against a peer that misbehaves at the byte level (a real socket pair).

A sandbox that stops reading its stdin (paused, SIGSTOPped supervisor, stalled ssh link) must not hold a
call past its deadline while the request is still being sent; and a reply holding names that were not
UTF-8 in the sandbox must arrive as text that can be encoded again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from qwq_agent.sandbox.channel import Channel

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def test_surrogates_in_a_reply_arrive_as_escapes() -> None:
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    try:
        call = asyncio.create_task(chan.call("view", {"path": "/workspace"}, 10))
        sent = b""
        while not sent or len(sent) < 4 + struct.unpack(">I", sent[:4])[0]:
            sent += await loop.sock_recv(container, 65536)
        req = json.loads(sent[4:])
        # What the supervisor's JSON makes of os.scandir()'s name for b"r\xe9sum\xe9.txt" (and a stray high surrogate).
        output = "/workspace/r\udce9sum\udce9.txt \ud800"
        reply = json.dumps({"id": req["id"], "nonce": req["nonce"], "ok": True, "result": {"output": output}})
        body = struct.pack(">I", len(reply)) + reply.encode()
        await loop.sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)
        result = await asyncio.wait_for(call, 10)
        assert result["output"] == "/workspace/r\\xe9sum\\xe9.txt \\ud800"
        result["output"].encode("utf-8")
    finally:
        await chan.aclose()
        container.close()
