"""`qwq-agent sandbox build | run --python CODE | run --shell CMD | ls | prune`."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from qwq_agent.cli import arg_types
from qwq_agent.cli.errors import EXIT_DOCKER, CliError
from qwq_agent.cli.image_files import write_new_png
from qwq_agent.cli.safe_text import safe

if TYPE_CHECKING:
    from qwq_agent.sandbox.janitor import SandboxInfo

# A sandbox is removed after `SandboxConfig.lifetime_s` (an hour); a cell cannot run longer. Not imported
# from the config: that would load the sandbox package for every command's argument parsing.
LONGEST_CELL_S = 3600.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="build, try and clean up sandboxes")
    ssub = p.add_subparsers(dest="sandbox_command", required=True)

    build = ssub.add_parser("build", help="build the sandbox image")
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    build.add_argument("--json", action="store_true", help="JSON output")
    build.set_defaults(func=_build)

    run = ssub.add_parser(
        "run",
        help="run code in a fresh sandbox and print the result",
        description="Run code in a fresh sandbox and print its output, value and error. On a terminal, "
        "control characters in them show as escapes (\\x1b...), so sandbox code cannot drive the terminal; "
        "redirected to a file or a pipe, the output is written unescaped (bytes that are not UTF-8 arrive "
        "as \\xNN).",
    )
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--python", metavar="CODE", help="a Python cell")
    what.add_argument("--shell", metavar="CMD", help="a bash command")
    run.add_argument(
        "--timeout",
        type=arg_types.seconds(LONGEST_CELL_S),
        default=None,
        help=f"seconds, at most {LONGEST_CELL_S:g} (default: the config's)",
    )
    run.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="save the cell's figures here as PNGs and print their paths (default: not saved)",
    )
    run.add_argument("--json", action="store_true", help="JSON output")
    run.set_defaults(func=_run)

    ls = ssub.add_parser("ls", help="list sandbox containers (ours, by label)")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=_ls)

    prune = ssub.add_parser("prune", help="remove orphaned sandboxes (owner gone or expired)")
    prune.add_argument("--all", action="store_true", help="remove every sandbox of ours, orphan or not")
    prune.add_argument("--images", action="store_true", help="also remove images older recipes built")
    prune.add_argument("--json", action="store_true", help="JSON output")
    prune.set_defaults(func=_prune)


def _docker_ready() -> None:
    """A missing or hung Docker engine is reported in one line before any sandbox work starts."""
    from qwq_agent.cli.preflight import check_docker

    check_docker()


def _write(stream: TextIO, text: str) -> None:
    """Write what the sandbox produced: escaped on a terminal (an escape sequence in it must not clear the
    screen or set the clipboard), unescaped when redirected (a file or pipe gets the program's output as
    the sandbox sent it: text, a byte that is not UTF-8 already `\\xNN`)."""
    stream.write(safe(text) if stream.isatty() else text)


def _build(args: argparse.Namespace) -> int:
    from qwq_agent.cli.sandbox_build import build_command
    from qwq_agent.cli.serve_signals import stop_on_signals
    from qwq_agent.sandbox.image.mode import requested_mode

    requested_mode()  # a bad QWQ_SANDBOX_BUILD is the user's input: named before Docker is asked anything
    _docker_ready()
    # SIGTERM (CI's `timeout`, systemd) or SIGHUP would end the CLI on the spot, leaving mmdebstrap's
    # process group running and its build folder in /tmp; as a KeyboardInterrupt, the build cleans up.
    with stop_on_signals():
        return int(build_command(args.force, args.json) or 0)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from qwq_agent.cli.preflight import check_sandbox_image
    from qwq_agent.sandbox import DockerSandbox, PythonResult, ShellResult

    _docker_ready()
    check_sandbox_image()

    async def go() -> PythonResult | ShellResult:
        async with DockerSandbox.create() as sb:
            if args.python is not None:
                return await sb.python(args.python, timeout=args.timeout)
            return await sb.shell(args.shell, timeout=args.timeout)

    result = asyncio.run(go())  # a sandbox failure is reported by qwq_agent.cli.errors
    if args.json:
        print(result.model_dump_json())
        return 0
    _write(sys.stdout, result.stdout)
    _write(sys.stderr, result.stderr)
    if isinstance(result, PythonResult):
        if result.value is not None:
            _write(sys.stdout, result.value + "\n")
        if result.error is not None:
            _write(sys.stderr, result.error.traceback)
        if result.images and args.images is None:
            print(
                f"[{len(result.images)} figure(s) not saved: pass --images DIR to save them]", file=sys.stderr
            )
        elif result.images:
            for line in save_pngs(result.images, args.images):
                print(line, file=sys.stderr)
        return 1 if result.error else 0
    if result.timed_out:
        print("[timed out]", file=sys.stderr)
    code = result.exit_code if result.exit_code is not None else 1
    return code if code >= 0 else 128 - code


def save_pngs(images: Sequence[str], folder: Path) -> list[str]:
    """Write base64 PNGs as `folder/image-N.png` (never over an existing file: `write_new_png`); a line
    per image, saying where it was saved or why not. Code in the sandbox controls the strings: one that
    is not base64, or that cannot be written, costs only itself (as in `render`), not the others."""
    lines = []
    for i, b64 in enumerate(images, 1):
        try:
            data = base64.b64decode("".join(b64.split()), validate=True)  # line breaks are allowed
        except ValueError:  # binascii.Error
            lines.append(f"(image {i} not saved: its data is not valid base64)")
            continue
        try:
            lines.append(f"image saved: {write_new_png(folder, i, data)}")
        except OSError as exc:  # a folder it cannot write: said, and the next image is still tried
            reason = exc.strerror or str(exc) or type(exc).__name__
            lines.append(f"(image {i} not saved: {reason}: {exc.filename or folder})")
    return lines


def _table(rows: Sequence[SandboxInfo], title: str) -> None:
    from rich.table import Table

    from qwq_agent.cli.console import PipeConsole

    table = Table(title=title)
    for col in ("id", "name", "status", "owner pid", "orphan"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.id, r.name, r.status, str(r.owner_pid or ""), r.orphan or "")
    PipeConsole().print(table)


def _ls(args: argparse.Namespace) -> int:
    from qwq_agent.sandbox.janitor import list_sandboxes

    _docker_ready()
    rows = list_sandboxes()
    if args.json:
        print(json.dumps([r.model_dump() for r in rows]))
    else:
        _table(rows, f"{len(rows)} sandbox container(s)")
    return 0


def _prune(args: argparse.Namespace) -> int:
    """Remove what is asked; a container the engine failed to remove is named and exits with 4 (Docker)."""
    from qwq_agent.sandbox.janitor import PruneIncomplete, prune

    _docker_ready()
    try:
        rows = prune(everything=args.all)
        failed: list[tuple[SandboxInfo, str]] = []
    except PruneIncomplete as exc:  # the others were removed: reported as such, then the failure
        rows, failed = exc.removed, exc.failed
    removed: list[str] = []
    in_use: list[str] = []
    if args.images:
        from qwq_agent.sandbox.image.prune import prune_images

        removed, in_use = prune_images()
    if args.json:
        out = {
            "containers": [r.model_dump() for r in rows],
            "images_removed": removed,
            "images_in_use": in_use,
        }
        print(json.dumps(out if args.images else out["containers"]))
    else:
        _table(rows, f"removed {len(rows)} sandbox container(s)")
        if args.images:
            print(f"removed {len(removed)} stale image(s); {len(in_use)} still in use")
    if failed:
        reasons = "; ".join(f"{info.id} ({info.name}): {why}" for info, why in failed)
        raise CliError(
            f"could not remove {len(failed)} sandbox container(s): {reasons}",
            "see why with `docker inspect ID`; `docker rm -f ID` once the cause is gone, or prune again",
            code=EXIT_DOCKER,
        )
    return 0
