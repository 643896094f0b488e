"""What `qwq-agent run` runs with: its flags, or for --replay/--resume the recorded run's settings.

A replay must rebuild the run it recorded, not today's CLI defaults: the tools, their options, the
`AgentConfig` and how prompts are rendered (`--keep-reasoning`) come from the trace's `run_started` event. A flag given explicitly still wins, and each
such override is reported, since it makes the run diverge from its recording.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from qwq_agent.agent.chat_format import PromptOptions
from qwq_agent.agent.config import AgentConfig
from qwq_agent.agent.replay import Recording

DEFAULT_TOOLS = "python,shell,str_replace_editor,search_code"
DEFAULT_MAX_STEPS = 30
DEFAULT_MAX_NEW_TOKENS = 8192
# The `build_tools` keywords a trace may record.
TOOL_OPTION_KEYS = ("docs_db", "allow_loopback_fetch")
# Recorded with them, not passed to `build_tools`: the folder the sandbox's /workspace started from.
WORKSPACE_KEY = "workspace"
# Recorded too: the names of the tools that MCP servers (--mcp/--mcp-url) gave the run. They are in
# `run_started.tools` beside the built-in ones, and a replay gets them from the same servers again.
MCP_TOOLS_KEY = "mcp_tools"


class RunSettings(BaseModel):
    """The tools (by name), their `build_tools` options and the agent's configuration for one run."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tools: list[str]
    tool_options: dict[str, Any]
    config: AgentConfig
    workspace: str | None = None
    # How the model client renders prompts (a client setting, recorded in `run_started.prompt_options`).
    prompt: PromptOptions = PromptOptions()
    # On a replay: the recorded tools that came from MCP servers (not in `tools`, which are built).
    mcp_tools: list[str] = []
    overrides: list[str] = []

    def build_options(self) -> dict[str, Any]:
        """The `build_tools` keywords."""
        return {k: v for k, v in self.tool_options.items() if k in TOOL_OPTION_KEYS}

    def recorded_options(self, mcp_tools: list[str] | None = None) -> dict[str, Any]:
        """What `run_started.tool_options` records; `mcp_tools`: the names the MCP servers gave."""
        return {
            **self.build_options(),
            **({WORKSPACE_KEY: self.workspace} if self.workspace else {}),
            **({MCP_TOOLS_KEY: list(mcp_tools)} if mcp_tools else {}),
        }


def _absolute(path: Path) -> str:
    """`path` as recorded: absolute, so that a replay or resume from another folder finds the same file."""
    return str(path.resolve())


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def fresh_settings(args: argparse.Namespace) -> RunSettings:
    """Settings from the flags, with the CLI's defaults for those not given."""
    from qwq_agent.agent.budgets import Budget
    from qwq_agent.protocols import SamplingParams

    options: dict[str, Any] = {"docs_db": _absolute(args.docs_db)} if args.docs_db is not None else {}
    config = AgentConfig(
        budget=Budget(max_steps=args.max_steps if args.max_steps is not None else DEFAULT_MAX_STEPS),
        sampling=SamplingParams(
            max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS
        ),
        constrained_tool_calls=bool(args.constrained),
    )
    workspace = _absolute(args.workspace) if args.workspace is not None else None
    return RunSettings(
        tools=_names(args.tools or DEFAULT_TOOLS),
        tool_options=options,
        config=config,
        workspace=workspace,
        prompt=PromptOptions(keep_reasoning=bool(args.keep_reasoning)),
    )


def recorded_settings(args: argparse.Namespace, recording: Recording) -> RunSettings:
    """The recorded run's settings, with the flags given explicitly applied on top (and listed).

    The recorded tools that came from MCP servers go to `mcp_tools`, to be had from the servers given
    again (`--mcp`/`--mcp-url`). A trace written before they were recorded does not say which they
    were: given servers, the names that are no built-in tool are taken to be theirs.
    """
    from qwq_agent.tools.catalog import TOOL_NAMES

    mcp_tools = [str(n) for n in recording.tool_options.get(MCP_TOOLS_KEY) or []]
    if not mcp_tools and (args.mcp or args.mcp_url):
        mcp_tools = [n for n in recording.tools if n not in TOOL_NAMES]
    tools = [n for n in recording.tools if n not in mcp_tools]
    options = {k: v for k, v in recording.tool_options.items() if k in TOOL_OPTION_KEYS}
    config = recording.agent_config()
    overrides: list[str] = []
    workspace = recording.tool_options.get(WORKSPACE_KEY)
    if args.workspace is not None and _absolute(args.workspace) != workspace:
        overrides.append(f"workspace {args.workspace} (recorded: {workspace})")
        workspace = _absolute(args.workspace)
    if args.tools is not None and _names(args.tools) != tools:
        overrides.append(f"tools {','.join(_names(args.tools))} (recorded: {','.join(tools)})")
        tools = _names(args.tools)
    if args.docs_db is not None and _absolute(args.docs_db) != options.get("docs_db"):
        overrides.append(f"docs db {args.docs_db} (recorded: {options.get('docs_db')})")
        options["docs_db"] = _absolute(args.docs_db)
    if args.max_steps is not None and args.max_steps != config.budget.max_steps:
        overrides.append(f"max steps {args.max_steps} (recorded: {config.budget.max_steps})")
        config.budget = config.budget.model_copy(update={"max_steps": args.max_steps})
    if args.max_new_tokens is not None and args.max_new_tokens != config.sampling.max_new_tokens:
        overrides.append(f"max new tokens {args.max_new_tokens} (recorded: {config.sampling.max_new_tokens})")
        config.sampling = config.sampling.model_copy(update={"max_new_tokens": args.max_new_tokens})
    if args.constrained and not config.constrained_tool_calls:
        overrides.append("constrained tool calls (recorded: off)")
        config.constrained_tool_calls = True
    prompt = recording.prompt()
    if args.keep_reasoning is not None and args.keep_reasoning != prompt.keep_reasoning:
        recorded = "on" if prompt.keep_reasoning else "off"
        overrides.append(f"keep reasoning {'on' if args.keep_reasoning else 'off'} (recorded: {recorded})")
        prompt = prompt.model_copy(update={"keep_reasoning": args.keep_reasoning})
    return RunSettings(
        tools=tools,
        tool_options=options,
        config=config,
        workspace=workspace,
        prompt=prompt,
        mcp_tools=mcp_tools,
        overrides=overrides,
    )
