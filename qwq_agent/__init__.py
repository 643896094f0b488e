"""qwq-agent: tool-using agents on reasoning models, with hardened Docker sandboxes.

The main names are importable from the top (`from qwq_agent import Agent, SandboxPool, tool`). They load
on first use, so `import qwq_agent` (and the CLI's start-up) stays cheap: no Docker SDK or HTTP client is
imported until a name that needs it is.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Agent": "qwq_agent.agent.loop",
    "AgentConfig": "qwq_agent.agent.loop",
    "RunResult": "qwq_agent.agent.loop",
    "SGLangClient": "qwq_agent.agent.clients",
    "OpenAIChatClient": "qwq_agent.agent.clients",
    "KVAdmission": "qwq_agent.agent.admission",
    "SandboxPool": "qwq_agent.sandbox",
    "DockerSandbox": "qwq_agent.sandbox",
    "SandboxConfig": "qwq_agent.sandbox",
    "tool": "qwq_agent.tools.base",
    "build_tools": "qwq_agent.tools.catalog",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "DockerSandbox",
    "KVAdmission",
    "OpenAIChatClient",
    "RunResult",
    "SGLangClient",
    "SandboxConfig",
    "SandboxPool",
    "__version__",
    "build_tools",
    "tool",
]

if TYPE_CHECKING:
    from qwq_agent.agent.admission import KVAdmission
    from qwq_agent.agent.clients import OpenAIChatClient, SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig, RunResult
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig, SandboxPool
    from qwq_agent.tools.base import tool
    from qwq_agent.tools.catalog import build_tools


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qwq_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
