"""A model server that answers without end cannot stall the probes made before (or outside) a run.

httpx's timeout bounds each read, not a request; a server that sends its answer a byte at a time keeps
every read under it, and one that streams an endless body has it buffered. Each probe is bounded as a
whole (a deadline) and by size (`PROBE_MAX_BYTES`): `run`'s model check (a real CLI process), `serve`'s
`/health` probe, the router's `/workers` and `/readiness`, and the client's `/server_info` reads. The
server is real HTTP on 127.0.0.1 and counts what it got out before the client hung up: a bounded probe
hangs up after a few dozen dripped bytes (or a few MiB of a flood); an unbounded one takes all of it.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.clients.errors import ModelProtocolError, ModelTimeoutError
from qwq_agent.agent.clients.router_info import worker_infos
from qwq_agent.cli.serve_dp import report_fleet
from qwq_agent.http_probe import PROBE_MAX_BYTES
from qwq_agent.serve.fleet import (
    MAX_CONCURRENT_WORKER_PROBES,
    MAX_PROBED_WORKERS,
    _ready_workers,
    probe_router,
)
from qwq_agent.serve.launcher import probe
from qwq_agent.testing.scripted_server import ScriptedModelServer

DRIP_S = 0.02
DRIPS = 500  # 10 s of dripping: far past every probe's deadline below
FLOOD = 256 * 2**20  # far past PROBE_MAX_BYTES and what the sockets between can hold
PROBE_S = 0.5
MODES = ["drip-body", "drip-headers", "flood"]
CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


class Endless:
    """An HTTP server answering every request with 200 and then, by `mode`: a body one byte per
    `DRIP_S` (`drip-body`), its headers one byte per `DRIP_S` (`drip-headers`), or a body as fast as the
    client reads it (`flood`); each until the client hangs up or `DRIPS` bytes (`FLOOD` for a flood).

    `sent` holds, per connection once it is over, how many of those bytes went out.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent: list[int] = []
        self._over = threading.Condition()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        sent = 0
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                if not (data := conn.recv(65536)):
                    return
                head += data
            if self.mode == "drip-headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2**40))
            if self.mode == "flood":
                block = b"o" * 65536
                while sent < FLOOD:
                    conn.sendall(block)
                    sent += len(block)
                return
            while sent < DRIPS and not _hung_up(conn):
                time.sleep(DRIP_S)  # the server's pace, not a wait for anything
                conn.sendall(b"o")
                sent += 1
        except OSError:  # the client hung up
            pass
        finally:
            conn.close()
            with self._over:
                self.sent.append(sent)
                self._over.notify_all()

    def wait_over(self, connections: int = 1) -> list[int]:
        """`sent`, once `connections` connections are over."""
        with self._over:
            assert self._over.wait_for(lambda: len(self.sent) >= connections, timeout=120), self.sent
            return list(self.sent)

    def close(self) -> None:
        self._sock.close()


def _hung_up(conn: socket.socket) -> bool:
    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@contextmanager
def endless(mode: str) -> Iterator[Endless]:
    server = Endless(mode)
    try:
        yield server
    finally:
        server.close()


