"""Durable state: every run is saved, a crashed or failed run is resumed (``state`` plugin).

What it does (contract: DESIGN.md §6):

- Every task's completion (status, attempts, timings, source fingerprint and
  result as JSON) is committed to ``STATE_DIR/state.db`` before any task that
  depends on it starts, so a run killed at any moment (even by SIGKILL) never
  runs a recorded task again when resumed.  Completions are written in group
  commits by a writer thread, as soon as it is free (what arrives during a
  commit goes into the next one); a dependent's body waits on its worker
  until its inputs are committed (:mod:`.writer`).  A crash can therefore
  lose only completions that nothing has used yet and whose commit was in
  progress or about to start: those tasks run again on resume.  The audit
  trail writes ``task_succeeded`` only once the completion is committed, so
  a task it shows as succeeded is never run again.
  ``--state-sync full`` adds an fsync per commit (power-loss durability).
- ``--resume ID|last`` (``run(resume=...)``) restores completed tasks
  (status ``restored``; their stored results feed dependents) and runs the
  rest.  A completed task whose code or bound parameters changed is re-run
  with everything downstream (a ``task_changed`` warning says why; see
  :mod:`.fingerprint`).  ``--rerun EXPR`` (``-k`` syntax, repeatable) re-runs
  matching tasks and their downstream on purpose.  ``last`` is the latest
  run of the same flow; resuming a run of another flow is refused.
- Results are stored as JSON in their row (rules and tags: :mod:`.codec`;
  teach it a type with :func:`register_type`) or, chosen by ``store=``
  (:mod:`.storage`), as files under ``STATE_DIR/results`` written by a
  serializer (:mod:`.serializers`, :mod:`.results`): large bytes and text,
  DataFrames (Parquet), NumPy arrays (``.npy``), ``pickle`` when a task asks
  for it; plugins add formats (:func:`register_serializer`, the
  ``flowdeco_result_serializers`` hook).  A value nothing can store fails its
  task, naming the task, the type and the ``store=`` choices.
- A full disk (any failed write) stops the run -- nothing new starts,
  running tasks finish -- keeps what was written and reports
  ``state_write_failed``; resume once there is space.
- Input-hash caching: ``@task(cache=True, cache_ttl=...)`` restores a task
  whose code and inputs match a stored successful run's, across runs;
  ``--no-cache``, ``--refresh EXPR`` (:mod:`.cache`).
- Run history: ``python -m flowdeco runs`` (:mod:`.commands`).
- Flow versions: every run records the digest of its graph and tasks' code
  and, once per version, a snapshot of the graph (:mod:`.versions`);
  ``runs diff A B`` compares two runs'.  Read-only queries for the UI:
  :mod:`.queries`.
- ``--no-state`` (``state_dir=None``) registers nothing: no file, no cost.

Storage backends
----------------

The plugin reaches its store only through :class:`Store` (:mod:`.store`):
``open``, ``close``, ``lock_run``, ``begin_run``, ``load_run``,
``load_tasks``, ``record_tasks``, ``finish_run``, ``list_runs``,
``delete_run``.  The default is :class:`SQLiteStore`.  To keep runs
elsewhere, ship a plugin that answers the ``flowdeco_state_store`` hook
(declared by this plugin, see :mod:`.hookspecs`)::

    @flowdeco.hookimpl
    def flowdeco_state_store(state_dir, config):
        return PostgresStore(os.environ["MY_DSN"], lock_dir=state_dir)

Results reach a backend already encoded (JSON text), and come back through
:class:`TaskRecord`, so a backend never sees task objects.
"""

from __future__ import annotations

from .codec import Codec, Unstorable, register_type
from .serializers import Serializer, register_serializer
from .hooks import (flowdeco_addoption, flowdeco_cli_commands, flowdeco_configure,
                    flowdeco_state_store, flowdeco_task_options, flowdeco_unconfigure)
from .plugin import StatePlugin, make_store
from .store import RunLock, RunRecord, RunSummary, SQLiteStore, Store, TaskRecord, TaskRow

NAME = "state"

__all__ = ["Codec", "RunLock", "RunRecord", "RunSummary", "SQLiteStore", "Serializer",
           "StatePlugin", "Store", "TaskRecord", "TaskRow", "Unstorable", "make_store",
           "register_serializer", "register_type",
           "flowdeco_addoption", "flowdeco_cli_commands", "flowdeco_configure",
           "flowdeco_state_store", "flowdeco_task_options", "flowdeco_unconfigure"]
