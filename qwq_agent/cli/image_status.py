"""The sandbox image for `run`: built first when missing, with a live status instead of a silent minute.

Most runs find the image (it is cached by content hash) and show nothing. A first run, or one after the
supervisor changed, builds it: on a terminal a status with the elapsed time and the build's latest lines;
elsewhere the build's progress lines, as `qwq-agent sandbox build` prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from rich.console import Console
from rich.markup import escape

from qwq_agent.cli.activity import Activity
from qwq_agent.sandbox.image import ImageBuildError, Recipe, build_image, image_exists
from qwq_agent.settings import get_settings


async def ensure_run_image(console: Console, recipe: Recipe | None = None) -> str | None:
    """The tag of the project's sandbox image, built now if missing; None when QWQ_SANDBOX_IMAGE names one.

    Raises `ImageBuildError` as `ensure_image` does. Cancelled (run's SIGINT, SIGTERM, SIGHUP, SIGQUIT), it stops the
    build and waits for its clean-up (processes stopped, build folder removed) before propagating.
    """
    if get_settings().sandbox_image:
        return None  # the user's image: preflight has checked that it exists
    recipe = recipe or Recipe()
    tag = recipe.image_tag()
    if await asyncio.to_thread(image_exists, tag):
        return tag
    activity = Activity(console)
    loop = asyncio.get_running_loop()

    def progress(line: str) -> None:
        # Called in the build's thread: the status and the console are the event loop's.
        loop.call_soon_threadsafe(_show, line)

    def _show(line: str) -> None:
        if activity.enabled:
            activity.output(line + "\n")
        else:
            console.print(f"[dim]{escape(line)}[/dim]", soft_wrap=True)

    activity.start("building the sandbox image (once; cached afterwards)")
    if not activity.enabled:
        console.print(
            f"[dim]building the sandbox image {tag} (once; cached afterwards)[/dim]", soft_wrap=True
        )
    stop = threading.Event()
    # A cancelled to_thread leaves its thread running, and asyncio.run's shutdown then waits for the
    # whole build: the build is told to stop, and what it leaves behind is waited for here.
    build = asyncio.ensure_future(asyncio.to_thread(build_image, progress=progress, recipe=recipe, stop=stop))
    try:
        result = await asyncio.shield(build)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(ImageBuildError):  # BuildStopped, or a failure: the run was stopped
            await build
        raise
    finally:
        activity.stop()  # the build's progress callbacks were scheduled before its end: all are shown
    if result.built:
        console.print(f"[dim]sandbox image {result.tag} built in {result.seconds:.0f}s[/dim]", soft_wrap=True)
    return result.tag
