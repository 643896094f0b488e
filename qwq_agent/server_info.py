"""The one reader of an SGLang server's `/server_info` answer: its shape checked, odd values unknown.

`serve` (its capacity read-out, single server and fleet) and the model client (`SGLangClient.server_info`,
admission sizing) both read this answer. It comes from whatever listens on the URL: an older or newer
SGLang, a proxy, another server. Well-formed JSON of the wrong shape (a list, a capacity as a string,
`Infinity`, which Python's json accepts) must not crash either reader: a value that is not what SGLang
sends reads as unknown (None), and the caller shows it as unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_TOKENS", "ServerFacts", "read_server_info", "token_total"]

MAX_TOKENS = 10**12
"""More tokens than any KV cache or context holds: a larger value is not a measurement."""


@dataclass(frozen=True)
class ServerFacts:
    """What `/server_info` says that we use; each None when absent or not of the expected type."""

    model_path: str | None = None
    served_model_name: str | None = None
    max_total_num_tokens: int | None = None
    """The KV-cache capacity in tokens."""
    context_length: int | None = None
    version: str | None = None

    @property
    def model(self) -> str | None:
        """The name the server answers to: its served model name, else its model path."""
        return self.served_model_name or self.model_path


def token_total(value: object) -> int | None:
    """`value` as a positive token count: a JSON integer (or an integral float) in 1..MAX_TOKENS, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value <= MAX_TOKENS:
        return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def read_server_info(raw: object) -> ServerFacts:
    """The facts in a `/server_info` (or `/get_server_info`) body; all unknown when it is not an object.

    The KV capacity is at the top level (SGLang >= 0.4) or in the first of `internal_states` (older).
    """
    if not isinstance(raw, dict):
        return ServerFacts()
    states: Any = raw.get("internal_states")
    first = states[0] if isinstance(states, list) and states and isinstance(states[0], dict) else {}
    capacity = (
        raw["max_total_num_tokens"] if "max_total_num_tokens" in raw else first.get("max_total_num_tokens")
    )
    return ServerFacts(
        model_path=_text(raw.get("model_path")),
        served_model_name=_text(raw.get("served_model_name")),
        max_total_num_tokens=token_total(capacity),
        context_length=token_total(raw.get("context_length")),
        version=_text(raw.get("version")),
    )
