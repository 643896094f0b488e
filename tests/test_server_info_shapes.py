"""Odd but well-formed `/server_info` answers (a proxy, another server, an older or newer SGLang) read as
unknown capacity, never as a crash: in `serve --model-url` (single server and router) and in
`SGLangClient.server_info()`, which raises a typed `ModelProtocolError` for a router's `/workers` that is
not a list of workers. Each server is real HTTP on 127.0.0.1 answering fixed JSON bodies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.clients.errors import ModelProtocolError
from qwq_agent.cli.main import main
from qwq_agent.server_info import read_server_info


@contextmanager
def answering(routes: dict[str, bytes]) -> Iterator[str]:
    """An HTTP server answering GET `path` with 200 and `routes[path]` (404 elsewhere); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = routes.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    "raw",
    [
        [1, 2],
        "text",
        None,
        {"max_total_num_tokens": "264497", "context_length": "32k", "model_path": 7},
        {"max_total_num_tokens": float("inf"), "context_length": float("nan")},
        {"max_total_num_tokens": True},
        {"max_total_num_tokens": -5},
        {"max_total_num_tokens": 10**40},
        {"internal_states": "x"},
        {"internal_states": [["not", "a", "dict"]]},
    ],
)
def test_an_odd_server_info_reads_as_unknown(raw):
    facts = read_server_info(raw)
    assert facts.max_total_num_tokens is None and facts.context_length is None and facts.model is None


def test_server_info_in_either_place_is_read():
    assert read_server_info({"max_total_num_tokens": 264497.0}).max_total_num_tokens == 264497
    old = read_server_info({"internal_states": [{"max_total_num_tokens": 1000}], "served_model_name": "qwq"})
    assert old.max_total_num_tokens == 1000 and old.model == "qwq"


def test_serve_model_url_shows_an_odd_capacity_as_unknown(capsys):
    with answering({"/health": b"ok", "/server_info": b"[1, 2]"}) as url:
        assert main(["serve", "--model-url", url]) == 0
    out = capsys.readouterr().out
    assert f"ready: {url}" in out and "KV capacity: unknown" in out


def test_serve_model_url_of_a_router_with_an_odd_worker_capacity(capsys):
    worker_info = json.dumps({"model_path": "m", "max_total_num_tokens": "264497"}).encode()
    with answering({"/health": b"ok", "/server_info": worker_info}) as worker:
        workers = json.dumps({"workers": [{"url": worker, "is_healthy": True}]}).encode()
        with answering({"/workers": workers}) as router:
            assert main(["serve", "--model-url", router]) == 0
    out = capsys.readouterr().out
    assert f"worker 0: {worker} healthy, KV capacity: unknown" in out
    assert "total KV capacity: 0 tokens over 0 workers" in out


async def test_client_server_info_reads_an_infinite_capacity_as_unknown():
    with answering({"/server_info": b'{"model_path": "m", "max_total_num_tokens": Infinity}'}) as url:
        async with SGLangClient(url) as client:
            info = await client.server_info()
    assert info.model_path == "m" and info.max_total_num_tokens is None


async def test_client_server_info_of_a_router_whose_workers_are_not_a_list_is_a_protocol_error():
    with answering({"/server_info": b'{"router_manager": true}', "/workers": b"[]"}) as url:
        async with SGLangClient(url) as client:
            with pytest.raises(ModelProtocolError, match="/workers"):
                await client.server_info()


async def test_client_server_info_of_a_router_with_odd_workers_sums_only_real_capacities():
    with answering({"/server_info": b'{"model_path": "a", "max_total_num_tokens": 1000}'}) as good:
        with answering({"/server_info": b'{"model_path": ["b"], "max_total_num_tokens": "2000"}'}) as odd:
            listed = {"workers": [{"url": good}, {"url": odd}]}
            routes = {"/server_info": b'{"router_manager": true}', "/workers": json.dumps(listed).encode()}
            with answering(routes) as router:
                async with SGLangClient(router) as client:
                    info = await client.server_info()
    assert info.worker_capacities == {good: 1000} and info.max_total_num_tokens == 1000
