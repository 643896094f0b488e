"""What a client learns about the replicas behind SGLang's router (`sglang-router`).

The router answers `/get_server_info` with its own summary (`router_manager`, `workers_count`), not a
worker's configuration; the KV capacity an agent sizes its admission by is the sum of its workers'
(`/workers` lists them, each one's `/server_info` has `max_total_num_tokens`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from qwq_agent.agent.clients.errors import ModelProtocolError, ModelServerError
from qwq_agent.http_probe import AnswerTooLarge, get_capped


def is_router_summary(raw: dict[str, Any]) -> bool:
    """True for the router's own `/get_server_info` answer."""
    return "router_manager" in raw or ("workers_count" in raw and "max_total_num_tokens" not in raw)


async def worker_infos(http: httpx.AsyncClient, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Each healthy worker's `/server_info` (or `/get_server_info`), by URL; unreachable ones (and those
    answering anything but a JSON object of at most `PROBE_MAX_BYTES`, or not within `timeout` seconds)
    are left out.

    Raises `ModelProtocolError` when `/workers` is not the router's `{"workers": [...]}` (or is larger
    than `PROBE_MAX_BYTES`), `ModelServerError` when it answers an error status.
    """
    try:
        response = await get_capped(http, "/workers")
    except AnswerTooLarge as exc:
        raise ModelProtocolError(f"the router's {exc}") from None
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

    async def one(client: httpx.AsyncClient, url: str) -> tuple[str, dict[str, Any] | None]:
        try:
            # httpx's timeout bounds each read; a worker dripping its answer is left out, not waited on.
            async with asyncio.timeout(timeout):
                for path in ("/server_info", "/get_server_info"):
                    r = await get_capped(client, url.rstrip("/") + path)
                    if r.status_code == 200:
                        body = r.json_body()
                        return url, body if isinstance(body, dict) else None
        except (httpx.HTTPError, TimeoutError, AnswerTooLarge, ValueError):
            pass
        return url, None

    async with httpx.AsyncClient(timeout=timeout) as client:
        found = await asyncio.gather(*(one(client, u) for u in urls))
    return {url: info for url, info in found if info is not None}
