"""Every error flowdeco raises on purpose derives from :class:`FlowError`.

The CLI turns a ``FlowError`` into one line on stderr and exit code 4 (usage or
collection error); anything else escaping the engine is an internal error
(exit 3).  Messages name the thing that is wrong (task, parameter, file, run
id) and say what to do, so they are meant to be shown to users verbatim.
"""

from __future__ import annotations

import difflib
from typing import ClassVar, Iterable, Sequence


class FlowError(Exception):
    """Base class of all flowdeco errors."""

    #: True on classes of failures the engine decides about a task (a timeout, an open
    #: circuit breaker, a result that cannot be stored, a crashed worker): the console
    #: shows them as one line, since their traceback would only show flowdeco's own code
    #: (the audit trail keeps it).  False here: a FlowError that task code raises itself
    #: (misusing flowdeco's API) is best found by its traceback.
    engine_decided: ClassVar[bool] = False


class UsageError(FlowError):
    """A bad argument, option or parameter given by the user."""


class CollectionError(FlowError):
    """The target could not be loaded or its tasks could not be collected."""


class TaskDefinitionError(CollectionError):
    """A ``@task`` declaration is invalid (raised at decoration time)."""


class CycleError(CollectionError):
    """The dependency graph has a cycle; ``cycle`` lists it, first node repeated last."""

    def __init__(self, cycle: Sequence[str]):
        self.cycle = list(cycle)
        super().__init__(
            "dependency cycle: " + " -> ".join(self.cycle)
            + "; break it by removing one of these dependencies"
        )


class MissingDependencyError(CollectionError):
    """A task depends on a name that is not a task, run parameter or default."""

    def __init__(self, task: str, name: str, kind: str, candidates: Iterable[str]):
        self.task = task
        self.name = name
        self.suggestions = suggest(name, candidates)
        hint = f"; did you mean {_quote_list(self.suggestions)}?" if self.suggestions else ""
        if kind == "parameter":
            what = (f"task {task!r}: parameter {name!r} matches no task, run parameter "
                    f"or default{hint} (pass it with --param {name}=VALUE, give it a "
                    f"default, or define a task named {name!r})")
        else:
            what = f"task {task!r}: after= names unknown task {name!r}{hint}"
        super().__init__(what)


class DuplicateTaskError(CollectionError):
    """Two tasks of one flow share a name."""

    def __init__(self, name: str, where: Sequence[str]):
        self.name = name
        super().__init__(
            f"two tasks are named {name!r} ({' and '.join(where)}); "
            "rename one or give it @task(name=...)"
        )


class StateError(FlowError):
    """The state store cannot be used: a corrupted, foreign or newer database, an
    unknown or busy run id, a record that fails validation, or a result that
    cannot be stored (then it fails the task instead of escaping)."""

    engine_decided = True


class SecretRevealError(FlowError):
    """Raised when a :class:`flowdeco.Secret` is used where its value would leak."""


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing user input in errors.

    A 10,000-character run id must not make a 10 KB error line: the cut keeps
    the start, adds an ellipsis and the full length (``'xxx...' (10000 characters)``).
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[:limit] + "..." + size


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def engine_decided(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a failure the engine decided (see ``FlowError.engine_decided``).

    Any exception class may opt in with a true ``engine_decided`` class attribute.
    """
    return exc is not None and getattr(type(exc), "engine_decided", False) is True


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Closest names to ``name`` (difflib), for "did you mean" hints."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def _quote_list(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