def bounded(sent: int, mode: str) -> bool:
    """Whether a client hung up long before the server's end: a few probe deadlines' worth of drips, or
    the cap plus what the loopback sockets buffer."""
    return sent < (DRIPS // 2 if mode != "flood" else FLOOD // 4)


@pytest.mark.parametrize(("mode", "api"), [(m, "native") for m in MODES] + [("drip-body", "openai")])
def test_run_gives_up_on_a_model_server_that_never_finishes_answering(mode, api, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWQ_", "OPENAI_", "DASHSCOPE_"))}
    env["QWQ_MODEL_CONNECT_TIMEOUT"] = "1"
    with endless(mode) as server:
        done = subprocess.run(
            [*CLI, "run", "hi", "--model-url", server.url, "--api", api, "--tools", "fetch_url"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        sent = server.wait_over()
    out = (done.stdout + done.stderr).lower()
    assert done.returncode != 0 and "no model server answers" in out and "qwq-agent serve" in out, out
    assert "traceback" not in out, out
    assert len(sent) == 1 and bounded(sent[0], mode), sent


@pytest.mark.parametrize("mode", MODES)
def test_serve_probes_give_up_on_a_server_that_never_finishes_answering(mode):
    with endless(mode) as server:
        assert probe(server.url, timeout=PROBE_S) is None  # `serve`'s /health wait and --model-url check
        assert probe_router(server.url, timeout=PROBE_S) is None  # the router's /workers
        assert _ready_workers(server.url, timeout=PROBE_S) is None  # the router's /readiness
        sent = server.wait_over(3)
    assert all(bounded(n, mode) for n in sent), sent


async def test_serve_probe_from_async_code_is_bounded_too():
    # A sync probe called inside a running event loop runs its own loop in a worker thread.
    with endless("drip-body") as server:
        assert probe(server.url, timeout=PROBE_S) is None
        assert bounded(server.wait_over()[0], "drip-body")


async def test_client_server_info_reads_at_most_the_cap():
    with endless("flood") as server:
        async with SGLangClient(server.url) as client:
            with pytest.raises(ModelProtocolError, match=f"more than {PROBE_MAX_BYTES} bytes"):
                await client.server_info()
        assert bounded(server.wait_over()[0], "flood")


@pytest.mark.parametrize("mode", MODES)
async def test_a_router_worker_that_never_finishes_answering_is_left_out(mode):
    with endless(mode) as worker, _answering_workers([worker.url]) as router:
        async with httpx.AsyncClient(base_url=router) as http:
            assert (await worker_infos(http, timeout=PROBE_S)).infos == {}
        assert bounded(worker.wait_over()[0], mode)


@pytest.mark.parametrize("mode", ["drip-body", "drip-headers"])
async def test_a_router_that_never_finishes_listing_its_workers_is_a_timeout_for_the_client(mode):
    with endless(mode) as router:
        async with httpx.AsyncClient(base_url=router.url) as http:
            with pytest.raises(ModelTimeoutError, match=f"/workers did not answer within {PROBE_S:g} s"):
                await worker_infos(http, timeout=PROBE_S)
        assert bounded(router.wait_over()[0], mode)


async def test_the_clients_router_workers_are_probed_a_few_at_a_time_under_one_deadline():
    # As `probe_router`'s: the client opened one connection per listed worker, all at once (a router
    # may list thousands), each with a deadline of its own.
    hole = socket.create_server(("127.0.0.1", 0), backlog=1024)
    hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    try:
        with ScriptedModelServer(max_total_num_tokens=777) as good:
            listed = [good.url] + [f"{hole_url}/w{i}" for i in range(40)]
            with _answering_workers(listed) as router:
                async with httpx.AsyncClient(base_url=router) as http:
                    found = await worker_infos(http, timeout=5)
        made = _connections_made(hole)
    finally:
        hole.close()
    assert made <= MAX_CONCURRENT_WORKER_PROBES < 40, made
    assert list(found.infos) == [good.url] and found.infos[good.url]["max_total_num_tokens"] == 777
    assert found.unprobed == 0


async def test_the_client_probes_at_most_so_many_router_workers_and_says_how_many_it_left_out():
    listed = MAX_PROBED_WORKERS + 3
    with _capacity_server() as worker:
        urls = [f"{worker}/w{i}" for i in range(listed)]
        with _answering_workers(urls) as router:
            async with SGLangClient(router) as client:
                info = await client.server_info()
    assert info.worker_capacities == {url: 10 for url in urls[:MAX_PROBED_WORKERS]}
    assert info.max_total_num_tokens == 10 * MAX_PROBED_WORKERS and info.unprobed_workers == 3


@contextmanager
def _capacity_server() -> Iterator[str]:
    """Workers behind one port (`URL/w0`, `URL/w1`, ...): each answers its `/server_info` at once, with
    a KV capacity of 10 tokens."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Worker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"max_total_num_tokens": 10, "context_length": 100}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _answering_workers(urls: list[str]) -> Iterator[str]:
    """A router stand-in whose `/workers` lists `urls` (as SGLang's router does); it answers every other
    path the same way, which a client's `/server_info` reads as the router's summary (`workers_count`)."""
    workers = [{"url": u, "is_healthy": True} for u in urls]
    body = json.dumps({"workers": workers, "workers_count": len(urls)}).encode()
    sock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _connections_made(hole: socket.socket) -> int:
    """How many connections reached `hole` (a listener never accepted from: they wait in its backlog,
    their requests unanswered), counted by draining the backlog now."""
    hole.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = hole.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_router_workers_are_probed_together_under_one_deadline():
    # 40 listed workers whose /health never answers (a dead host, a hostile router's list): probed one
    # after another, each with its own deadline, every one of them would be connected to in turn, and
    # the check would take 40 deadlines. Under one deadline with a few probes at a time, the probes
    # waiting for a slot when it passes are never made.
    hole = socket.create_server(("127.0.0.1", 0), backlog=1024)
    hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    try:
        with ScriptedModelServer(max_total_num_tokens=777) as good:
            listed = [good.url] + [f"{hole_url}/w{i}" for i in range(40)]
            with _answering_workers(listed) as router:
                info = probe_router(router)
        made = _connections_made(hole)
    finally:
        hole.close()
    assert info is not None and len(info.workers) == 41 and info.unprobed == 0
    assert [(w.url, w.max_total_num_tokens) for w in info.workers if w.healthy] == [(good.url, 777)]
    assert made <= MAX_CONCURRENT_WORKER_PROBES < 40, made


def test_a_router_listing_more_workers_than_probed_says_how_many_were_left_out(capsys):
    hole = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listed = [f"http://127.0.0.1:{hole.getsockname()[1]}/w{i}" for i in range(MAX_PROBED_WORKERS + 3)]
    try:
        with _answering_workers(listed) as router:
            info = probe_router(router, timeout=PROBE_S)
    finally:
        hole.close()
    assert info is not None and info.unprobed == 3
    assert sorted(w.url for w in info.workers) == sorted(listed[:MAX_PROBED_WORKERS])
    assert not any(w.healthy for w in info.workers)
    report_fleet(info)
    out = capsys.readouterr().out
    assert f"worker {MAX_PROBED_WORKERS - 1}: " in out and f"worker {MAX_PROBED_WORKERS}: " not in out
    assert f"3 more workers listed by the router were not probed (at most {MAX_PROBED_WORKERS} are)" in out
