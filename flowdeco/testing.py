"""pytest fixtures for testing flows: ``flow_run``, ``flow_clock``, ``flow_events``, ``flow_state``.

Registered through the ``pytest11`` entry point, so every project that has
flowdeco installed can use them without configuration.  Importing this module
costs next to nothing: flowdeco itself is imported only when a test uses one
of the fixtures.

Example::

    def test_etl(flow_run, flow_events):
        result = flow_run("etl.py", overrides={"extract": {"records": 3}})
        result.assert_ok()
        assert result.results["load"] == 6
        assert flow_events.of("task_restored", task="extract")
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import pluggy
import pytest

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Run
    from flowdeco.config import Config
    from flowdeco.graph import Graph, Vertex
    from .clock import FakeClock
    from .outcome import Event, RunResult


#: the same marker as ``flowdeco.hookimpl``, made from pluggy (which pytest has
#: already imported) so that loading this plugin does not import flowdeco
hookimpl = pluggy.HookimplMarker("flowdeco")


class FlowEvents:
    """The audit events of the last ``flow_run`` (cleared when a run starts).

    ``flow_events.of("task_retrying", task="fetch")`` lists the events with
    that name whose fields match; ``flow_events.names()`` the event names in
    order.  Events are :class:`flowdeco.Event` objects (``name``, ``task``,
    ``fields``, ``timestamp``, ``outcome``).
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def flowdeco_report(self, run: Run, event: Event) -> None:
        self.events.append(event)

    def clear(self) -> None:
        self.events.clear()

    def of(self, name: str | None = None, **fields: Any) -> list[Event]:
        """Events named ``name`` (any name if None) whose ``task`` and fields equal ``fields``."""
        out = []
        for e in self.events:
            if name is not None and e.name != name:
                continue
            if all((e.task if k == "task" else e.fields.get(k, _MISSING)) == v
                   for k, v in fields.items()):
                out.append(e)
        return out

    def names(self, task: str | None = None) -> list[str]:
        """Event names in order (only those of ``task`` when given)."""
        return [e.name for e in self.events if task is None or e.task == task]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return f"<FlowEvents: {len(self.events)} events>"


_MISSING = object()


class Overrides:
    """A plugin replacing tasks' functions (``override=``) or results (``overrides=``) for one run.

    A replaced result completes the task as ``restored`` without calling it;
    a replacement function is called instead of the task's own, with the
    arguments it accepts by name.
    """

    def __init__(self, functions: Mapping[str, Callable[..., Any]], values: Mapping[str, Any]):
        both = set(functions) & set(values)
        if both:
            from .errors import UsageError
            raise UsageError(f"task {sorted(both)[0]!r} is in both override= and overrides=")
        self.functions = dict(functions)
        self.values = dict(values)

    @hookimpl
    def flowdeco_collection_finish(self, config: Config, graph: Graph) -> None:
        from .errors import UsageError, suggest
        for name in [*self.functions, *self.values]:
            if name not in graph.by_name:
                hint = suggest(name, graph.names)
                raise UsageError(f"override for unknown task {name!r}"
                                 + (f"; did you mean {hint[0]!r}?" if hint else ""))

    @hookimpl
    def flowdeco_task_restore(self, run: Run, task: Vertex) -> Any:
        if task.name in self.values:
            from .outcome import Restored
            return Restored(self.values[task.name])
        return None

    @hookimpl
    def flowdeco_task_wrap(self, run: Run, task: Vertex) -> Any:
        fake = self.functions.get(task.name)
        if fake is None:
            return None
        accepts = _accepted(fake)
        return lambda call: (lambda kwargs: fake(**_select(kwargs, accepts)))


