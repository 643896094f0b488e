"""What a client learns about the replicas behind SGLang's router (`sglang-router`).

The router answers `/get_server_info` with its own summary (`router_manager`, `workers_count`), not a
worker's configuration; the KV capacity an agent sizes its admission by is the sum of its workers'
(`/workers` lists them, each one's `/server_info` has `max_total_num_tokens`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


def is_router_summary(raw: dict[str, Any]) -> bool:
    """True for the router's own `/get_server_info` answer."""
    return "router_manager" in raw or ("workers_count" in raw and "max_total_num_tokens" not in raw)


async def worker_infos(http: httpx.AsyncClient, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Each healthy worker's `/server_info` (or `/get_server_info`), by URL; unreachable ones are left out."""
    response = await http.get("/workers")
    response.raise_for_status()
    listed = response.json().get("workers") or []
    urls = [
        str(w["url"]) for w in listed if isinstance(w, dict) and w.get("url") and w.get("is_healthy", True)
    ]

    async def one(client: httpx.AsyncClient, url: str) -> tuple[str, dict[str, Any] | None]:
        for path in ("/server_info", "/get_server_info"):
            try:
                r = await client.get(url.rstrip("/") + path)
            except httpx.HTTPError:
                return url, None
            if r.status_code == 200:
                body = r.json()
                return url, body if isinstance(body, dict) else None
        return url, None

    async with httpx.AsyncClient(timeout=timeout) as client:
        found = await asyncio.gather(*(one(client, u) for u in urls))
    return {url: info for url, info in found if info is not None}


def capacity_of(raw: dict[str, Any]) -> int | None:
    """`max_total_num_tokens` of one worker's `/server_info` (top level or its first internal state)."""
    states = raw.get("internal_states") or [{}]
    first = states[0] if isinstance(states, list) and states and isinstance(states[0], dict) else {}
    value = raw.get("max_total_num_tokens", first.get("max_total_num_tokens"))
    return int(value) if isinstance(value, int | float) else None
