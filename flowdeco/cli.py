"""``python -m flowdeco TARGET [options]`` and the ``flowdeco`` script.

Exit codes (pytest's): 0 all succeeded, 1 some task failed, 2 interrupted,
3 internal error, 4 usage or collection error, 5 no tasks collected.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs

from . import __version__, project, render
from .config import Parser
from .errors import FlowError, UsageError
from .manager import make_pluginmanager
from .outcome import ExitCode
from .params import describe as describe_params, unset as unset_params

# The engine (flowdeco.engine.session: the scheduler, structlog, executors) is imported
# when a run needs it, not here: a plugin's command (``python -m flowdeco ui``, ``runs``)
# starts without it.

_EPILOG = """\
commands (python -m flowdeco COMMAND --help): {commands}

configuration: option defaults from flowdeco.toml or pyproject.toml [tool.flowdeco]
  (the first found from TARGET's folder upwards; keys are option names: workers,
  state_dir, executor, plugins = ["name", "no:name"], [tool.flowdeco.limits], ...),
  and arguments in FLOWDECO_ADDOPTS; precedence: command line > FLOWDECO_ADDOPTS >
  file > default.  python -m flowdeco config [TARGET] shows what applies.

exit codes: 0 all succeeded, 1 some task failed, 2 interrupted,
            3 internal error, 4 usage or collection error, 5 no tasks collected
"""


def plugin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``-p NAME`` and ``-p no:NAME`` names of a command line, as ``(load, block)``:
    what the CLI builds its plugin manager from (``make_pluginmanager(load, block)``).
    A command that needs more managers alike (``serve --backfill --max-active``) uses it."""
    return _preparse_plugins(argv)


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


def _escape_unencodable(*streams: Any) -> None:
    """Print what a stream cannot encode (a lone surrogate in an error message, a
    non-UTF-8 file name) as backslash escapes rather than fail the run with exit 3."""
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change now: leave it
                pass


