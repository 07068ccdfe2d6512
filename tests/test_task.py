"""``@task``: declaration, validation, options handled by plugins, parameter injection."""

from __future__ import annotations

import pickle
from pathlib import Path

import attrs
import pytest

from flowdeco import (CollectionError, Flow, FlowError, MissingDependencyError, Secret,
                      TaskDefinitionError, TaskSpec, UsageError, task)
from flowdeco.context import Context
from flowdeco.testing import run_flow


@task
def module_level_source():
    return {"records": 3}


@task(priority=2, tags=["io"])
def module_level_double(module_level_source):
    return module_level_source["records"] * 2


# --------------------------------------------------------------------------- decoration


def test_bare_decorator_returns_the_function_unchanged():
    def f(x):
        return x + 1

    assert task(f) is f
    assert f(1) == 2
    spec = f.__flowdeco_task__
    assert isinstance(spec, TaskSpec)
    assert spec.fn is f
    assert spec.name == "f"
    assert spec.priority == 0
    assert spec.after == ()
    assert spec.tags == frozenset()


def test_decorator_with_parentheses_and_options():
    @task()
    def a():
        return 1

    @task(name="renamed", after=[a], priority=7, tags="slow")
    def b():
        return 2

    assert a() == 1 and b() == 2
    spec = b.__flowdeco_task__
    assert spec.name == "renamed"
    assert spec.after == (a,)
    assert spec.priority == 7
    assert spec.tags == frozenset({"slow"})


def test_after_accepts_a_single_function_or_name():
    @task
    def a():
        pass

    @task(after=a)
    def b():
        pass

    @task(after="a")
    def c():
        pass

    assert b.__flowdeco_task__.after == (a,)
    assert c.__flowdeco_task__.after == ("a",)


def test_decorated_function_still_works_as_plain_function():
    assert module_level_double({"records": 5}) == 10
    assert module_level_source() == {"records": 3}


def test_decorated_function_is_picklable_by_reference():
    again = pickle.loads(pickle.dumps(module_level_double))
    assert again is module_level_double
    assert again({"records": 1}) == 2


def test_spec_is_frozen():
    spec = module_level_double.__flowdeco_task__
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.priority = 3  # type: ignore[misc]
    assert spec.tags == frozenset({"io"})


def test_spec_records_parameters():
    @task
    def f(a, ctx, b=3, *args, **kwargs):
        pass

    params = {p.name: p for p in f.__flowdeco_task__.params}
    assert list(params) == ["a", "ctx", "b"]
    assert params["b"].has_default and params["b"].default == 3
    assert not params["a"].has_default


def test_task_definition_error_is_a_flow_error():
    assert issubclass(TaskDefinitionError, CollectionError)
    assert issubclass(TaskDefinitionError, FlowError)


@pytest.mark.parametrize("kwargs, words", [
    (dict(retries=1, retry=object()), ["retries", "retry"]),
    (dict(retries=-1), ["retries"]),
    (dict(retries=1.5), ["retries"]),
    (dict(retries=True), ["retries"]),
    (dict(times=3), ["times", "every"]),
    (dict(every=1.0, times=0), ["times"]),
    (dict(every=0), ["every"]),
    (dict(every=-1.0), ["every"]),
    (dict(timeout=0), ["timeout"]),
    (dict(timeout="5"), ["timeout"]),
    (dict(delay=-0.5), ["delay"]),
    (dict(priority="high"), ["priority"]),
    (dict(priority=1.5), ["priority"]),
    (dict(tags=[1, 2]), ["tags"]),
    (dict(after=[42]), ["after"]),
    (dict(name="a.b"), ["'.'"]),
    (dict(name="a[0]"), ["'['"]),
    (dict(name=""), ["name"]),
])
def test_invalid_options_raise_at_decoration(kwargs, words):
    def my_task():
        pass

    with pytest.raises(TaskDefinitionError) as info:
        task(**kwargs)(my_task)
    msg = str(info.value)
    for w in words:
        assert w in msg
    assert not hasattr(my_task, "__flowdeco_task__")


def test_valid_edge_options_are_accepted():
    @task(retries=0, delay=0, every=0.5, times=1, priority=-3, timeout=1)
    def f():
        pass

    spec = f.__flowdeco_task__
    assert spec.retries == 0
    assert spec.delay == 0.0
    assert spec.every == 0.5 and spec.times == 1
    assert spec.priority == -3


def test_name_given_positionally_is_refused():
    with pytest.raises(TaskDefinitionError, match="name="):
        @task("load")
        def load():
            pass


def test_flow_task_name_given_positionally_is_refused():
    flow = Flow("f")
    with pytest.raises(TaskDefinitionError, match="name="):
        @flow.task("x")
        def x():
            pass


@pytest.mark.parametrize("thing", [5, "not callable".split(), int])
def test_non_function_is_refused(thing):
    with pytest.raises(TaskDefinitionError):
        task(thing)


