"""flowdeco: a local-first workflow engine for Python that feels like pytest."""

from .clock import Clock, FakeClock
from .context import Context
from .errors import (CollectionError, CycleError, DuplicateTaskError, FlowError,
                     MissingDependencyError, TaskDefinitionError, UsageError)
from .flow import Flow, SubflowNode
from .manager import hookimpl
from .outcome import (Attempt, Event, ExitCode, Finish, Reschedule, Restored, RunResult,
                      TaskOutcome)
from .runner import NoTasksError, Run, run
from .secret import Secret
from .task import TaskSpec, task

__version__ = "0.1.0"

__all__ = [
    "Attempt", "Clock", "CollectionError", "Context", "CycleError", "DuplicateTaskError",
    "Event", "ExitCode", "FakeClock", "Finish", "Flow", "FlowError", "MissingDependencyError",
    "NoTasksError", "Reschedule", "Restored", "Run", "RunResult", "Secret", "SubflowNode",
    "TaskDefinitionError", "TaskOutcome", "TaskSpec", "UsageError", "hookimpl", "run", "task",
]
