"""Connecting the CLI to a model server, failing fast with advice instead of hanging."""

from __future__ import annotations

import httpx

from qwq_agent.protocols import Model


class ModelUnavailable(Exception):
    """No model server answers at the configured URL; the message says what to do."""


def advice(url: str, why: str) -> str:
    return (
        f"No model server answers at {url} ({why}).\n"
        "Start one on a GPU machine with `qwq-agent serve` (install it with `pip install 'qwq-agent[serve]'`),\n"
        "or point --model-url / QWQ_MODEL_URL at a running SGLang server, or at an OpenAI-compatible\n"
        "endpoint with --api openai (key in QWQ_API_KEY or OPENAI_API_KEY)."
    )


async def connect_model(
    url: str,
    *,
    api: str = "native",
    model: str = "Qwen/QwQ-32B",
    keep_reasoning: bool = False,
    timeout: float = 3.0,
) -> Model:
    """A client for `url` once the server has answered a cheap request within `timeout` seconds."""
    probe = "/health" if api == "native" else "/v1/models"
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(url.rstrip("/") + probe)
    except httpx.HTTPError as exc:
        raise ModelUnavailable(advice(url, type(exc).__name__)) from None
    if api == "native" and response.status_code != 200:
        raise ModelUnavailable(advice(url, f"{probe} answered {response.status_code}"))
    if api == "native":
        from qwq_agent.agent.clients import SGLangClient

        return SGLangClient(url, keep_reasoning=keep_reasoning)  # type: ignore[return-value]
    from qwq_agent.agent.clients.openai_chat import OpenAIChatClient

    return OpenAIChatClient(url, model=model)  # type: ignore[return-value]
