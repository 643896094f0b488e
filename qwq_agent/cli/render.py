"""Rich terminal view of agent events, shared by `run` (live) and `trace show` (after the fact)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from qwq_agent.agent.events import (
    BranchEnded,
    BranchesStarted,
    BranchSelected,
    BudgetExceeded,
    ContentDelta,
    Event,
    Final,
    ModelCall,
    ReasoningDelta,
    ReplayEnded,
    RunStarted,
    ToolCallEvent,
    ToolOutputDelta,
    ToolResultEvent,
    ToolStarted,
    Warning_,
)
from qwq_agent.agent.parser import parse
from qwq_agent.cli.activity import Activity
from qwq_agent.cli.image_files import write_new_png
from qwq_agent.cli.reasoning_view import FoldedReasoning, ReasoningMode
from qwq_agent.cli.safe_text import plain, safe

MAX_RESULT_CHARS = 4000
_BLANK_RUNS = re.compile(r"\n{3,}")


class EventRenderer:
    """Prints events as they come: reasoning dimmed, tool calls and results as panels."""

    def __init__(
        self,
        console: Console,
        *,
        image_dir: Path | None = None,
        show_prompts: bool = False,
        replaying: bool = False,
        reasoning: ReasoningMode = "full",
        status: bool | None = None,
    ) -> None:
        self.console = console
        self.image_dir = image_dir
        self.show_prompts = show_prompts
        # A trace has no deltas: its model_call events carry the whole text instead.
        self.replaying = replaying
        self._images = 0
        self.saved_images: list[Path] = []  # absolute paths of the images written to `image_dir`
        self._in_text = False
        self._newlines = 1  # newlines at the end of what was printed last
        self.reasoning = reasoning
        self._folded = FoldedReasoning(console, reasoning)
        # The live status (waiting for a first token, tools running); on terminals only, never in a replay.
        self.activity = Activity(console, enabled=False if replaying else status)
        self._running: dict[str, str] = {}  # call id -> tool name, of the tools running now

    def close(self) -> None:
        """Remove the live displays (before printing anything else, e.g. after Ctrl-C)."""
        if self._folded.active:
            self._folded.end()
        self.activity.stop()

    def handle(self, ev: Event) -> None:
        # The status goes first: rich shows one live display at a time, and the folded reasoning is one.
        if self._status(ev):
            return
        if isinstance(ev, ReasoningDelta) and self.reasoning != "full":
            self._folded.add(ev.text)
            return
        if self._folded.active:
            self._folded.end()
            self._in_text, self._newlines = False, 1
        if isinstance(ev, ReasoningDelta):
            self._text(ev.text, "dim")
        elif isinstance(ev, ContentDelta):
            self._text(ev.text, "")
        else:
            if self._in_text and self._newlines == 0:
                self.console.print()
            self._in_text = False
            self._newlines = 1
            self._structured(ev)
            self._after(ev)

    def _status(self, ev: Event) -> bool:
        """Update the live status for `ev`; True when that is all `ev` shows (tool progress)."""
        a = self.activity
        if isinstance(ev, ToolStarted):
            self._running[ev.call_id] = ev.name
            a.start(
                f"running {', '.join(self._running.values())}", keep_clock=a.active and len(self._running) > 1
            )
            return True
        if isinstance(ev, ToolOutputDelta):
            a.output(ev.text)
            return True
        if isinstance(ev, ToolResultEvent):
            self._running.pop(ev.call_id, None)
            if self._running:
                a.start(f"running {', '.join(self._running.values())}", keep_clock=True)
            else:
                a.stop()
        elif isinstance(ev, (ReasoningDelta, ContentDelta, ModelCall, Final)):
            a.stop()  # text streams in (or the step ends): the status must not sit inside a line
        return False

    def _after(self, ev: Event) -> None:
        """Once `ev` is printed: what is waited on next."""
        waiting = isinstance(ev, RunStarted) or (isinstance(ev, ToolResultEvent) and not self._running)
        if waiting and not self.activity.active:
            self.activity.start("waiting for the model's first token")

    def _text(self, text: str, style: str) -> None:
        """Print a delta, keeping at most one blank line between paragraphs across deltas."""
        lead = len(text) - len(text.lstrip("\n"))
        text = "\n" * min(lead, max(0, 2 - self._newlines)) + text[lead:]
        text = _BLANK_RUNS.sub("\n\n", text)
        if not text:
            return
        self.console.print(plain(text, style), end="")
        body = text.rstrip("\n")
        self._newlines = len(text) - len(body) if body else self._newlines + len(text)
        self._in_text = True

    def _structured(self, ev: Event) -> None:
        c = self.console
        if isinstance(ev, RunStarted):
            c.rule(plain(f"run {ev.run_id} · {ev.model}", "bold"))
            c.print(Panel(plain(ev.task), title="task", border_style="cyan"))
            if ev.sandbox_id:
                c.print(f"[dim]sandbox {ev.sandbox_id} · tools: {', '.join(ev.tools)}[/dim]")
            if ev.history:
                c.print(f"[dim]continues a conversation of {len(ev.history)} earlier messages[/dim]")
        elif isinstance(ev, ModelCall):
            if self.show_prompts and ev.prompt:
                c.print(Panel(plain(ev.prompt), title="prompt", border_style="dim"))
            if self.replaying and not ev.probe:  # a probe's answer was never part of the turn
                result = parse(ev.prefix + ev.completion)
                if result.reasoning and self.reasoning == "full":
                    c.print(plain(result.reasoning.strip(), "dim"))
                elif result.reasoning:
                    self._folded.add(result.reasoning)
                    self._folded.end()
                if result.content.strip():
                    c.print(plain(result.content.strip()))
            u = ev.usage
            c.print(
                f"[dim]step {ev.step}{' (probe)' if ev.probe else ''}: {u.prompt_tokens} prompt tokens ({u.cached_tokens} cached), "
                f"{u.completion_tokens} generated, finish={u.finish_reason}[/dim]"
            )
            if ev.error is not None:
                c.print(plain(f"the request failed: {ev.error}", "dim"))
        elif isinstance(ev, ToolCallEvent):
            import json

            args = json.dumps(ev.call.arguments, ensure_ascii=False, indent=2)
            body = ev.call.arguments.get("code") if ev.call.name == "python" else None
            renderable = Syntax(safe(body), "python") if isinstance(body, str) else Syntax(safe(args), "json")
            c.print(Panel(renderable, title=plain(f"tool call · {ev.call.name}"), border_style="blue"))
            if ev.repairs:
                c.print(plain(f"repaired: {'; '.join(ev.repairs)}", "dim"))
        elif isinstance(ev, ToolResultEvent):
            text = ev.text if len(ev.text) <= MAX_RESULT_CHARS else ev.text[:MAX_RESULT_CHARS] + "\n…"
            style = "red" if ev.is_error else "green"
            title = plain(f"result · {ev.name} · {ev.duration_s:.2f}s")
            c.print(Panel(plain(text), title=title, border_style=style))
            for img in ev.images:
                self._save_image(img)
        elif isinstance(ev, Warning_):
            c.print(plain(f"⚠ {ev.kind} (level {ev.level}): {ev.message}", "yellow"))
        elif isinstance(ev, ReplayEnded):
            c.rule(
                f"[cyan]replay ends after {ev.completions} recorded completions: the live model takes over[/cyan]"
            )
        elif isinstance(ev, (BranchesStarted, BranchEnded, BranchSelected)):
            self._branches(ev)
        elif isinstance(ev, BudgetExceeded):
            c.print(f"[red]budget {ev.budget} used up: {_amount(ev.used)} of {_amount(ev.limit)}[/red]")
        elif isinstance(ev, Final):
            self._summary(ev)

    def _branches(self, ev: BranchesStarted | BranchEnded | BranchSelected) -> None:
        """An exploration's parent trace: the fork, one line per branch (with its trace), the winner."""
        c = self.console
        if isinstance(ev, BranchesStarted):
            warm = f", shared prefix prefilled once ({ev.warmup.prompt_tokens} tokens)" if ev.warmup else ""
            c.print(f"[bold]{ev.n} branches[/bold] · select {ev.select}{warm}", soft_wrap=True)
        elif isinstance(ev, BranchEnded):
            why = ev.verdict or ev.error or ""
            cached = f"first turn {ev.first_turn_cached_tokens}/{ev.first_turn_prompt_tokens} cached"
            line = f"branch {ev.index}: {ev.status}" + (f" - {why}" if why else "") + f" · {cached}"
            c.print(plain(line, "green" if ev.passed else ""))
            if ev.trace:
                c.print(plain(f"  trace: {ev.trace}", "dim"), soft_wrap=True)
        elif ev.winner is None:
            c.print(plain(f"no branch won: {ev.reason}", "red"))
        else:
            c.print(plain(f"branch {ev.winner} won: {ev.reason}", "bold green"))

    def _save_image(self, b64: str) -> None:
        self._images += 1
        if self.image_dir is None:
            self.console.print(f"[dim](image {self._images} not saved: pass --images DIR to save it)[/dim]")
            return
        try:
            # A tool (an MCP server) may send any text as image data: such an image is dropped, not the run
            data = base64.b64decode("".join(b64.split()), validate=True)  # line breaks are allowed
        except ValueError:  # binascii.Error
            self.console.print(f"[dim](image {self._images} not saved: its data is not valid base64)[/dim]")
            return
        # Absolute, so that a terminal (or a click on the path) opens it from anywhere.
        try:
            path = write_new_png(self.image_dir, self._images, data)
        except OSError as exc:  # e.g. started from a folder it cannot write: the image is lost, not the run
            reason = exc.strerror or str(exc) or type(exc).__name__
            note = f"(image {self._images} not saved: {reason}: {exc.filename or self.image_dir})"
            self.console.print(plain(note, "dim"), soft_wrap=True)
            return
        self.saved_images.append(path)
        self.console.print(plain(f"image saved: {path}", "magenta"), soft_wrap=True)

    def _summary(self, ev: Final) -> None:
        c = self.console
        if ev.answer:
            if ev.status == "completed":
                c.print(Panel(plain(ev.answer), title="answer", border_style="bold green"))
            else:  # what was written before the run ended (`truncated_answer`): not an answer to act on
                c.print(
                    Panel(plain(ev.answer), title=f"answer, unfinished ({ev.status})", border_style="yellow")
                )
        t = ev.totals
        table = Table(title=f"run {ev.run_id}: {ev.status}", show_header=False)
        prompt = t.get("prompt_tokens", 0) or 0
        cached = t.get("cached_tokens", 0) or 0
        share = f" ({100 * cached / prompt:.0f}% cached)" if prompt else ""
        table.add_row("steps", _amount(t.get("steps", 0)))
        table.add_row("prompt tokens", f"{_amount(prompt)}{share}")
        table.add_row("generated tokens", _amount(t.get("generated_tokens", 0)))
        table.add_row("tool time", f"{t.get('tool_s', 0):.2f} s")
        table.add_row("wall time", f"{t.get('wall_s', 0):.2f} s")
        if ev.error:
            table.add_row("error", plain(ev.error))
        c.print(table)


def _amount(value: float) -> str:
    """A count with every digit, grouped in thousands (5,504,887: `:g` gave 5.50489e+06, its last
    digits lost); a quantity that is not whole (seconds) to two decimals."""
    number = float(value or 0)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.2f}"