def _accepted(fn: Callable[..., Any]) -> set[str] | None:
    """Names ``fn`` takes by keyword, or None when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _select(kwargs: dict, accepts: set[str] | None) -> dict:
    return kwargs if accepts is None else {k: v for k, v in kwargs.items() if k in accepts}


class FlowRealTimeWarning(pytest.PytestWarning):
    """A flow started by ``flow_run`` waited seconds of real time for a timer."""


def _real_time_message(waited: float, timeout: float) -> str:
    return (f"flow_run: the flow has been waiting on the real clock for {waited:g} s, "
            f"for a timer due in {timeout:,.0f} s more (every=, delay= or a retry delay); "
            "use the flow_clock fixture to run schedules instantly")


def run_flow(target: Any, *, fail_after: float | None = None, **kwargs: Any) -> RunResult:
    """:func:`flowdeco.run` as tests want it: no state kept unless ``state_dir=`` is given.

    With ``fail_after`` (seconds), the run happens on a helper thread (see
    :func:`within`) and a run that takes longer fails the test instead of hanging the suite;
    use it for executors with processes or clusters.  Without it the run is on
    the test's thread, so Ctrl-C and signal handling behave as on the CLI.
    The ``flow_run`` fixture calls this, adding events, overrides and clocks.
    """
    from .engine.session import run
    kwargs.setdefault("state_dir", None)
    if fail_after is None:
        return run(target, **kwargs)
    return within(fail_after, run, target, **kwargs)


class FlowRunner:
    """The ``flow_run`` fixture: ``flow_run(target, override=None, overrides=None, **run_kwargs)``.

    ``run_kwargs`` are those of :func:`run_flow` (``fail_after=``) and :func:`flowdeco.run`.

    Runs in-process with no state (``state_dir=None``) unless ``state=True``
    (then in the test's ``flow_state`` folder) or ``state_dir=`` is given;
    uses the test's ``flow_clock`` when the test asked for it; records the
    events in ``flow_events``.  Returns the :class:`flowdeco.RunResult`, also
    kept as ``flow_run.result``.

    Ctrl-C or SIGTERM during the run stops the flow like on the command line
    (running tasks are waited for and recorded), then raises
    ``KeyboardInterrupt`` so pytest stops the session as for any test.

    On the real clock, a flow that has waited ``real_wait_warning`` seconds for
    a timer (an ``every=3600`` task in a test without ``flow_clock``) is
    reported at once on the terminal and with a :class:`FlowRealTimeWarning`
    (once per test), instead of hanging the suite silently.  Set
    ``flow_run.real_wait_warning = None`` to turn that off.
    """

    #: seconds of real time a flow may wait for a timer before the warning
    real_wait_warning: float | None = 5.0

    def __init__(self, request: pytest.FixtureRequest, events: FlowEvents):
        self._request = request
        self.events = events
        self.result: RunResult | None = None
        self._warned: str | None = None

    def __call__(self, target: Any, *, override: Mapping[str, Callable[..., Any]] | None = None,
                 overrides: Mapping[str, Any] | None = None, state: bool = False,
                 **kwargs: Any) -> RunResult:
        plugins = list(kwargs.pop("plugins", ()))
        if override or overrides:
            plugins.append(Overrides(override or {}, overrides or {}))
        self.events.clear()
        plugins.append(self.events)
        if state:
            kwargs.setdefault("state_dir", self._request.getfixturevalue("flow_state"))
        if "flow_clock" in self._request.fixturenames:
            kwargs.setdefault("clock", self._request.getfixturevalue("flow_clock"))
        if kwargs.get("clock") is None and self.real_wait_warning is not None \
                and self._warned is None:
            kwargs["clock"] = _watched_clock(self.real_wait_warning, self._long_wait)
        self.result = run_flow(target, plugins=plugins, **kwargs)
        if self._warned is not None and self._warned != "issued":
            message, self._warned = self._warned, "issued"
            import warnings
            warnings.warn(FlowRealTimeWarning(message), stacklevel=2)
        if self.result.status == "interrupted" and any(
                "signal" in e.fields for e in self.events.of("run_interrupted")):
            # Ctrl-C / SIGTERM (not a plugin's run.stop): the flow has stopped and
            # is recorded; now stop the session, as an interrupt does in any test
            raise KeyboardInterrupt
        return self.result

    def _long_wait(self, waited: float, timeout: float) -> None:
        """The clock's report of a long wait: say it now, on the terminal (past capture)."""
        self._warned = message = _real_time_message(waited, timeout)
        config = self._request.config
        reporter = config.pluginmanager.getplugin("terminalreporter")
        capture = config.pluginmanager.getplugin("capturemanager")
        try:
            if reporter is None:
                import sys
                print(message, file=sys.__stderr__, flush=True)
                return
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write_line(message)
            else:
                reporter.write_line(message)
        except Exception:  # noqa: BLE001 - a notice must never break the run
            pass


def _watched_clock(after: float, notice: Callable[[float, float], None]) -> Any:
    """The real clock, calling ``notice(after, timeout)`` once a timer wait has lasted ``after`` s."""
    import queue

    from .clock import Clock, wake_up_wait

    class WatchedClock(Clock):
        """Real time; the first wait for a timer that lasts ``after`` seconds is reported."""

        def wait(self, get: Callable[..., Any], timeout: float | None, idle: bool) -> Any:
            if timeout is None or timeout <= after or self.told:
                return wake_up_wait(get, timeout)
            try:
                return wake_up_wait(get, after)
            except queue.Empty:
                pass
            self.told = True
            notice(after, timeout - after)
            return wake_up_wait(get, timeout - after)

        told = False

    return WatchedClock()


def within(seconds: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a helper thread; fail the test if it takes over ``seconds``.

    A flow that hangs (a deadlock in a task, or in a plugin under test) then
    fails its own test instead of stalling the whole suite.  Exceptions from
    ``fn`` are re-raised here.
    """
    import threading
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=body, name="flowdeco-within", daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not finish within {seconds}s"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.fixture
def flow_events() -> FlowEvents:
    """Audit events of the last ``flow_run`` in this test."""
    return FlowEvents()


@pytest.fixture
def flow_clock() -> FakeClock:
    """A :class:`flowdeco.FakeClock`: ``flow_run`` uses it, so retry back-off, delays
    and interval schedules finish instantly; ``flow_clock.advance(s)`` moves it."""
    from .clock import FakeClock
    return FakeClock()


@pytest.fixture
def flow_state(tmp_path: Path) -> Path:
    """A fresh state folder for tests of resume and run history."""
    path = tmp_path / "flowdeco-state"
    path.mkdir()
    return path


@pytest.fixture
def flow_run(request: pytest.FixtureRequest, flow_events: FlowEvents) -> FlowRunner:
    """Run a flow in-process: ``flow_run(target, override={...}, overrides={...}, **run_kwargs)``."""
    return FlowRunner(request, flow_events)


from .conformance import ExecutorConformance  # noqa: E402 - the suite executors subclass
