"""How the live view shows reasoning: in full, folded to its last lines, or not at all (`--reasoning`).

`tail` keeps the last `TAIL_LINES` lines on screen, redrawn in place as deltas arrive (a `rich.live.Live`,
transient), and when the reasoning ends prints them once more, under a line saying how many were folded
away; on a console that is not a terminal only that end state is printed. `off` prints one line saying
how much reasoning was hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # rich loads when a view is made, not when the CLI's parsers are built
    from rich.console import Console, Group
    from rich.live import Live

ReasoningMode = Literal["full", "tail", "off"]
REASONING_MODES: tuple[ReasoningMode, ...] = ("full", "tail", "off")
TAIL_LINES = 4


class FoldedReasoning:
    """Collects one stretch of reasoning and shows it folded (`tail`) or hidden (`off`)."""

    def __init__(self, console: Console, mode: ReasoningMode, *, lines: int = TAIL_LINES) -> None:
        self.console = console
        self.mode = mode
        self.lines = lines
        self._text = ""
        self._live: Live | None = None

    @property
    def active(self) -> bool:
        """Whether a stretch of reasoning is being collected."""
        return bool(self._text)

    def add(self, text: str) -> None:
        """One reasoning delta."""
        self._text += text
        if self.mode != "tail" or not self.console.is_terminal:
            return
        if self._live is None:
            from rich.live import Live

            self._live = Live(console=self.console, transient=True, auto_refresh=False)
            self._live.start()
        self._live.update(self._tail(), refresh=True)

    def end(self) -> None:
        """The reasoning is over (content or another event came): print what stays on screen."""
        if not self._text:
            return
        from rich.text import Text

        if self._live is not None:
            self._live.stop()
            self._live = None
        lines = self._text.strip("\n").splitlines()
        hidden = len(lines) if self.mode == "off" else max(0, len(lines) - self.lines)
        if self.mode == "off":
            self.console.print(
                Text(f"(reasoning: {len(lines)} lines, {len(self._text)} characters, hidden)", "dim")
            )
        else:
            if hidden:
                self.console.print(Text(f"… {hidden} earlier lines of reasoning folded", "dim italic"))
            self.console.print(self._tail())
        self._text = ""

    def _tail(self) -> Group:
        from rich.console import Group
        from rich.text import Text

        from qwq_agent.cli.safe_text import safe

        last = self._text.strip("\n").splitlines()[-self.lines :]
        # One screen line each, so the block redrawn in place keeps its height.
        return Group(*(Text(safe(line), style="dim", no_wrap=True, overflow="ellipsis") for line in last))
