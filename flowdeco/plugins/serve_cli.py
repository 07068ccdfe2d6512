"""The ``python -m flowdeco serve`` command: its options, checks and the run it starts.

What serve does is in :mod:`.serve` (:class:`~.serve.Scheduler`); this module
turns a command line into a :class:`~.serve.Scheduler` (or a backfill) and
an exit code.  ``flowdeco.plugins.serve.main`` calls :func:`run_command`.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

from ..clock import Clock
from ..config import Parser, positive_int
from ..engine.session import Session
from ..errors import UsageError
from ..project import command_defaults, env_args
from .serve import Scheduler, SessionFactory

_DESCRIPTION = """\
Run the flow at each tick of its cron schedules: the tasks with cron= (plus
what they need), and/or the whole flow with --cron EXPR.  Each tick starts
one run with its own id (FLOW-YYYYmmddTHHMMSSZ).  SIGTERM / Ctrl-C stop it
(exit 0 while waiting, 2 when a run was interrupted).  With --backfill FROM TO,
run each tick in that past range once instead, and exit."""


_max_ticks = positive_int("ticks")
_max_active = positive_int("runs")


def _cli_factories(first: SessionFactory, n: int, argv: Sequence[str], values: dict,
                   clock: Clock | None) -> list[SessionFactory]:
    """One session factory per concurrent backfill run: the command's plugin manager,
    then managers built the same way (-p / -p no:), so runs never share one."""
    from ..cli import plugin_args
    from ..manager import make_pluginmanager

    out = [first]
    for _ in range(n - 1):
        pm = make_pluginmanager(*plugin_args(list(argv)))
        parser = Parser()
        pm.hook.flowdeco_addoption(parser=parser)
        out.append(lambda extra, pm=pm, parser=parser: Session.start(
            options={**values, **extra}, from_cli=True, parser=parser, pm=pm, clock=clock))
    return out


def run_command(argv: Sequence[str], pluginmanager: Any, clock: Clock | None = None) -> int:
    """``python -m flowdeco serve TARGET [options]``; returns the exit code."""
    err = sys.stderr
    try:
        parser = Parser()
        pluginmanager.hook.flowdeco_addoption(parser=parser)
        ap = parser.argparser(prog="flowdeco serve", description=_DESCRIPTION)
        g = ap.add_argument_group("serve")
        g.add_argument("--cron", dest="serve_cron", default=None, metavar="EXPR",
                       help="also run the whole flow on this schedule (e.g. '0 * * * *')")
        g.add_argument("--tz", dest="serve_tz", default=None, metavar="ZONE",
                       help="time zone of the cron expressions (default: the machine's)")
        g.add_argument("--catch-up", dest="serve_catch_up", action="store_true", default=False,
                       help="run the ticks missed while serve was down (and resume a tick run "
                            "that was cut short) before serving")
        g.add_argument("--max-ticks", dest="serve_max_ticks", type=_max_ticks, default=None,
                       metavar="N", help="stop after N scheduled runs (default: never)")
        g.add_argument("--backfill", dest="serve_backfill", nargs=2, default=None,
                       metavar=("FROM", "TO"),
                       help="run every tick in [FROM, TO] once, oldest first, then exit "
                            "(ISO dates/times, in the schedule's zone); ticks already done in "
                            "the store are skipped, cut-short ones resumed")
        g.add_argument("--max-active", dest="serve_max_active", type=_max_active, default=None,
                       metavar="N", help="with --backfill: run up to N tick runs at once "
                                         "(default 1)")
        # the project's config file and FLOWDECO_ADDOPTS, as for a single run
        ap.set_defaults(**command_defaults(parser, argv))
        ns = ap.parse_args(env_args() + list(argv))
        values = vars(ns)
        target = values.pop("target")
        cron = values.pop("serve_cron")
        tz = values.pop("serve_tz")
        catch_up = values.pop("serve_catch_up")
        max_ticks = values.pop("serve_max_ticks")
        backfill_range = values.pop("serve_backfill")
        max_active = values.pop("serve_max_active")
        if max_active is not None and backfill_range is None:
            raise UsageError("serve: --max-active needs --backfill FROM TO")
        if backfill_range is not None and (catch_up or max_ticks is not None):
            raise UsageError("serve: --backfill runs a fixed range; it takes neither "
                             "--catch-up nor --max-ticks")
        if target is None:
            raise UsageError("serve: missing TARGET: give a file path, a module name or "
                             "module:flow")
        for dest, flag in (("run_id", "--run-id"), ("resume", "--resume"),
                           ("collect_only", "--collect-only"), ("graph", "--graph")):
            if values.get(dest):
                raise UsageError(f"serve: {flag} cannot be used here (each tick run gets its "
                                 "own id; use python -m flowdeco TARGET for one run)")
        state_dir = None if values.get("no_state") else values.get("state_dir")

        def start(extra: Mapping[str, Any]) -> Session:
            return Session.start(options={**values, **extra}, from_cli=True, parser=parser,
                                 pm=pluginmanager, clock=clock)

        sched = Scheduler(target, start, state_dir=state_dir, cron=cron, tz=tz,
                          catch_up=catch_up, max_ticks=max_ticks, clock=clock, out=sys.stdout,
                          quiet=values.get("quiet") or 0, can_resume="resume" in parser)
        if backfill_range is not None:
            from .backfill import Backfill
            return int(Backfill(sched, *backfill_range, _cli_factories(
                start, max_active or 1, argv, values, clock)).run().exit_code)
        return int(sched.run().exit_code)
    except (Exception, KeyboardInterrupt, SystemExit) as exc:  # noqa: BLE001 - one mapping for all commands
        from ..cli import exit_code_for
        return exit_code_for(exc, err)


__all__ = ["run_command"]
