"""flowdeco-dask: run a flow's task bodies on Dask distributed.

Installed, it is found through the ``flowdeco`` entry-point group (``-p
no:dask`` disables it) and adds:

- ``--executor dask`` / ``run(..., executor="dask")``: with no address, a
  ``LocalCluster`` of ``--workers`` worker processes (one thread each) is
  started for the run and closed after it;
- ``--dask-address tcp://HOST:8786`` / ``run(..., dask_address=...)``: use an
  existing scheduler instead;
- ``run(..., executor=client)`` with a ``distributed.Client`` (or
  ``client.get_executor()``): use that client; it stays yours (not closed);
- ``--dask-upload/--no-dask-upload`` / ``run(..., dask_upload=...)``: send
  the flow's own ``.py`` files (a task module that is a single top-level
  file, and the files next to it that it imports) to the scheduler and the
  workers before the run, and unregister them after it.  On by default with
  ``--dask-address``; off for a client you pass (``dask_upload=True`` turns
  it on); pointless for the local cluster, which has this ``sys.path``.

Before the first task, the scheduler and every worker import the flow's
task modules (see :mod:`flowdeco_dask.upload`): a flow the cluster cannot
import is refused in one line naming the module and the fix (CLI exit 4).
With ``-q``, Dask's own log lines (a dead worker's, a restarted nanny's)
are silenced below CRITICAL: flowdeco reports the outcomes itself.

Only task bodies travel: the scheduler loop stays in the driver process, so
retries, delays, state, resume and the audit trail work exactly as with
threads.  Each attempt is one Dask task (``pure=False``: never deduplicated
or cached by Dask), or tiny attempts go several to one Dask task (see the
runner's batching); results come back to the driver.  Without
``--workers`` the run keeps as many attempts in flight as the cluster has
worker threads.

Differences from threads worth knowing:

- **Timeouts**: Dask runs tasks on worker *threads*, where ``SIGALRM``
  cannot interrupt them.  A timed-out attempt fails with ``TaskTimeout`` at
  its limit and the run goes on, but its code keeps running on the worker
  (holding that worker thread) until it returns by itself.
- **Dead workers**: a worker process that dies fails its attempt with
  ``WorkerCrashed``, retried by the task's policy.  A cluster this plugin
  starts never re-runs the task itself (``allowed-failures`` 0); a
  scheduler you run yourself follows its own setting.
- **Circuit breakers** and other module-level state live in each worker
  process, not in the driver.
- **Code**: tasks travel with cloudpickle -- lambdas and closures too.  The
  modules they are defined in must be importable on the scheduler (it
  unpickles the task graph) and the workers: a local cluster started for
  the run has the driver's ``sys.path``; a remote one gets a single-file
  flow by ``--dask-upload``; install anything else (packages) there.

This module imports nothing from Dask until a run asks for it, so having the
plugin installed costs other runs nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from flowdeco import StashKey, UsageError, hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco.config import Config, Parser
    from flowdeco.graph import Graph

    from .executor import DaskExecutor
    from .upload import Uploads

# config.stash keys
_STASH: StashKey[DaskExecutor] = StashKey("flowdeco_dask.executor")
_GRAPH: StashKey[Graph] = StashKey("flowdeco_dask.graph")
_UPLOADS: StashKey[Uploads] = StashKey("flowdeco_dask.uploads")
_LOGS: StashKey[list[tuple[logging.Logger, int]]] = StashKey("flowdeco_dask.logs")


def _dask_object(obj: Any) -> bool:
    """True for a ``distributed.Client``, its executor, or a :class:`DaskExecutor`."""
    if sys.modules.get("distributed") is None:   # nobody made one if Dask is not imported
        return False
    from distributed import Client
    from distributed.cfexecutor import ClientExecutor

    from .executor import DaskExecutor
    return isinstance(obj, (Client, ClientExecutor, DaskExecutor))


def _load() -> Any:
    """The executor module (imports Dask), with a usage error when Dask is missing."""
    try:
        from . import executor
    except ImportError as exc:
        raise UsageError(f"--executor dask needs Dask distributed, which failed to import "
                         f"({exc}); pip install distributed") from None
    return executor


def _wants_dask(config: Any) -> bool:
    executor = config.getoption("executor", None)
    return executor == "dask" or _dask_object(executor)


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    parser.addoption("--dask-address", dest="dask_address", default=None, metavar="ADDRESS",
                     group="running",
                     help="with --executor dask: the scheduler to use (tcp://host:8786); "
                          "default: start a local cluster of --workers processes")
    parser.addoption("--dask-upload", dest="dask_upload", default=None, group="running",
                     action=argparse.BooleanOptionalAction,
                     help="with --executor dask: send the flow's file and the .py files next "
                          "to it that it imports to the scheduler and workers before the run "
                          "(default: on with --dask-address)")


@hookimpl
def flowdeco_configure(config: Config) -> None:
    address = config.getoption("dask_address")
    if address is not None:
        if not isinstance(address, str) or not address:
            raise UsageError(f"dask_address must be a scheduler address like "
                             f"tcp://host:8786, got {address!r}")
        if config.getoption("executor") != "dask":
            raise UsageError("--dask-address needs --executor dask "
                             "(run(..., executor='dask', dask_address=...))")
    upload = config.getoption("dask_upload")
    if upload is not None:
        if not isinstance(upload, bool):
            raise UsageError(f"dask_upload must be True or False, got {upload!r}")
        if not _wants_dask(config):
            raise UsageError("--dask-upload needs --executor dask "
                             "(run(..., executor='dask', dask_upload=...))")


@hookimpl
def flowdeco_collection_finish(config: Config, graph: Graph) -> None:
    """Refuse, before anything runs, tasks that cannot be shipped to Dask workers.

    With a client or executor given as ``executor=``, also send the flow's
    files (``dask_upload=True``) and check the cluster imports them; with
    ``--executor dask`` that happens once the cluster is reached
    (``flowdeco_make_executor``).
    """
    if not _wants_dask(config):
        return
    _load().check_graph(graph)
    if config.getoption("quiet", 0) and _LOGS not in config.stash:
        config.stash[_LOGS] = _quiet_dask_logs()
    config.stash[_GRAPH] = graph
    executor = config.getoption("executor", None)
    if executor != "dask":
        from .executor import client_of
        _prepare(config, client_of(executor), upload=config.getoption("dask_upload") is True)


def _prepare(config: Any, client: Any, upload: bool) -> Any:
    """Upload the flow's files (when ``upload``) and check the cluster imports the flow."""
    from .upload import Uploads, files_to_upload, probe
    graph = config.stash.get(_GRAPH)
    if graph is None:
        return None
    uploads = None
    try:
        if upload:
            uploads = config.stash[_UPLOADS] = Uploads(client)
            uploads.send(files_to_upload(graph))
        probe(client, graph, uploads, config.getoption("dask_upload"))
    except BaseException:
        if uploads is not None:
            uploads.release()   # a refused run leaves nothing on the cluster
        raise
    return uploads


