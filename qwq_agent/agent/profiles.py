"""Chat-format profiles: the few strings and flags in which QwQ-family chat templates differ.

All of them share ChatML turns, the Qwen2.5 `# Tools` preamble, `<tool_call>` blocks and tool results folded
into one user turn of `<tool_response>` blocks (see `qwq_agent.agent.chat_format`). Adding a model of the
family is one `ChatProfile(...)` entry in `PROFILES`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PROFILE", "PROFILES", "ChatProfile", "get_profile"]


@dataclass(frozen=True)
class ChatProfile:
    """How one model's official template differs from the family's common format.

    Attributes:
        name: the key in `PROFILES`.
        default_system: system text used when the conversation has no system message. Empty means no
            system turn at all without tools (and an empty system text before the `# Tools` preamble).
        think: the generation prompt opens a `<think>` block and the template drops earlier reasoning
            from history (QwQ-32B). False: the model reasons in plain text (QwQ-32B-Preview).
        strip_final_reasoning: the template drops reasoning from the *last* message too (QwQ-32B as first
            released); the current template keeps the last message whole.
    """

    name: str
    default_system: str = ""
    think: bool = True
    strip_final_reasoning: bool = False

    @property
    def generation_prompt(self) -> str:
        """The text that opens the model's turn when `add_generation_prompt` is set."""
        return "<|im_start|>assistant\n" + ("<think>\n" if self.think else "")


PROFILES: dict[str, ChatProfile] = {
    profile.name: profile
    for profile in (
        # Hugging Face's current QwQ-32B template.
        ChatProfile(name="qwq-32b"),
        # QwQ-32B's template as released in March 2025: reasoning is split off every assistant message.
        ChatProfile(name="qwq-32b-v1", strip_final_reasoning=True),
        # QwQ-32B-Preview: Qwen2.5's template with its own default system prompt, no <think> block.
        ChatProfile(
            name="qwq-32b-preview",
            default_system=(
                "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. "
                "You should think step-by-step."
            ),
            think=False,
        ),
    )
}

DEFAULT_PROFILE = PROFILES["qwq-32b"]


def get_profile(profile: str | ChatProfile) -> ChatProfile:
    """Return `profile` itself, or the registered profile of that name (ValueError if unknown)."""
    if isinstance(profile, ChatProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown chat profile {profile!r}; known: {known}") from None
