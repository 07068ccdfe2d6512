"""flowdeco: a local-first workflow engine for Python that feels like pytest."""

from .clock import Clock, FakeClock
from .context import Context
from .errors import (CollectionError, CycleError, DuplicateTaskError, FlowError,
                     MissingDependencyError, StateError, TaskDefinitionError, UsageError)
from .flow import Flow, SubflowNode
from .manager import hookimpl
from .outcome import (Attempt, Event, ExitCode, Finish, Reschedule, Restored, RunResult,
                      TaskOutcome)
from .plugins.circuit import CircuitBreaker, CircuitOpenError
from .plugins.retry import Retry
from .plugins.timeout import TaskTimeout
from .runner import NoTasksError, Run, run
from .secret import Secret
from .task import TaskSpec, task

__version__ = "0.1.0"

__all__ = [
    "Attempt", "CircuitBreaker", "CircuitOpenError", "Clock", "CollectionError", "Context",
    "CycleError", "DuplicateTaskError", "Event", "ExitCode", "FakeClock", "Finish", "Flow",
    "FlowError", "MissingDependencyError", "NoTasksError", "Reschedule", "Restored", "Retry",
    "Run", "RunResult", "Secret", "StateError", "SubflowNode", "TaskDefinitionError",
    "TaskOutcome", "TaskSpec", "TaskTimeout", "UsageError", "hookimpl", "run", "task",
]
