"""``Pipeline`` and its stages: declaring a streaming pipeline (contract §2, §4)."""

from __future__ import annotations

import numbers
import sys
from typing import Any, Callable, Iterable

import attrs

from ..errors import TaskDefinitionError, UsageError
from ..policies.retry import Retry
from ..task import check_name
from .engine import Execution, Reporter, window_size
from .result import PipelineResult


@attrs.frozen
class Stage:
    """One declared stage: its function and options (see :meth:`Pipeline.stage`)."""

    name: str
    fn: Callable[[Any], Any]
    workers: int = 2
    batch_size: int | None = None
    retry: Retry | None = None
    timeout: float | None = None


def _int_option(where: str, what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TaskDefinitionError(f"{where}: {what} must be an int >= {low}, got {value!r}")
    return value


class Pipeline:
    """A streaming pipeline: items flow through stages, each with its own worker pool.

    ``Pipeline(name, queue_size=100, ordered=True, priority=0)``; declare
    stages in order with :meth:`stage`, run with :meth:`run`, or make the
    pipeline one node of a flow with :meth:`as_task`.

    - ``queue_size``: capacity of each bounded queue between stages
      (backpressure: a full queue blocks the stage writing to it).
    - ``ordered``: outputs in input order (True) or completion order.
    - ``priority``: the default ``priority`` of nodes made by :meth:`as_task`
      (the order in which ready tasks of a flow take the run's workers).

    At most :attr:`window` items are in flight at once (pulled from the
    source and not yet delivered), however long the source and however slow
    one item: memory is O(queue_size x stages), not O(items).
    """

    def __init__(self, name: str, queue_size: int = 100, ordered: bool = True,
                 priority: int = 0):
        check_name(name, f"pipeline {name!r}")
        where = f"pipeline {name!r}"
        self.name = name
        self.queue_size = _int_option(where, "queue_size", queue_size, 1)
        if not isinstance(ordered, bool):
            raise TaskDefinitionError(f"{where}: ordered must be True or False, got {ordered!r}")
        self.ordered = ordered
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TaskDefinitionError(f"{where}: priority must be an int, got {priority!r}")
        self.priority = priority
        self._stages: list[Stage] = []

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {' -> '.join(s.name for s in self._stages) or 'no stages'}>"

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The declared stages, in order."""
        return tuple(self._stages)

    @property
    def window(self) -> int:
        """The most items in flight at once: every queue full and every worker busy."""
        return window_size(self._stages, self.queue_size)

    # -- declaring
    def stage(self, fn: Any = None, /, *, name: str | None = None, workers: int = 2,
              batch_size: int | None = None, retries: int | None = None,
              retry: Retry | None = None, timeout: float | None = None) -> Any:
        """Add a stage; use as ``@pipe.stage`` or ``@pipe.stage(...)``.  Returns ``fn`` unchanged.

        The function takes one item and returns the item passed to the next
        stage.  With ``batch_size=B`` it takes a list of up to B items (full
        batches except the last, or while the pipeline is stalled behind a
        slow item) and returns a list of one result per item, in order.
        ``workers``: threads of this stage.  ``retries``/``retry``: retry a
        failed call (an item, or a whole batch) by a :class:`~flowdeco.Retry`
        policy, without holding a worker while waiting.  ``timeout``: seconds
        per call; a longer call fails with :class:`~flowdeco.TaskTimeout`
        (like a task's timeout on threads, the call itself cannot be killed).
        """
        options = dict(name=name, workers=workers, batch_size=batch_size, retries=retries,
                       retry=retry, timeout=timeout)
        if fn is None:
            return lambda f: self._add(f, **options)
        if isinstance(fn, str):
            raise TaskDefinitionError(
                f"@{self.name}.stage({fn!r}): give the name as a keyword, name={fn!r}")
        return self._add(fn, **options)

    def _add(self, fn: Any, *, name: str | None, workers: int, batch_size: int | None,
             retries: int | None, retry: Retry | None, timeout: float | None) -> Any:
        if not callable(fn) or isinstance(fn, type):
            raise TaskDefinitionError(
                f"pipeline {self.name!r}: a stage must be a function, not {fn!r}")
        if name is None:
            name = getattr(fn, "__name__", None)
            if not name or name == "<lambda>":
                raise TaskDefinitionError(
                    f"pipeline {self.name!r}: {fn!r} has no usable name; pass name=...")
        where = f"pipeline {self.name!r}, stage {name!r}"
        check_name(name, where)
        if any(s.name == name for s in self._stages):
            raise TaskDefinitionError(f"{where}: a stage of that name already exists")
        workers = _int_option(where, "workers", workers, 1)
        if batch_size is not None:
            batch_size = _int_option(where, "batch_size", batch_size, 1)
        if retries is not None and retry is not None:
            raise TaskDefinitionError(
                f"{where}: give either retries= or retry=, not both "
                "(retries=N is shorthand for retry=Retry(retries=N))")
        if retries is not None:
            retry = Retry(retries=_int_option(where, "retries", retries, 0)) if retries else None
        elif retry is not None and not isinstance(retry, Retry):
            raise TaskDefinitionError(f"{where}: retry= must be a flowdeco.Retry policy, "
                                      f"got {retry!r} (for a number of retries use retries=N)")
        elif retry is not None and (retry.retry_if is not None or retry.give_up_after is not None):
            raise TaskDefinitionError(
                f"{where}: a stage's Retry cannot use retry_if= or give_up_after= (they "
                "apply to tasks); use retries= and the failures to retry (on=/not_on=)")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) \
                    or not 0 < timeout < float("inf"):
                raise TaskDefinitionError(
                    f"{where}: timeout must be a number of seconds > 0, got {timeout!r}")
            timeout = float(timeout)
        self._stages.append(Stage(name, fn, workers, batch_size, retry, timeout))
        return fn

    # -- running
    def run(self, items: Iterable[Any], *, stop_on_error: bool = False,
            collect: bool = True) -> PipelineResult:
        """Stream ``items`` (any iterable, consumed lazily) through the stages.

        Returns a :class:`PipelineResult`.  A failing item (after its stage's
        retries) is recorded in ``errors`` and dropped; the others go on.
        With ``stop_on_error=True`` the first failure stops feeding new items;
        those in flight still finish (``result.stopped`` is True).  With
        ``collect=False`` the last stage's results are dropped (it is a sink
        that writes somewhere): ``outputs`` stays empty and memory stays
        bounded however many items flow through.  An error raised by the
        source itself is re-raised once the items in flight have drained.
        Ctrl-C stops every stage thread and is re-raised.

        Outside a flow there is no plugin manager: the stages' ``retry=`` and
        ``timeout=`` apply as declared (the policies are the core's,
        :mod:`flowdeco.policies`).  In a flow the node is refused at
        collection when a stage's option belongs to a disabled plugin.
        """
        return self.execution(items, stop_on_error=stop_on_error, collect=collect).run()

    def execution(self, items: Iterable[Any], *, stop_on_error: bool = False,
                  collect: bool = True, reporter: Reporter | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Execution:
        """A prepared, not yet started run (``.run()`` runs it); for engine extensions."""
        if not self._stages:
            raise UsageError(f"pipeline {self.name!r} has no stages: add some with "
                             f"@{self.name}.stage")
        try:
            iter(items)
        except TypeError:
            raise UsageError(f"pipeline {self.name!r}: items must be iterable, got "
                             f"{type(items).__name__}") from None
        return Execution(self.name, tuple(self._stages), items, queue_size=self.queue_size,
                         ordered=self.ordered, stop_on_error=stop_on_error, reporter=reporter,
                         should_stop=should_stop, collect=collect)

    def as_task(self, name: str | None = None, *, source: Any,
                items: Callable[[Any], Iterable[Any]] | None = None,
                stop_on_error: bool | None = None, collect: bool = True,
                after: Iterable[Any] = (), priority: int | None = None,
                tags: Iterable[str] = ()) -> Callable[..., Any]:
        """This pipeline as one task of a flow, fed by the result of task ``source``.

        ``source`` is a task function or a task name; the node depends on it
        and streams its result (any iterable), or ``items(result)`` when given
        (e.g. a function opening a file path lazily).  The node's result is
        the :class:`PipelineResult` (``collect=False``: without outputs).  ``stop_on_error`` defaults to the run's
        (``-x``); when it stops the pipeline, the node fails.  ``priority``
        defaults to the pipeline's.  Bind the returned task function to a
        module-level name so the module's flow collects it.
        """
        from .node import make_node

        caller = sys._getframe(1).f_globals.get("__name__", __name__)
        return make_node(self, self.name if name is None else name, source, items=items,
                         stop_on_error=stop_on_error, collect=collect, after=after,
                         priority=self.priority if priority is None else priority,
                         tags=tags, module=caller)
