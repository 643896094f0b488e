"""Entry point of the `qwq-agent` command.

Each sub-command lives in its own module `qwq_agent.cli.<name>_cmd` exposing
`register(subparsers) -> None`, which adds its parser and sets `func` (a callable taking the parsed
namespace and returning an exit code). Keeping them apart keeps start-up cheap: heavy imports happen
inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("run", "sandbox", "serve", "parse", "trace", "index", "mcp_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwq-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module_name = f"qwq_agent.cli.{name}_cmd"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # that command is not part of this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
