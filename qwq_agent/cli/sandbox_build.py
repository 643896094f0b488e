"""`qwq-agent sandbox build`: build the sandbox image (if its recipe changed) and say what it is."""

from __future__ import annotations

import json
import sys


def build_command(force: bool, as_json: bool) -> int:
    """Ensure the sandbox image exists; print progress and a summary (or one JSON object).

    With `as_json`, progress goes to stderr and stdout carries only
    `{"tag", "built", "seconds", "size_bytes", "mode"}` (or `{"error": ...}`). Returns the exit code;
    a failed build raises, for `qwq_agent.cli.errors` to report (what failed, the fix, its exit code).
    """
    from qwq_agent.sandbox.image import ImageBuildError, RecipeError, build_image

    def progress(line: str) -> None:
        print(line, file=sys.stderr if as_json else sys.stdout, flush=True)

    try:
        result = build_image(progress=progress, force=force)
    except (ImageBuildError, RecipeError) as exc:
        if as_json:  # stdout stays one JSON object; the message and the exit code are the error path's
            print(json.dumps({"error": str(exc)}), flush=True)
        raise
    if as_json:
        print(
            json.dumps(
                {
                    "tag": result.tag,
                    "built": result.built,
                    "seconds": round(result.seconds, 2),
                    "size_bytes": result.size_bytes,
                    "mode": result.mode,
                }
            )
        )
    elif result.built:
        print(f"{result.tag} ({result.size_bytes / 1e6:.0f} MB) built in {result.seconds:.1f}s")
    else:
        print(f"{result.tag} ({result.size_bytes / 1e6:.0f} MB) is up to date")
    return 0
