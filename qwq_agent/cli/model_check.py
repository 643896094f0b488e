"""Connecting the CLI to a model server, failing fast with advice instead of hanging."""

from __future__ import annotations

import asyncio

import httpx

from qwq_agent.agent.profiles import DEFAULT_PROFILE
from qwq_agent.cli.endpoint import check_model_url
from qwq_agent.cli.errors import EXIT_MODEL, CliError
from qwq_agent.http_env import Proxy, client_options, proxy_for
from qwq_agent.http_probe import AnswerTooLarge, get_capped
from qwq_agent.protocols import Model
from qwq_agent.urls import redact_url

KEY_HINT = "QWQ_OPENAI_API_KEY, OPENAI_API_KEY or DASHSCOPE_API_KEY"


class ModelUnavailable(CliError):
    """No model server answers at the configured URL; the message says what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what, fix, code=EXIT_MODEL)


def advice(url: str, why: str, proxy: Proxy | None = None) -> ModelUnavailable:
    """No server answers at `url`; through `proxy` (from the environment), it is named with its variable:
    a dead or refusing proxy otherwise reads as a dead server."""
    if proxy is not None:
        return ModelUnavailable(
            f"no model server answers at {redact_url(url)} through the proxy {proxy} ({why})",
            f"check that proxy (it must reach the server), or add the server's host to NO_PROXY, or unset "
            f"{proxy.variable}",
        )
    return ModelUnavailable(
        f"no model server answers at {redact_url(url)} ({why})",
        "start one on a GPU machine with `qwq-agent serve` (`pip install -e '.[serve]'` in a checkout), or point "
        "--model-url / QWQ_MODEL_URL at a running SGLang server (or an OpenAI-compatible one with --api openai)",
    )


def _plain_http_hint(url: str) -> str:
    # A plain-HTTP server never answers (or garbles) a TLS handshake.
    return (
        "; if the server speaks plain HTTP, use http:// instead of https://"
        if url.startswith("https://")
        else ""
    )


async def connect_model(
    url: str,
    *,
    api: str = "native",
    model: str = "Qwen/QwQ-32B",
    keep_reasoning: bool = False,
    profile: str = DEFAULT_PROFILE.name,
    written_order: bool = True,
    exact_tokens: bool = True,
    timeout: float = 3.0,
    routing_key: str | None = None,
) -> Model:
    """A client for `url` once the server has answered a cheap request within `timeout` seconds (the
    whole answer, however slowly it trickles in, of at most `PROBE_MAX_BYTES`).

    `keep_reasoning`, `profile` (the chat format), `written_order` and `exact_tokens` are how the native
    client renders and sends prompts (`PromptOptions`); an OpenAI-compatible server renders them itself.

    `routing_key` (a run's id) is sent with every request, so SGLang's router under session affinity
    (`serve --dp N --router-policy affinity`) keeps the run on one replica; other servers ignore it.
    """
    check_model_url(url)
    probe = "/health" if api == "native" else "/v1/models"
    headers: dict[str, str] = {}
    if api == "native":
        probe_url = url.rstrip("/") + probe
    else:
        # Asked as the client will ask: under the same base and with the key it will send, or a
        # key-protected server refused every run before it began.
        from qwq_agent.agent.clients.openai_chat import openai_base_url
        from qwq_agent.settings import get_settings

        probe_url = openai_base_url(url) + "/models"
        if key := get_settings().openai_api_key:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
    proxy = proxy_for(probe_url)
    try:
        # httpx's timeout bounds each read, not the request: a server dripping its answer would keep
        # the CLI waiting, silent, before any run (and its deadline) begins.
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(timeout=timeout, headers=headers, **client_options(probe_url)) as http,
        ):
            answer = await get_capped(http, probe_url)
    except TimeoutError:
        # The deadline may have cut short a TLS handshake, as httpx's ConnectTimeout would have.
        raise advice(
            url, f"{probe} did not answer within {timeout:g} s" + _plain_http_hint(url), proxy
        ) from None
    except AnswerTooLarge as exc:
        raise advice(url, str(exc), proxy) from None
    except httpx.HTTPError as exc:
        why = type(exc).__name__
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            why += _plain_http_hint(url)
        raise advice(url, why, proxy) from None
    if answer.status_code in (401, 403):
        raise ModelUnavailable(
            f"the model server at {redact_url(url)} refused the API key (HTTP {answer.status_code} on {probe})",
            f"set the server's key in {KEY_HINT}",
        )
    if api == "native" and answer.status_code != 200:
        raise advice(url, f"{probe} answered {answer.status_code}", proxy)
    if api == "native":
        from qwq_agent.agent.clients import SGLangClient

        return SGLangClient(
            url,
            profile=profile,
            keep_reasoning=keep_reasoning,
            written_order=written_order,
            exact_tokens=exact_tokens,
            routing_key=routing_key,
        )
    from qwq_agent.agent.clients.openai_chat import OpenAIChatClient

    return OpenAIChatClient(url, model=model, routing_key=routing_key)
