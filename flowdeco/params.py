"""Run parameters: which ones the tasks take, which are secret, and where values come from.

Run parameters reach a task through a parameter of the same name
(``def load(transform, table="events")``) or through ``ctx.params``.  A name
that no task takes is almost always a misspelling, and running anyway on the
default would be a silent mistake, so collection refuses it (exit 4) with a
"did you mean".  The rule, checked against the whole collected flow (``-k``
does not matter: a parameter of a deselected task is fine):

* a run parameter is *taken* when some task (or sub-flow task) has a
  parameter of that name that is not bound to another task;
* a task that reads ``ctx.params`` may take any name, so when one exists
  every name is accepted.  Whether a task reads ``ctx.params`` is read from
  its bytecode: ``ctx.log``/``ctx.run_id``/... only is not reading it;
  ``ctx.params``, or ``ctx`` handed to other code (a helper, a closure,
  ``getattr``), is (assumed) reading it.

A parameter annotated :class:`~flowdeco.Secret` (``token: Secret`` or
``Secret[str]``) anywhere in the flow, or named by ``--secret NAME``
(``run(secret=[...])``), is a secret of the run: its value is wrapped in
``Secret`` for every task and in ``ctx.params``, so it is masked wherever
flowdeco renders or records it.
"""

from __future__ import annotations

import os
import types
from typing import Any, Iterable, Mapping, MutableMapping

from .errors import UsageError, suggest
from .secret import Secret
from .task import CTX

#: set to False on a generated task function (a pipeline node) whose ctx never reads params
READS_PARAMS_ATTR = "__flowdeco_reads_params__"


# --------------------------------------------------------------------------- sources