def test_lambda_needs_a_name():
    with pytest.raises(TaskDefinitionError, match="name"):
        task(lambda: 1)
    fn = task(name="ok")(lambda: 1)
    assert fn.__flowdeco_task__.name == "ok"


def test_positional_only_parameter_is_refused():
    def f(a, /):
        pass

    with pytest.raises(TaskDefinitionError, match="positional-only"):
        task(f)


def test_flow_name_is_validated():
    with pytest.raises(TaskDefinitionError):
        Flow("a.b")


# --------------------------------------------------------------------------- plugin options

# option -> built-in plugin expected to provide it (contract §5 plugin names);
# they are disabled so the test holds whether or not the plugin exists yet.
_PLUGIN_FOR = {
    "retries": ("retry", dict(retries=2)),
    "retry": ("retry", dict(retry=object())),
    "timeout": ("timeout", dict(timeout=5.0)),
    "delay": ("timers", dict(delay=1.0)),
    "every": ("timers", dict(every=1.0, times=2)),
    "circuit": ("circuit", dict(circuit="api")),
}


@pytest.mark.parametrize("option", sorted(_PLUGIN_FOR))
def test_option_without_active_plugin_is_a_collection_error(option):
    plugin, kwargs = _PLUGIN_FOR[option]
    ran = []

    @task(**kwargs)
    def fancy_task():
        ran.append(1)

    with pytest.raises(CollectionError) as info:
        run_flow([fancy_task], disable=[plugin])
    msg = str(info.value)
    assert "fancy_task" in msg
    assert option in msg
    assert ran == []


def test_unknown_plugin_option_is_a_collection_error():
    @task(frobnicate=3)
    def weird():
        pass

    assert weird.__flowdeco_task__.options == {"frobnicate": 3}
    with pytest.raises(CollectionError) as info:
        run_flow([weird])
    assert "weird" in str(info.value) and "frobnicate" in str(info.value)


# --------------------------------------------------------------------------- injection


def test_data_dependency_receives_result():
    @task
    def extract():
        return {"records": 1000}

    @task
    def transform(extract):
        return {"processed": extract["records"] * 2}

    result = run_flow([extract, transform])
    assert result.ok
    assert result.results == {"extract": {"records": 1000}, "transform": {"processed": 2000}}


def test_ctx_receives_a_context():
    seen = {}

    @task
    def first(ctx):
        seen["ctx"] = ctx
        seen["fields"] = (ctx.run_id, ctx.task, ctx.attempt, ctx.iteration, dict(ctx.params))
        ctx.log.info("hello", n=1)  # a structlog logger; must not raise
        return 1

    result = run_flow([first], run_id="ctx-run", params={"day": "mon"})
    assert result.ok, result.outcomes
    assert isinstance(seen["ctx"], Context)
    assert seen["fields"] == ("ctx-run", "first", 1, None, {"day": "mon"})
    assert isinstance(seen["ctx"].task, str)


def test_run_param_is_injected():
    @task
    def report(day):
        return f"report for {day}"

    result = run_flow([report], params={"day": "2026-01-01"})
    assert result.results["report"] == "report for 2026-01-01"


@pytest.mark.parametrize("annotation, text, expected", [
    (int, "42", 42),
    (float, "2.5", 2.5),
    (bool, "true", True),
    (bool, "yes", True),
    (bool, "1", True),
    (bool, "false", False),
    (bool, "no", False),
    (bool, "0", False),
    (Path, "data/in.csv", Path("data/in.csv")),
    (str, "007", "007"),
])
def test_run_param_is_converted_by_annotation(annotation, text, expected):
    def typed(value):
        return value

    typed.__annotations__["value"] = annotation
    task(typed)
    result = run_flow([typed], params={"value": text})
    got = result.results["typed"]
    assert got == expected
    assert type(got) is type(expected)


def test_unannotated_run_param_stays_a_string():
    @task
    def f(n):
        return n

    assert run_flow([f], params={"n": "3"}).results["f"] == "3"


def test_non_string_run_param_is_passed_as_is():
    @task
    def f(n: int):
        return n

    obj = [1, 2]

    @task
    def g(items: list):
        return items

    assert run_flow([f], params={"n": 5}).results["f"] == 5
    assert run_flow([g], params={"items": obj}).results["g"] is obj


def test_string_annotations_are_converted(write_module):
    path = write_module("""
        from __future__ import annotations
        from flowdeco import task

        @task
        def scaled(n: int, factor: float, flag: bool):
            return (n * 2, factor, flag)
    """)
    result = run_flow(path, params={"n": "3", "factor": "0.5", "flag": "off"})
    assert result.results["scaled"] == (6, 0.5, False)


@pytest.mark.parametrize("annotation, text", [(int, "abc"), (float, "x1"), (bool, "maybe")])
def test_bad_run_param_value_is_a_usage_error(annotation, text):
    ran = []

    def typed(count):
        ran.append(count)

    typed.__annotations__["count"] = annotation
    task(typed)
    with pytest.raises(UsageError) as info:
        run_flow([typed], params={"count": text})
    assert "count" in str(info.value)
    assert ran == []


