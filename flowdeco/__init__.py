"""flowdeco: a local-first workflow engine for Python that feels like pytest."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .clock import Clock, FakeClock
from .errors import (CollectionError, CycleError, DuplicateTaskError, FlowError,
                     MissingDependencyError, StateError, TaskDefinitionError, UsageError)
from .flow import Flow, SubflowNode
from .outcome import (Attempt, Deadline, Event, ExitCode, Finish, Reschedule, Restored,
                      RunResult, TaskOutcome)
from .secret import Secret
from .task import TaskSpec, task

# Declaring tasks needs only the light modules above; the engine (structlog,
# the runner, the built-in plugins) is imported the first time one of these
# names is used, so `import flowdeco` in a module of tasks -- and the pytest
# plugin in every test session -- stays cheap.
_LAZY = {
    "Context": "context", "hookimpl": "manager",
    "run": "engine.session", "Run": "engine.scheduler", "NoTasksError": "engine.session",
    "Retry": "policies.retry", "RetryError": "policies.retry",
    "Incrementing": "policies.retry", "Chain": "policies.retry",
    "CircuitBreaker": "policies.circuit",
    "CircuitOpenError": "policies.circuit", "TaskTimeout": "policies.timeout",
    "Pipeline": "pipeline", "PipelineResult": "pipeline",
    "WorkerCrashed": "executors", "UnpicklableResult": "pickling",
    "StashKey": "stash", "TaskAlert": "plugins.alerts",
}

if TYPE_CHECKING:  # pragma: no cover
    from .context import Context
    from .manager import hookimpl
    from .pipeline import Pipeline, PipelineResult
    from .policies.circuit import CircuitBreaker, CircuitOpenError
    from .policies.retry import Chain, Incrementing, Retry, RetryError
    from .policies.timeout import TaskTimeout
    from .executors import WorkerCrashed
    from .pickling import UnpicklableResult
    from .stash import StashKey
    from .plugins.alerts import TaskAlert
    from .engine.scheduler import Run
    from .engine.session import NoTasksError, run


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowdeco' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Attempt", "Chain", "CircuitBreaker", "CircuitOpenError", "Clock", "CollectionError", "Context",
    "CycleError", "Deadline", "DuplicateTaskError", "Event", "ExitCode", "FakeClock", "Finish", "Flow",
    "FlowError", "Incrementing", "MissingDependencyError", "NoTasksError", "Pipeline", "PipelineResult",
    "Reschedule", "Restored", "Retry", "RetryError", "Run", "RunResult", "Secret", "StashKey", "StateError",
    "SubflowNode", "TaskAlert", "TaskDefinitionError", "TaskOutcome", "TaskSpec", "TaskTimeout",
    "UnpicklableResult", "UsageError", "WorkerCrashed", "hookimpl", "run", "task",
]
