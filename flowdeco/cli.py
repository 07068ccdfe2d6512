"""``python -m flowdeco TARGET [options]`` and the ``flowdeco`` script.

Exit codes (pytest's): 0 all succeeded, 1 some task failed, 2 interrupted,
3 internal error, 4 usage or collection error, 5 no tasks collected.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, Sequence

import attrs

from . import render
from .config import Parser
from .errors import FlowError, UsageError
from .manager import make_pluginmanager
from .outcome import ExitCode
from .runner import NoTasksError, Session

_EPILOG = """\
commands (python -m flowdeco COMMAND --help): {commands}

exit codes: 0 all succeeded, 1 some task failed, 2 interrupted,
            3 internal error, 4 usage or collection error, 5 no tasks collected
"""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2; usage errors are 4
        raise UsageError(f"{message} (see python -m flowdeco --help)")


def _preparse_plugins(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``-p NAME`` / ``-p no:NAME`` must be known before options are declared."""
    load: list[str] = []
    block: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        value = None
        if arg == "-p" and i + 1 < len(argv):
            value = argv[i + 1]
            next(it, None)
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:].lstrip("=")
        elif arg == "--":
            break
        if value is None:
            continue
        if value.startswith("no:"):
            block.append(value[3:])
        else:
            load.append(value)
    return load, block


@attrs.frozen
class Command:
    """A CLI subcommand contributed by a plugin (see ``flowdeco_cli_commands``)."""

    help: str
    main: Callable[[list[str], Any], int]


def main(argv: Sequence[str] | None = None, prog: str = "flowdeco") -> int:
    """Run the CLI; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    session = None
    try:
        load, block = _preparse_plugins(args)
        pm = make_pluginmanager(load, block)
        commands: dict = {}
        pm.hook.flowdeco_cli_commands(commands=commands)
        if args and args[0] in commands:
            return int(commands[args[0]].main(args[1:], pm))
        parser = Parser()
        pm.hook.flowdeco_addoption(parser=parser)
        listing = ", ".join(f"{n} ({c.help})" for n, c in sorted(commands.items())) or "none"
        ap = parser.argparser(prog=prog, epilog=_EPILOG.format(commands=listing),
                              description="Run the @task functions of a module as a workflow.")
        ap.__class__ = _ArgumentParser
        ns = ap.parse_args(args)
        target = ns.target
        if target is None:
            raise UsageError("missing TARGET: give a file path, a module name or module:flow")
        values = {k: v for k, v in vars(ns).items() if k != "target"}
        session = Session.start(options=values, from_cli=True, parser=parser, pm=pm)
        graph = session.collect(target)
        if ns.collect_only:
            print(render.collect_only(graph))
            return ExitCode.OK
        if ns.graph:
            print(render.mermaid(graph) if ns.graph == "mermaid" else render.dot(graph))
            return ExitCode.OK
        result = session.execute(graph)
        _summary(result, quiet=ns.quiet, state=not ns.no_state)
        if session.last_run.abandoned:
            # workers still run tasks we stopped waiting for: leave without joining them
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(ExitCode.INTERRUPTED))
        return result.exit_code
    except (Exception, KeyboardInterrupt, SystemExit) as exc:  # noqa: BLE001 - see exit_code_for
        return exit_code_for(exc, err)
    finally:
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass


def exit_code_for(exc: BaseException, err: Any = None) -> int:
    """Tell the user about ``exc`` in one line (a traceback only for our own bugs); its exit code.

    Shared by every command (``run``, ``serve``, plugins' commands) so they
    all map errors to pytest's exit codes the same way.
    """
    err = err or sys.stderr
    if isinstance(exc, NoTasksError):
        print(f"flowdeco: {exc}", file=err)
        return ExitCode.NO_TASKS_COLLECTED
    if isinstance(exc, FlowError):
        print(f"flowdeco: error: {exc}", file=err)
        return ExitCode.USAGE_ERROR
    if isinstance(exc, KeyboardInterrupt):
        print("flowdeco: interrupted", file=err)
        return ExitCode.INTERRUPTED
    if isinstance(exc, SystemExit):  # --help
        return exc.code if isinstance(exc.code, int) else ExitCode.OK
    print("flowdeco: internal error (please report it):", file=err)
    traceback.print_exception(exc, file=err)
    return ExitCode.INTERNAL_ERROR


def _summary(result, quiet: int, state: bool) -> None:  # type: ignore[no-untyped-def]
    out = sys.stdout
    if quiet < 2:
        for name, o in result.outcomes.items():
            if o.status == "failed":
                print(f"FAILED {name} - {o.error}", file=out)
            elif o.status == "interrupted":
                print(f"INTERRUPTED {name}", file=out)
        if result.status == "interrupted":  # what the interrupt kept from running
            skipped = [n for n, o in result.outcomes.items() if o.status == "skipped"]
            if skipped:
                shown = ", ".join(skipped[:10])
                more = f", ... ({len(skipped)} in all)" if len(skipped) > 10 else ""
                print(f"SKIPPED {shown}{more}", file=out)
    line = f"{result.summary()} (run {result.run_id})" if state else result.summary()
    width = 78
    pad = max(width - len(line) - 2, 4) // 2
    print(f"{'=' * pad} {line} {'=' * pad}", file=out)