def _quiet_dask_logs() -> list[tuple[logging.Logger, int]]:
    """Raise Dask's loggers in this process to CRITICAL (``-q``); what to restore."""
    saved = [(logging.getLogger("distributed"), logging.getLogger("distributed").level)]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("distributed.") and isinstance(logger, logging.Logger) \
                and logger.level != logging.NOTSET:
            saved.append((logger, logger.level))   # its own level (distributed.client): too
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    return saved


@hookimpl
def flowdeco_make_executor(config: Config, name: str, workers: int) -> Any:
    executor = config.getoption("executor", None)
    if executor != "dask" and not _dask_object(executor):
        return None
    DaskExecutor = _load().DaskExecutor
    if executor != "dask":
        made = DaskExecutor.wrap(executor)
        config.stash[_STASH] = made
        return made
    address = config.getoption("dask_address")
    made = DaskExecutor.start(workers, address=address,
                              quiet=bool(config.getoption("quiet", 0)))
    config.stash[_STASH] = made
    upload = config.getoption("dask_upload")
    try:
        made.uploads = _prepare(config, made.client,
                                upload=upload if upload is not None else address is not None)
    except BaseException:
        made.shutdown()   # releases what was uploaded, closes what it started
        raise
    return made


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    uploads = config.stash.pop(_UPLOADS, None)
    if uploads is not None:
        uploads.release()           # a no-op when the executor released them
    made = config.stash.pop(_STASH, None)
    if made is not None:
        made.shutdown(wait=False)   # a no-op when the run already shut it down
    for logger, level in config.stash.pop(_LOGS, ()):
        logger.setLevel(level)