def main(argv: Sequence[str] | None = None, prog: str = "flowdeco") -> int:
    """Run the CLI; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _escape_unencodable(sys.stdout, sys.stderr)
    err = sys.stderr
    session = None
    try:
        show_config = bool(args) and args[0] == "config"
        if show_config:
            args = args[1:]
        prepared = _prepare(args, prog, show_config)
        if isinstance(prepared, int):  # a plugin's command ran
            return prepared
        pm, parser, ns, sources = prepared
        if show_config:
            print(project.render_config(sources))
            return ExitCode.OK
        target = ns.target
        if target is None:
            raise UsageError("missing TARGET: give a file path, a module name or module:flow")
        values = {k: v for k, v in vars(ns).items() if k != "target"}
        from .engine.session import Session
        session = Session.start(options=values, from_cli=True, parser=parser, pm=pm)
        listing = bool(ns.collect_only or ns.graph)
        # a listing needs no run parameters: required ones not given are shown as unset
        graph = session.collect(target, unset_ok=listing)
        if ns.collect_only:
            print(render.collect_only(graph))
            section = _params_listing(graph, session.params)
            if section:
                print(section)
            return ExitCode.OK
        if ns.graph:
            print(render.mermaid(graph) if ns.graph == "mermaid" else render.dot(graph))
            missing = unset_params(graph, session.params)
            if missing:  # stderr: stdout stays a valid Mermaid/dot document
                print(f"flowdeco: run parameters unset (needed to run): {', '.join(missing)}",
                      file=err)
            return ExitCode.OK
        result = session.execute(graph)
        _summary(result, quiet=ns.quiet, state=not ns.no_state, state_dir=ns.state_dir)
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


def _prepare(args: list[str], prog: str, show_config: bool) -> Any:
    """Plugin manager, parser and parsed options for ``args``, with the project's config
    (:mod:`flowdeco.project`): the file found from the target's folder upwards gives
    defaults, ``FLOWDECO_ADDOPTS`` comes before the command line, the flow module's
    ``flowdeco_plugins`` are loaded.  Returns ``(pm, parser, ns, sources)``, or the exit
    code of a plugin's command.

    The target (and so the config file) is guessed before plugins declare their flags;
    a pass that finds another target, or plugins the flow module asks for, starts over
    (at most a few passes, each cheap next to a run).
    """
    extra = project.env_args()
    full = extra + args
    guess = project.guess_target(full, project.VALUED_FLAGS)
    wanted: list[str] = []
    for _ in range(4):
        cfg = project.find_config(project.target_folder(guess))
        file_load, file_block = cfg.plugins()
        if file_load and cfg.path is not None:
            project.put_on_path(cfg.path.parent)
        if guess is not None and project.is_file_target(guess):
            # plugin modules beside the flow file resolve by name (-p NAME, flowdeco_plugins)
            project.put_on_path(project.target_folder(guess).resolve())
        load, block = _preparse_plugins(full)
        pm = make_pluginmanager(file_load + load + wanted, file_block + block)
        commands: dict = {}
        pm.hook.flowdeco_cli_commands(commands=commands)
        if not show_config and args and args[0] in commands:
            # (FLOWDECO_ADDOPTS are options of a run; only their -p apply to commands)
            return int(commands[args[0]].main(args[1:], pm))
        parser = Parser()
        pm.hook.flowdeco_addoption(parser=parser)
        listing = ", ".join(f"{n} ({c.help})" for n, c in sorted(commands.items()))
        listing = "config (option values and where they come from)" + \
            (", " + listing if listing else "")
        ap = parser.argparser(prog=prog, epilog=_EPILOG.format(commands=listing),
                              description="Run the @task functions of a module as a workflow.")
        ap.add_argument("--version", action="version", version=f"flowdeco {__version__}",
                        help="print flowdeco's version and exit")
        ns, _ = ap.parse_known_args(full)
        target = ns.target
        if target is not None and project.target_folder(target) != \
                project.target_folder(guess):
            guess = target  # another folder: maybe another config file
            continue
        if target is not None:
            asked = project.module_plugins(project.target_module(target))
            new = [p for p in asked if p not in wanted and pm.get_plugin(p) is None
                   and not pm.is_blocked(p)]
            if new:
                wanted += new
                continue
        defaults = cfg.defaults(parser)  # every plugin is in: each key must be an option
        ap.set_defaults(**defaults)
        ns = ap.parse_args(full)
        sources = None
        if show_config:
            env_ns, _ = ap.parse_known_args(extra + ([target] if target else []))
            sources = project.ConfigSources(cfg, extra, parser, defaults, vars(env_ns), vars(ns),
                                    file_load + [f"no:{b}" for b in file_block], wanted, target)
        return pm, parser, ns, sources
    raise UsageError(f"cannot settle the target and its config file from {args!r}")


def exit_code_for(exc: BaseException, err: Any = None) -> int:
    """Tell the user about ``exc`` in one line (a traceback only for our own bugs); its exit code.

    Shared by every command (``run``, ``serve``, plugins' commands) so they
    all map errors to pytest's exit codes the same way.
    """
    err = err or sys.stderr
    from .engine.session import NoTasksError
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


def _params_listing(graph, params) -> str | None:  # type: ignore[no-untyped-def]
    """``--collect-only``'s run parameter section, None when the tasks take none.

    One line per parameter: given, default or unset (values are not shown:
    one may be a secret), and the tasks that take it.
    """
    rows = describe_params(graph, params)
    if not rows:
        return None
    width = max(len(n) for n, _, _ in rows)
    lines = ["run parameters:"]
    for name, state, tasks in rows:
        note = f"unset (required: --param {name}=VALUE to run)" if state == "unset" else state
        who = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        lines.append(f"  {name:<{width}}  {note}  taken by {who}")
    return "\n".join(lines)


#: failed pipeline items listed per node on the console (the rest are counted)
ITEMS_SHOWN = 10


def _item_failures(name: str, result: Any, trail: Path | None) -> list[str]:
    """One line per failed item of a pipeline node's result (``item[i]``: the item's
    0-based position in the source, as ``item_index`` in the audit trail), the first
    ``ITEMS_SHOWN``, then a count."""
    errors = result.errors
    lines = [f"FAILED {name} item[{e.index}] (stage {e.stage}) - {e.error}"
             for e in errors[:ITEMS_SHOWN]]
    if len(errors) > ITEMS_SHOWN:
        where = f" (all of them in {trail})" if trail is not None else ""
        lines.append(f"... and {len(errors) - ITEMS_SHOWN} more failed items of {name}{where}")
    return lines


def _summary(result, quiet: int, state: bool,  # type: ignore[no-untyped-def]
             state_dir: str | None = None) -> None:
    out = sys.stdout
    trail = Path(state_dir) / "runs" / result.run_id / "audit.jsonl" if state and state_dir \
        else None
    if trail is not None and not trail.exists():  # the audit plugin disabled
        trail = None
    if quiet < 2:
        # no pipeline imported, no pipeline results: do not import it for nothing
        pipeline = sys.modules.get("flowdeco.pipeline.result")
        for name, o in result.outcomes.items():
            if o.status == "failed":
                print(f"FAILED {name} - {o.error}", file=out)
            elif o.status == "interrupted":
                print(f"INTERRUPTED {name}", file=out)
            elif pipeline is not None and isinstance(o.result, pipeline.PipelineResult) \
                    and o.result.errors:
                for line in _item_failures(name, o.result, trail):
                    print(line, file=out)
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
