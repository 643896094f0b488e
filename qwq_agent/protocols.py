"""The seams of qwq-agent: what a model, a sandbox and a tool must provide.

Each is a `typing.Protocol`, so users plug in their own implementations without subclassing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.deadline import Deadline

if TYPE_CHECKING:  # the result models live with the sandbox's wire protocol (no import cycle at run time)
    from qwq_agent.sandbox.protocol import (
        DownloadResult,
        FileResult,
        OutputChunk,
        PythonResult,
        SearchResult,
        ShellResult,
        UploadResult,
    )
    from qwq_agent.sandbox.snapshot import PythonState, RestoreResult, Snapshot


class SamplingParams(BaseModel):
    """Sampling for one completion; defaults are QwQ-32B's recommended settings."""

    # A misspelt setting (`temprature=0`) is an error: ignored, the request went with the default.
    model_config = ConfigDict(extra="forbid")

    # At least one: with 0 a turn generated nothing and the run "completed" with an empty answer.
    max_new_tokens: int = Field(default=4096, ge=1)
    # Finite and in the range servers take (NaN compares false with every check a server makes).
    temperature: float = Field(default=0.6, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    top_k: int = Field(default=40, ge=-1)  # -1: no top-k cut-off
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    # The sampler's seed (SGLang's `sampling_seed`, OpenAI's `seed`); parallel branches set one each.
    seed: int | None = None
    # Structured-output constraints (SGLang/xgrammar); at most one may be set.
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None


class Usage(BaseModel):
    """Token accounting and timing of one model call."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None


class TextDelta(BaseModel):
    """A piece of the model's raw output, in QwQ's format (reasoning, `</think>`, content, `<tool_call>`)."""

    kind: str = "text"
    text: str
    usage: Usage | None = None
    """What the request has cost so far, as the client counts it (the server's running counts, else one
    token per piece received), when it knows. A reader that closes the stream early (the loop detector,
    a tool call finished under a grammar) gets no `Completion`: the last of these is what it spent."""


class Completion(BaseModel):
    """The end of one model call: the whole raw output, the exact prompt sent (when known) and usage."""

    kind: str = "completion"
    text: str
    prompt: str | None = None
    usage: Usage = Field(default_factory=Usage)
    output_ids: list[int] = Field(default_factory=list)
    """The token ids the server generated, when its API reports them (empty otherwise)."""
    messages: list[dict[str, Any]] | None = None
    """The chat messages sent, for an API that takes messages instead of a prompt (OpenAI-compatible),
    so that a replay can check its requests against them as against a recorded prompt."""
    tools_digest: str | None = None
    """A digest of the tools sent along with `messages` (`openai_chat.tools_digest`)."""


ModelEvent = TextDelta | Completion


@runtime_checkable
class Model(Protocol):
    """A reasoning model behind some API.

    `stream` yields `TextDelta`s as the output arrives and exactly one `Completion` last. `prefix` is
    text the assistant turn already holds (the loop uses it to continue a turn it interrupted, e.g. to
    nudge a looping model); it is appended after the generation prompt and is not part of the output. Clients for APIs
    that parse reasoning and tool calls server-side (OpenAI-compatible) re-serialise them into QwQ's raw
    format, so the loop parses one format whatever the backend. A `TextDelta` may carry the request's
    `usage` so far: when the loop closes the stream before its `Completion` (an intervention), that is
    what the request counts against the budgets; a model that sends none is counted one token per delta.

    A backend that cannot stream may yield its `Completion` alone: its `text` is then the output. When
    deltas came they are the output (parsed, watched and shown as they came) and `Completion.text` is
    not read. Anything else yielded (a `str`, a dict, None) ends the run `model_error` with a
    `TypeError` naming the model and what it yielded.
    """

    name: str

    def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PromptModel(Model, Protocol):
    """A `Model` that renders QwQ's chat template itself and completes raw prompts (SGLang's native API).

    The loop needs both to finish a tool call under a grammar: the exact prompt so far, and a completion
    of it under constraints set in `params`. OpenAI-compatible clients render server-side and are not one.
    """

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str: ...

    async def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion: ...


@runtime_checkable
class PromptCounter(Protocol):
    """A model that can tell how many tokens a request's prompt will hold before it sends it.

    The turn asks before every request, so that the prompt plus `max_new_tokens` fit the model's context
    (`qwq_agent.agent.turn_limits`). The count should be what the server will count: exact where the
    client builds the prompt itself, else an estimate that errs high. None: it cannot tell (no
    tokenizer installed); the turn then goes by what the server reported for the turn's last request.
    """

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> int | None: ...


class ToolOutput(BaseModel):
    """What a tool hands back to the loop: text for the model, images (PNG bytes, base64) for the user."""

    text: str
    images: list[str] = Field(default_factory=list)
    is_error: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Tool(Protocol):
    """A named, described, JSON-Schema-typed async callable.

    `uses_sandbox` is part of a tool's definition: True when it reads or changes the run's sandbox.
    Such calls run one at a time in the order the model wrote them (an edit, then a search of what
    was edited); calls of tools that do not touch the sandbox run concurrently.
    """

    @property
    def uses_sandbox(self) -> bool: ...

    @property
    def spec(self) -> ToolSpec: ...

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput: ...


@runtime_checkable
class Sandbox(Protocol):
    """An isolated place to run code: every operation the built-in tools use, with typed results.

    `qwq_agent.sandbox.DockerSandbox` implements it (on any Docker host: a local socket, `ssh://`,
    `tcp://` with TLS); another backend (e.g. Kubernetes pods, see docs/scale-out.md) implements the
    same methods. Failures raise `qwq_agent.sandbox.SandboxError` subclasses (`SandboxDead`,
    `SandboxHostLost`, `SandboxTimeout`, `ToolError`, ...), whose messages are written for the model.

    `timeout` is the in-sandbox limit of a call; `deadline`, when given, is when its result must be
    back (the limit is shortened to fit); `on_output` receives output while the call runs.
    """

    id: str

    # -- code ------------------------------------------------------------------------------------
    async def python(
        self,
        code: str,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        on_output: Callable[[OutputChunk], None] | None = None,
    ) -> PythonResult:
        """Run a cell in the sandbox's persistent interpreter."""
        ...

    async def shell(
        self,
        command: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        deadline: Deadline | None = None,
        on_output: Callable[[OutputChunk], None] | None = None,
    ) -> ShellResult:
        """Run `bash -c command`; everything it started is killed when it returns."""
        ...

    def clamp_timeout(
        self, timeout: float | None, deadline: Deadline | None, default: float | None = None
    ) -> float:
        """The in-sandbox limit for `timeout` such that the call reports back before `deadline`."""
        ...

    # -- the editor (str_replace_editor's commands); with `deadline`, the reply is awaited until just
    # before it (an unresponsive sandbox is given up then), as for python and shell ------------------
    async def view(
        self, path: str, view_range: list[int] | None = None, *, deadline: Deadline | None = None
    ) -> FileResult: ...

    async def create_file(
        self, path: str, file_text: str, *, deadline: Deadline | None = None
    ) -> FileResult: ...

    async def str_replace(
        self, path: str, old_str: str, new_str: str = "", *, deadline: Deadline | None = None
    ) -> FileResult: ...

    async def insert(
        self, path: str, insert_line: int, new_str: str, *, deadline: Deadline | None = None
    ) -> FileResult: ...

    async def undo_edit(self, path: str, *, deadline: Deadline | None = None) -> FileResult: ...

    # -- search and files ------------------------------------------------------------------------
    async def search(
        self,
        pattern: str,
        *,
        path: str = "/workspace",
        literal: bool = False,
        globs: list[str] = ...,
        context_lines: int = 0,
        case: Literal["smart", "sensitive", "insensitive"] = "smart",
        max_results: int = 100,
        timeout: float = 30.0,
    ) -> SearchResult:
        """ripgrep over the workspace."""
        ...

    async def upload(
        self,
        local: str | os.PathLike[str],
        dest: str = "/workspace",
        *,
        contents: bool = False,
        exclude: Sequence[str] = (),
    ) -> UploadResult:
        """Copy a local file or folder into the sandbox directory `dest`."""
        ...

    async def download(self, src: str, local_dir: str | os.PathLike[str]) -> DownloadResult:
        """Copy a sandbox file or folder into the local directory `local_dir` (checked first); what
        git would run commands from is left out (`sandbox.git_files`)."""
        ...

    # -- file state --------------------------------------------------------------------------------
    async def snapshot(self, *, max_bytes: int = ..., timeout: float = 120.0) -> Snapshot:
        """Archive the workspace and home into a `Snapshot` the host keeps (size-capped)."""
        ...

    async def restore(
        self, snapshot: Snapshot, *, python_state: PythonState = "fresh", timeout: float = 120.0
    ) -> RestoreResult:
        """Replace the workspace and home with `snapshot`'s files; rebuild or reset the interpreter."""
        ...

    # -- lifetime --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Destroy the sandbox (idempotent)."""
        ...


class ToolContext(BaseModel):
    """What a tool call may use besides its arguments: the run's sandbox, its deadline, free-form extras.

    `deadline` is when the call must be done (the run's wall time, the loop's per-call limit and the
    tool-time budget, whichever comes first); a tool that waits on something should clamp to it.
    `on_output(stream, text, capped)`, when set, takes output the tool produces while it runs ("stdout"
    or "stderr"; `capped` once no more will be streamed); the loop turns it into `ToolOutputDelta`
    events. It may be called from a sync tool's thread; output after the call ended is dropped. The
    tool's result must still hold all of it.
    """

    model_config = {"arbitrary_types_allowed": True}

    sandbox: Sandbox | None = None
    run_id: str = ""
    call_id: str = ""
    deadline: Deadline | None = None
    extras: dict[str, Any] = Field(default_factory=dict)
    on_output: Callable[[str, str, bool], None] | None = None
