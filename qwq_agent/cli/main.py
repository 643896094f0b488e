"""Entry point of the `qwq-agent` command.

Each sub-command lives in its own module `qwq_agent.cli.<name>_cmd` exposing
`register(subparsers) -> None`, which adds its parser and sets `func` (a callable taking the parsed
namespace and returning an exit code). Keeping them apart keeps start-up cheap: heavy imports happen
inside the handlers.

Handlers do not print their own errors: whatever they raise goes through `qwq_agent.cli.errors`,
which turns it into one or two lines (what failed, how to fix it) and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator

from qwq_agent import __version__

COMMANDS = ("run", "sandbox", "serve", "parse", "trace", "index", "mcp_serve")
# The servers (a model server, the trace viewer) do their work without stdout, which only shows their
# progress: they may be started as daemons with it closed. Every other command's result is what it prints
# (mcp-serve's answers to its client included), so without stdout it would do its work for nothing.
RUN_WITHOUT_STDOUT = ("serve", "trace serve")
DEBUG_HELP = "on an error, also print the traceback (or set QWQ_DEBUG=1)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds each option's default to its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if "default" in help_text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return help_text
        return f"{help_text} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    from qwq_agent.cli.arg_parser import CliParser, VersionAction
    from qwq_agent.settings import env_help

    # CliParser: help, version and usage errors with stdout or stderr closed (sub-parsers inherit it).
    parser = CliParser(
        prog="qwq-agent",
        description=__doc__.splitlines()[0],
        epilog=env_help(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action=VersionAction, version=f"qwq-agent {__version__}")
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
    _add_debug_everywhere(parser)
    _format_everywhere(parser)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every sub-command's parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += subparsers(child)
    return found


def _format_everywhere(parser: argparse.ArgumentParser) -> None:
    # Set after the sub-commands registered themselves, so each module keeps its plain add_parser call.
    for each in subparsers(parser):
        each.formatter_class = HelpFormatter


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept `--debug` after any sub-command too (`qwq-agent run --debug ...`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                # SUPPRESS: when not given here, the top-level value is left as it is.
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_everywhere(child)


def command_name(args: argparse.Namespace) -> str:
    """`run`, `sandbox run`, `trace show`, ... for messages."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def main(argv: list[str] | None = None) -> int:
    from qwq_agent.cli.stdio import name_stream_errors, tolerate_unencodable

    name_stream_errors()  # a failed write to stdout (a full disk) says it was stdout's
    tolerate_unencodable()  # a character the terminal's encoding lacks is shown as "?", never fatal
    from qwq_agent.cli.arg_parser import ClosedOutput

    try:
        with _sigint_noted() as interrupted:
            args = build_parser().parse_args(argv)
    except ClosedOutput as exc:  # --help or --version with stdout closed
        from qwq_agent.cli.errors import report

        return report(exc, exc.command, debug=False)
    try:
        if interrupted:
            raise KeyboardInterrupt
        return _dispatch(args)
    except KeyboardInterrupt as exc:
        signum = _signal_of(exc)
        how = f" by {signal.Signals(signum).name}" if signum != signal.SIGINT else ""
        print(f"qwq-agent {command_name(args)}: interrupted{how}", file=sys.stderr)
        return 128 + signum


def _signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind `exc`: the one `serve_signals.stop_on_signals` names in it, else SIGINT."""
    name = exc.args[0] if exc.args else None
    try:
        return int(signal.Signals[name]) if isinstance(name, str) else int(signal.SIGINT)
    except KeyError:
        return int(signal.SIGINT)


@contextlib.contextmanager
def _sigint_noted() -> Iterator[list[int]]:
    """While parsing, a Ctrl-C is only noted (the list is not empty then), to be acted on afterwards.

    Parsing imports pydantic, the settings and every sub-command's module: a fraction of a second in
    which a KeyboardInterrupt printed a traceback, or landed in an import-machinery callback ("Exception
    ignored", and the command ran on) or in pydantic-core's start-up (a PanicException).
    """
    noted: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield noted  # a caller's own handler (or no way to set one here): left alone
        return
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; what it raises becomes one or two lines and an exit code."""
    from qwq_agent.cli.errors import report
    from qwq_agent.settings import SettingsError, get_settings

    try:
        debug = bool(args.debug or get_settings().debug)
    except SettingsError as exc:  # a bad environment variable: named, like any other error
        return report(exc, command_name(args), debug=bool(args.debug))
    from qwq_agent.cli.log_setup import configure_logging

    configure_logging(debug)
    try:
        _require_stdout(args)
        code = int(args.func(args) or 0)
        # What `print` left buffered is written now, where a failure (a full disk) is reported like
        # any other; at the interpreter's exit it was "Exception ignored" and status 120.
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except Exception as exc:
        return report(exc, command_name(args), debug=debug)


def _require_stdout(args: argparse.Namespace) -> None:
    """Refuse, before doing anything, a command whose output would go nowhere: stdout is closed."""
    from qwq_agent.cli.errors import closed_stdout
    from qwq_agent.cli.stdio import stdout_is_open

    name = command_name(args)
    if stdout_is_open() or (name in RUN_WITHOUT_STDOUT and not getattr(args, "print_command", False)):
        return
    raise closed_stdout()


if __name__ == "__main__":
    sys.exit(main())
