"""The core's own options (an essential plugin: ``-p no:main`` is refused)."""

from __future__ import annotations

from typing import Any

from .config import check_run_timeout, positive_int
from .errors import UsageError
from .manager import hookimpl


_workers = positive_int("workers")


def _seconds(text: str) -> float:
    import argparse
    try:
        return check_run_timeout(float(text))
    except (ValueError, UsageError):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, got {text!r}") from None


@hookimpl
def flowdeco_addoption(parser: Any) -> None:
    g = "running"
    parser.addoption("-w", "--workers", dest="workers", default=None, type=_workers, metavar="N",
                     group=g, help="how many tasks run at once (default: CPU count + 4 for "
                                   "threads, CPU count for processes)")
    parser.addoption("-x", "--exitfirst", dest="stop_on_error", default=False, action="store_true",
                     group=g, help="start nothing new after the first failure")
    parser.addoption("--executor", dest="executor", default="thread", metavar="NAME", group=g,
                     help="where tasks run: thread (default), process, sync, or an executor "
                          "plugin's name (dask)")
    parser.addoption("--param", dest="param", default=[], action="append", metavar="NAME=VALUE",
                     group=g, help="a run parameter (repeatable); a parameter no task takes "
                                   "is an error")
    parser.addoption("--param-env", dest="param_env", default=[], action="append",
                     metavar="NAME=ENV_VAR", group=g,
                     help="run parameter NAME from environment variable ENV_VAR, so the value "
                          "stays out of shell history (repeatable)")
    parser.addoption("--secret", dest="secret", default=[], action="append", metavar="NAME",
                     group=g, help="treat run parameter NAME as a secret: tasks receive a "
                                   "flowdeco.Secret, logs show *** (repeatable; parameters "
                                   "annotated Secret are secret anyway)")
    parser.addoption("--run-timeout", dest="run_timeout", default=None, type=_seconds,
                     metavar="S", group=g,
                     help="start nothing new after S seconds and stop the run like Ctrl-C "
                          "(running tasks finish; exit 2; resumable with --resume)")
    parser.addoption("--limit", dest="limits", default=None, action="append", metavar="TAG=N",
                     group=g, help="at most N tasks tagged TAG run at once, mapped instances "
                                   "included; waiting for a slot holds no worker (repeatable; "
                                   "[tool.flowdeco.limits] in the config file)")
    parser.addoption("--run-id", dest="run_id", default=None, metavar="ID", group=g,
                     help="name this run ([A-Za-z0-9._-], up to 128 characters)")
    g = "selection"
    parser.addoption("-k", dest="select", default=None, metavar="EXPR", group=g,
                     help="run tasks whose names match EXPR (substrings with and/or/not, "
                          "like pytest), plus the tasks they need")
    parser.addoption("--collect-only", "--co", dest="collect_only", default=False,
                     action="store_true", group=g,
                     help="list tasks and their dependencies, run nothing")
    parser.addoption("--graph", dest="graph", default=None, choices=("mermaid", "dot"), group=g,
                     help="print the graph as Mermaid or Graphviz dot, run nothing")
    g = "state and output"
    parser.addoption("--state-dir", dest="state_dir", default=".flowdeco", metavar="DIR", group=g,
                     help="where state and audit trails live (default: .flowdeco)")
    parser.addoption("--no-state", dest="no_state", default=False, action="store_true", group=g,
                     help="keep nothing: write no state and no audit files")
    parser.addoption("-q", "--quiet", dest="quiet", default=0, action="count", group=g,
                     help="less output (-q: no per-task lines)")
    parser.addoption("-p", dest="plugins", default=[], action="append", metavar="NAME", group="plugins",
                     help="load plugin NAME (a built-in, an installed plugin or a module); "
                          "-p no:NAME disables it")
