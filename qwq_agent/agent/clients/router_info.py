"""What a client learns about the replicas behind SGLang's router (`sglang-router`).

The router answers `/get_server_info` with its own summary (`router_manager`, `workers_count`), not a
worker's configuration; the KV capacity an agent sizes its admission by is the sum of its workers'
(`/workers` lists them, each one's `/server_info` has `max_total_num_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
from pydantic import BaseModel, Field

from qwq_agent.agent.clients.errors import ModelProtocolError, ModelServerError, ModelTimeoutError
from qwq_agent.http_env import client_options
from qwq_agent.http_probe import MAX_PROBED_WORKERS, AnswerTooLarge, get_capped, probe_each


def is_router_summary(raw: dict[str, Any]) -> bool:
    """True for the router's own `/get_server_info` answer."""
    return "router_manager" in raw or ("workers_count" in raw and "max_total_num_tokens" not in raw)


class WorkerInfos(BaseModel):
    """What `worker_infos` found: each answering worker's `/server_info`, and how many went unprobed."""

    infos: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each healthy worker's `/server_info` (or `/get_server_info`) by URL; those that did not answer
    with a JSON object in time are left out."""
    unprobed: int = 0
    """Healthy workers the router listed past `MAX_PROBED_WORKERS`: not probed, and not in `infos`."""


async def worker_infos(http: httpx.AsyncClient, timeout: float = 10.0) -> WorkerInfos:
    """The `/server_info` (or `/get_server_info`) of each healthy worker the router lists.

    `timeout` bounds the router's `/workers` answer, and then the workers' probes as a whole: at most
    2 x `timeout` in all, however many workers the router lists or however slowly they answer. The
    workers are probed `MAX_CONCURRENT_WORKER_PROBES` at a time, only the first `MAX_PROBED_WORKERS`
    healthy ones listed (`WorkerInfos.unprobed` counts the rest); one that has not answered a JSON
    object of at most `PROBE_MAX_BYTES` when the deadline passes (or is unreachable) is left out.

    Raises `ModelProtocolError` when `/workers` is not the router's `{"workers": [...]}` (or is larger
    than `PROBE_MAX_BYTES`), `ModelServerError` when it answers an error status, `ModelTimeoutError`
    when it has not answered within `timeout`.
    """
    try:
        async with asyncio.timeout(timeout):
            response = await get_capped(http, "/workers")
    except AnswerTooLarge as exc:
        raise ModelProtocolError(f"the router's {exc}") from None
    except TimeoutError:
        raise ModelTimeoutError(f"/workers did not answer within {timeout:g} s") from None
    if response.status_code >= 400:
        raise ModelServerError(
            f"the router's /workers answered {response.status_code}", status_code=response.status_code
        )
    try:
        body = response.json_body()
    except ValueError as exc:
        raise ModelProtocolError("the router's /workers did not answer JSON") from exc
    listed = body.get("workers") if isinstance(body, dict) else None
    if not isinstance(listed, list):
        raise ModelProtocolError(f"the router's /workers is not a list of workers: {response.text[:200]!r}")
    urls = [
        str(w["url"]) for w in listed if isinstance(w, dict) and w.get("url") and w.get("is_healthy", True)
    ]
    probed = urls[:MAX_PROBED_WORKERS]

    async def one(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
        try:
            for path in ("/server_info", "/get_server_info"):
                r = await get_capped(client, url.rstrip("/") + path)
                if r.status_code == 200:
                    body = r.json_body()
                    return body if isinstance(body, dict) else None
        except (httpx.HTTPError, httpx.InvalidURL, AnswerTooLarge, ValueError):
            pass
        return None

    found: list[dict[str, Any] | None] = [None] * len(probed)
    async with httpx.AsyncClient(timeout=timeout, **client_options(*probed)) as client:
        # httpx's timeout bounds each read; a worker dripping its answer is left out, not waited on.
        with contextlib.suppress(TimeoutError):  # the answers found by then stand
            async with asyncio.timeout(timeout):
                await probe_each(probed, lambda url: one(client, url), found)
    infos = {url: info for url, info in zip(probed, found, strict=True) if info is not None}
    return WorkerInfos(infos=infos, unprobed=len(urls) - len(probed))