def test_default_is_kept_when_nothing_matches():
    @task
    def f(limit=10, label="x"):
        return (limit, label)

    assert run_flow([f]).results["f"] == (10, "x")


def test_run_param_overrides_default():
    @task
    def f(limit: int = 10):
        return limit

    assert run_flow([f], params={"limit": "3"}).results["f"] == 3


def test_unknown_parameter_is_missing_dependency_with_suggestion():
    ran = []

    @task
    def extract():
        ran.append("extract")
        return 1

    @task
    def transform(extrct):
        ran.append("transform")

    with pytest.raises(MissingDependencyError) as info:
        run_flow([extract, transform])
    err = info.value
    msg = str(err)
    assert "transform" in msg and "extrct" in msg and "extract" in msg
    assert err.task == "transform"
    assert err.name == "extrct"
    assert "extract" in err.suggestions
    assert isinstance(err, FlowError)
    assert ran == []  # graph errors are raised before anything runs


def test_secret_param_is_masked_and_revealed():
    seen = {}

    @task
    def fetch(token):
        seen["token"] = token
        return token.reveal()

    result = run_flow([fetch], params={"token": Secret("s3cr3t")})
    assert result.results["fetch"] == "s3cr3t"
    tok = seen["token"]
    assert isinstance(tok, Secret)
    for text in (str(tok), repr(tok), f"{tok}", f"{tok:>20}", "%s" % tok, format(tok, "")):
        assert "s3cr3t" not in text
    assert "***" in str(tok)
    assert tok == Secret("s3cr3t")
    assert tok != Secret("other")
    assert pickle.loads(pickle.dumps(tok)).reveal() == "s3cr3t"


def test_decorating_leaves_no_empty_annotations_dict_on_the_function():
    """Reading ``__annotations__`` of an unannotated function makes (and keeps) an empty
    dict on it, 64 bytes per task at 100,000 tasks; the decorator must give it back."""
    import gc

    def plain(a, b):
        return a + b

    def annotated(a: int) -> int:
        return a

    task(plain)
    task(annotated)
    assert not [r for r in gc.get_referents(plain) if type(r) is dict and not r]
    want = dict(annotated.__annotations__)  # (strings under ``from __future__ import annotations``)
    assert want and annotated.__flowdeco_task__.params[0].annotation == want["a"]
    assert plain.__flowdeco_task__.params[0].annotation is None


def test_positional_only_where_a_call_by_position_binds_like_one_by_name():
    """``TaskSpec.positional`` lets the sync in-order path call ``fn(*results)``: only for
    a plain function whose parameters are exactly its dependencies, in order."""
    import functools

    def plain(a, b):
        return (a, b)

    def with_ctx(ctx, a):
        return a

    def kw_only(a, *, b):
        return (a, b)

    def with_default(a, b=2):
        return (a, b)

    def star(a, *rest, **kw):
        return (a, rest, kw)

    def inner(a, b):
        return (a, b)

    @functools.wraps(inner)
    def wrapped(*args, **kwargs):  # its signature is inner's: keywords must reach it as such
        return inner(**kwargs)

    class Callable:
        def __call__(self, a):
            return a

    specs = {"plain": task(plain), "with_ctx": task(with_ctx), "kw_only": task(kw_only),
             "with_default": task(with_default), "star": task(star),
             "wrapped": task(wrapped), "object": task(name="obj")(Callable())}
    got = {k: f.__flowdeco_task__.positional for k, f in specs.items()}
    assert got == {"plain": True, "with_ctx": False, "kw_only": False, "with_default": True,
                   "star": True, "wrapped": False, "object": False}


def test_sync_run_calls_by_position_and_by_name_alike():
    """The same flow gives the same results whichever way each task is called: functions
    taking their results by position, ctx, a wrapped function and a default left alone."""
    import functools

    def pass_kwargs(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            assert not args, "flowdeco passes a wrapped function's arguments by name"
            return fn(**kwargs)
        return wrapper

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1

    @task
    def c(b, a):
        return (b, a)

    @task
    def d(c, b, a, ctx):
        return (c, b, a, ctx.task)

    @task
    @pass_kwargs
    def e(a, c):
        return (a, c)

    @task
    def f(e, a, missing=7):
        return (e, a, missing)

    @task
    def g(a, b, c, e):
        return (a, b, c, e)

    result = run_flow([a, b, c, d, e, f, g], executor="sync")
    assert result.ok, result.failed()
    assert result.results == {
        "a": 1, "b": 2, "c": (2, 1), "d": ((2, 1), 2, 1, "d"), "e": (1, (2, 1)),
        "f": ((1, (2, 1)), 1, 7), "g": (1, 2, (2, 1), (1, (2, 1)))}
