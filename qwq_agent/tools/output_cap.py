"""A bound on what one tool call puts into the conversation and the trace.

The sandbox tools cut their streams in the sandbox (head and tail, 32 KB each); a host tool or an MCP
server has no such cut, and 20 MB of text in one observation left no room in the next request. The
registry applies this cap to every tool's output.
"""

from __future__ import annotations

from qwq_agent.protocols import ToolOutput

__all__ = ["MAX_IMAGE_CHARS", "MAX_OUTPUT_CHARS", "cap_output"]

MAX_OUTPUT_CHARS = 100_000
MAX_IMAGE_CHARS = 16 * 1024 * 1024  # all images of one output together, base64


def cap_output(
    output: ToolOutput, max_chars: int = MAX_OUTPUT_CHARS, max_image_chars: int = MAX_IMAGE_CHARS
) -> ToolOutput:
    """`output` with its text cut to head and tail (`max_chars` in all) and images past the budget dropped."""
    text, images, notes = output.text, output.images, []
    omitted = len(text) - max_chars
    if omitted > 0:
        # The head says what the output is; the tail usually holds the result or the error.
        head = max_chars - max_chars // 2
        tail = max_chars // 2
        text = f"{text[:head]}\n[... {omitted} chars omitted from the middle ...]\n{text[len(text) - tail :]}"
    kept: list[str] = []
    size = 0
    for image in images:
        if size + len(image) > max_image_chars:
            break
        kept.append(image)
        size += len(image)
    if len(kept) < len(images):
        dropped = len(images) - len(kept)
        notes.append(f"[{dropped} image(s) dropped: over the {max_image_chars >> 20} MB limit of one result]")
    if text is output.text and not notes:
        return output
    metadata = dict(output.metadata)
    if omitted > 0:
        metadata["chars_omitted"] = omitted
    if notes:
        metadata["images_dropped"] = len(images) - len(kept)
        text = "\n".join([text, *notes])
    return output.model_copy(update={"text": text, "images": kept, "metadata": metadata})
