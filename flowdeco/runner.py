"""Compatibility module: the names ``flowdeco.runner`` has always exported.

The engine lives in :mod:`flowdeco.engine` (see ``docs/architecture.md``):
:mod:`~flowdeco.engine.session` (``run()``, :class:`Session`, run ids),
:mod:`~flowdeco.engine.scheduler` (:class:`Run`), :mod:`~flowdeco.engine.dispatch`,
:mod:`~flowdeco.engine.attempt`.  Import from there in new code.
"""

from __future__ import annotations

from .engine.attempt import RemoteTaskError, format_traceback
from .engine.scheduler import Run
from .engine.session import RUN_ID_RE, NoTasksError, Session, new_run_id, run, validate_run_id
from .engine.states import (DONE, PENDING, READY, RUNNING, WAITING, InternalError, Msg,
                            StopState, TaskState)
from .engine.views import Outcomes

__all__ = ["DONE", "PENDING", "READY", "RUNNING", "RUN_ID_RE", "WAITING", "InternalError",
           "Msg", "NoTasksError", "Outcomes", "RemoteTaskError", "Run", "Session", "StopState",
           "TaskState", "format_traceback", "new_run_id", "run", "validate_run_id"]
