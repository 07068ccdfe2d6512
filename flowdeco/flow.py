"""``Flow``: a named set of tasks, runnable on its own or nested as one node of another.

A module is a flow implicitly (its ``@task`` functions); a ``Flow`` object is
one explicitly::

    validation = Flow("validation")

    @validation.task
    def check_format(data): ...

    validate = validation.as_task("validate")   # one node of the module's flow

Inner tasks of a node are named ``validate.check_format`` in outcomes and
audit events.  A parameter of an inner task that names no inner task is bound
by name from the enclosing flow (or through ``bind=``), then from run
parameters, so one ``Flow`` can back several nodes fed by different inputs.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs

from .errors import TaskDefinitionError
from .task import check_name, _decorator, get_spec, make_spec, SPEC_ATTR


class Flow:
    """A named collection of tasks and sub-flow nodes, in declaration order."""

    def __init__(self, name: str):
        check_name(name, f"flow {name!r}")
        self.name = name
        self._members: list[Any] = []

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {len(self._members)} members>"

    @property
    def members(self) -> tuple[Any, ...]:
        """Task functions and :class:`SubflowNode` objects, in the order they were added."""
        return tuple(self._members)

    def task(self, fn: Any = None, /, **options: Any) -> Any:
        """Like :func:`flowdeco.task`, but the task belongs to this flow, not to its module."""
        def add(f: Any) -> Any:
            f = _decorator(self, f, options)
            self._members.append(f)
            return f
        if fn is None:
            return add
        if isinstance(fn, str):
            raise TaskDefinitionError(
                f"@{self.name}.task({fn!r}): give the name as a keyword, name={fn!r}")
        return add(fn)

    def add(self, member: Any, **options: Any) -> Any:
        """Add a task function (decorated or not) or a :class:`SubflowNode`; returns it.

        An undecorated function gets a default task spec; ``options`` are
        ``@task`` options for it.
        """
        if isinstance(member, SubflowNode):
            if options:
                raise TaskDefinitionError(
                    f"flow {self.name!r}: options for node {member.name!r} go to as_task()")
        elif get_spec(member) is None or options:
            spec = make_spec(member, owner=self, **options)
            try:
                setattr(member, SPEC_ATTR, spec)
            except (AttributeError, TypeError):
                raise TaskDefinitionError(
                    f"flow {self.name!r}: cannot add {member!r}; it does not accept attributes") from None
        self._members.append(member)
        return member

    def as_task(self, name: str | None = None, *, bind: Mapping[str, str] | None = None,
                after: Iterable[Any] = (), priority: int = 0,
                tags: Iterable[str] = ()) -> "SubflowNode":
        """This flow as one node of an enclosing flow.

        ``bind`` maps a free parameter of the inner tasks to a name in the
        enclosing flow (``bind={"data": "fetch_users"}``) so one flow can be
        reused on different inputs.  ``after`` orders the whole node after
        other tasks.
        """
        name = self.name if name is None else name
        check_name(name, f"node {name!r}")
        if isinstance(after, (str, bytes)) or callable(after):
            after = (after,)
        return SubflowNode(name=name, flow=self, bind=dict(bind or {}), after=tuple(after),
                           priority=priority, tags=frozenset([tags] if isinstance(tags, str) else tags))

    def run(self, **kwargs: Any) -> Any:
        """Shorthand for ``flowdeco.run(self, **kwargs)``."""
        # through the package, which imports the engine by name on first use: the model
        # (flow, graph, collect) never imports the engine, which imports the model
        import flowdeco
        return flowdeco.run(self, **kwargs)


@attrs.frozen(eq=False)
class SubflowNode:
    """A :class:`Flow` used as one node of another flow (see :meth:`Flow.as_task`).

    The node's result is its sink task's result, or a dict by inner name when
    the inner flow has several sinks.  It succeeds when every inner task
    succeeded and fails when one failed.
    """

    name: str
    flow: Flow
    bind: Mapping[str, str] = attrs.field(factory=dict)
    after: tuple[Any, ...] = ()
    priority: int = 0
    tags: frozenset[str] = frozenset()
