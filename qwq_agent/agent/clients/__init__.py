"""Model clients: SGLang's native `/generate` API and OpenAI-compatible chat APIs, one `Model` protocol."""

from qwq_agent.agent.clients.errors import (
    ModelClientClosed,
    ModelConnectionError,
    ModelContextExceeded,
    ModelError,
    ModelProtocolError,
    ModelServerError,
    ModelTimeoutError,
)
from qwq_agent.agent.clients.retry import NO_RETRY, RetryPolicy
from qwq_agent.agent.clients.sglang_native import ServerInfo, SGLangClient, SGLangCompletion, sampling_payload

__all__ = [
    "NO_RETRY",
    "ModelClientClosed",
    "ModelConnectionError",
    "ModelContextExceeded",
    "ModelError",
    "ModelProtocolError",
    "ModelServerError",
    "ModelTimeoutError",
    "RetryPolicy",
    "SGLangClient",
    "SGLangCompletion",
    "ServerInfo",
    "sampling_payload",
]

from qwq_agent.agent.clients.openai_chat import OpenAIChatClient, Secret

__all__ += ["OpenAIChatClient", "Secret"]