def parse_param_env(pairs: Iterable[str] | None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``--param-env NAME=ENV_VAR``: the value of each environment variable, by parameter name.

    The value never appears on the command line (shell history, ``ps``).  A
    missing variable is a :class:`UsageError` naming it.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, var = pair.partition("=")
        name, var = name.strip(), var.strip()
        if not sep or not name.isidentifier() or not var or not _env_name(var):
            raise UsageError(
                f"--param-env {pair!r}: expected NAME=ENV_VAR, NAME a Python identifier and "
                "ENV_VAR the name of an environment variable")
        if var not in environ:
            raise UsageError(
                f"--param-env {name}={var}: environment variable {var} is not set "
                f"(export {var}=... before running, or give --param {name}=VALUE)")
        out[name] = environ[var]
    return out


def _env_name(var: str) -> bool:
    return all(c.isalnum() or c == "_" for c in var) and not var[0].isdigit()


def declare_secrets(params: MutableMapping[str, Any], names: Iterable[str] | None) -> None:
    """``--secret NAME``: wrap the value of each named parameter in :class:`Secret` (in place).

    Naming a parameter that was not given is a mistake (the value meant to be
    secret would otherwise be used in the clear under another name).
    """
    for name in names or ():
        if name not in params:
            hint = suggest(name, list(params))
            raise UsageError(
                f"--secret {name!r}: no run parameter of that name was given"
                + (f"; did you mean {hint[0]!r}?" if hint else
                   f" (give it with --param {name}=VALUE or --param-env {name}=ENV_VAR)"))
        if not isinstance(params[name], Secret):
            params[name] = Secret(params[name])


# --------------------------------------------------------------------------- annotations


def secret_annotation(annotation: Any) -> tuple[bool, Any]:
    """Whether ``annotation`` is ``Secret`` / ``Secret[T]`` (also as a string); and ``T``'s name."""
    if annotation is None:
        return False, None
    if annotation is Secret:
        return True, None
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        for prefix in ("flowdeco.Secret", "Secret"):
            if text == prefix:
                return True, None
            if text.startswith(prefix + "[") and text.endswith("]"):
                return True, text[len(prefix) + 1:-1]
        return False, None
    if getattr(annotation, "__origin__", None) is Secret:
        args = getattr(annotation, "__args__", ())
        inner = args[0] if args else None
        return True, getattr(inner, "__name__", None) if inner is not None else None
    return False, None


# --------------------------------------------------------------------------- what tasks take


def _task_vertices(graph: Any) -> Iterable[Any]:
    for v in graph.vertices:
        if v.spec is not None and v.kind == "task":
            yield v


def free_params(v: Any) -> list[Any]:
    """The :class:`~flowdeco.task.Param` s of task vertex ``v`` that are not bound to a task
    and are not ``ctx``: those a run parameter (or their default) fills."""
    bound = v.argnames
    return [p for p in v.spec.params if p.name != CTX and p.name not in bound]


def taken_names(graph: Any) -> set[str]:
    """The run parameter names some task of ``graph`` takes."""
    out: set[str] = set()
    for v in _task_vertices(graph):
        bound = v.argnames
        out.update(p.name for p in v.spec.params if p.name != CTX and p.name not in bound)
    return out


def reads_params(fn: Any) -> bool:
    """Whether task function ``fn`` may read ``ctx.params`` (see the module docstring).

    Conservative: anything it cannot see through (no bytecode, ``ctx`` passed
    on) counts as reading.  Only called when a run parameter is taken by no
    task, so a correct invocation never pays for it.
    """
    flag = getattr(fn, READS_PARAMS_ATTR, None)
    if flag is not None:
        return bool(flag)
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return True
    return _ctx_escapes(code)


def _ctx_escapes(code: types.CodeType) -> bool:
    """Whether ``ctx`` in ``code`` is used other than as ``ctx.<attribute other than params>``."""
    import dis  # only on the error path: keeps `import flowdeco` light

    instructions = list(dis.get_instructions(code))
    for i, ins in enumerate(instructions):
        if ins.opname == "LOAD_CLOSURE":
            continue  # building a closure: the nested code is scanned below
        if not (ins.opname.startswith("LOAD_FAST") or ins.opname == "LOAD_DEREF"):
            continue
        arg = ins.argval
        if arg != CTX:
            if isinstance(arg, tuple) and CTX in arg:
                return True  # two locals pushed at once (3.13+): ctx is an argument
            continue
        nxt = instructions[i + 1] if i + 1 < len(instructions) else None
        if nxt is None or nxt.opname not in ("LOAD_ATTR", "LOAD_METHOD"):
            return True
        if nxt.argval == "params":
            return True
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and CTX in const.co_freevars and _ctx_escapes(const):
            return True
    return False


def _ctx_readers(graph: Any) -> list[str]:
    names = []
    for v in _task_vertices(graph):
        spec = v.spec
        fns = [spec.fn] if v.wants_ctx else []
        if spec.when is not None and any(p.name == CTX for p in spec.when_params):
            fns.append(spec.when)
        if any(reads_params(fn) for fn in fns):
            names.append(v.name)
    return names


def check_params(graph: Any, params: Mapping[str, Any]) -> None:
    """Refuse run parameters that no task of ``graph`` takes (see the module docstring)."""
    if not params:
        return
    missing = set(params)
    for v in _task_vertices(graph):  # usually every name is found among the first tasks
        bound = v.argnames
        for p in v.spec.params:
            if p.name in missing and p.name not in bound:
                missing.discard(p.name)
        if not missing:
            return
    if _ctx_readers(graph):
        return
    taken = taken_names(graph)
    unknown = [n for n in params if n in missing]
    parts = []
    for name in unknown:
        hint = suggest(name, list(taken))
        parts.append(f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    head = (f"run parameter {parts[0]} is" if len(parts) == 1 else
            f"run parameters {', '.join(parts)} are")
    takes = (f"parameters its tasks take: {', '.join(sorted(taken))}" if taken
             else "its tasks take no run parameter")
    raise UsageError(f"{head} taken by no task of flow {graph.name!r} ({takes}; "
                     "a task reading ctx.params accepts any)")


def wrap_secrets(graph: Any, params: MutableMapping[str, Any]) -> None:
    """Wrap, in ``params`` (in place) and in every task's bound values, the run parameters
    annotated ``Secret`` in some task of ``graph``: one task's annotation protects them all.

    The graph builder already wrapped the values bound to annotated parameters
    (:func:`~flowdeco.graph.coerce_param`), so a ``Secret`` among the bound values
    of a parameter given in the clear names one.
    """
    names = {k for v in graph.vertices if v.consts for k, c in v.consts.items()
             if isinstance(c, Secret) and not isinstance(params.get(k), Secret)}
    if not names:
        return
    for n in names:
        params[n] = Secret(params[n])
    for v in _task_vertices(graph):
        consts = v.consts
        if consts and any(n in consts and not isinstance(consts[n], Secret) for n in names):
            v.consts = {k: (Secret(c) if k in names and not isinstance(c, Secret) else c)
                        for k, c in consts.items()}


def describe(graph: Any, params: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(name, state, tasks) for each parameter the tasks take: state is ``given``,
    ``default`` (every task taking it has a default) or ``unset`` (required, not given).
    Values are not shown: they may be secrets."""
    rows: dict[str, tuple[str, list[str]]] = {}
    for v in _task_vertices(graph):
        for p in free_params(v):
            state = "given" if p.name in params else "default" if p.has_default else "unset"
            old = rows.get(p.name)
            if old is None:
                rows[p.name] = (state, [v.name])
            else:
                worse = "unset" if "unset" in (old[0], state) else old[0]
                rows[p.name] = (worse, old[1] + [v.name])
    return [(n, s, t) for n, (s, t) in rows.items()]


def unset(graph: Any, params: Mapping[str, Any]) -> list[str]:
    """Required parameters that were not given (only in a graph built with ``unset_ok``)."""
    return [n for n, s, _ in describe(graph, params) if s == "unset"]


def scrub_options(option: Any, params: Mapping[str, Any]) -> None:
    """Mask secret values in the raw ``--param NAME=VALUE`` strings kept in the options,
    so no plugin that shows or records options can leak them."""
    pairs = getattr(option, "param", None)
    if not pairs:
        return
    secret = {n for n, v in params.items() if isinstance(v, Secret)}
    if secret:
        option.param = [f"{p.partition('=')[0].strip()}=***"
                        if p.partition("=")[0].strip() in secret else p for p in pairs]
