"""Source fingerprints: has a task's code changed since it completed?

A fingerprint is two short hex digests joined by a dot, ``CODE.INPUTS``:

- ``CODE`` hashes the task function's compiled code, recursively: bytecode,
  constants (nested functions, lambdas and comprehensions included), names,
  variable names, simple default values, and the ``@task`` options that
  shape the result (``every``, ``times``, plugin options).  It is computed
  from ``fn.__code__`` (no source files are read), so it is cheap, and it
  ignores line numbers and the docstring: moving a function or editing its
  docstring does not count as a change.  Functions wrapped with
  ``functools.wraps`` are hashed along the ``__wrapped__`` chain.  Options
  that do not change a completed result (``retries``, ``timeout``,
  ``priority``, ...) are left out.
- ``INPUTS`` hashes the run parameters bound to the task (``--param``).

What is not seen: code the task *calls* (helpers, libraries), global
variables and closure values.  ``--rerun TASK`` re-runs a task regardless.
Another Python version compiles different bytecode, so everything counts as
changed after an interpreter upgrade (safe, never stale).
"""

from __future__ import annotations

import hashlib
import weakref
from types import CodeType
from typing import Any

_SIMPLE = (str, bytes, int, float, complex, bool, type(None), type(Ellipsis))
#: @task options that change what a task returns (not just when it runs)
_OPTIONS = ("every", "times", "until", "map")
_FAST = frozenset({str, bytes, int, float, complex, bool, type(None), type(Ellipsis)})


def _stable(value: Any, depth: int = 0) -> str:
    """A repr that is the same in every process (sets sorted), or the type for other objects."""
    if isinstance(value, _SIMPLE):
        return repr(value)
    if depth < 8 and isinstance(value, (tuple, list)):
        return "(" + ",".join(_stable(v, depth + 1) for v in value) + ")"
    if depth < 8 and isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_stable(v, depth + 1) for v in value)) + "}"
    if depth < 8 and isinstance(value, dict):
        items = sorted((_stable(k, depth + 1), _stable(v, depth + 1)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, CodeType):
        h = hashlib.blake2b(digest_size=8)
        _hash_code(value, h)
        return "code:" + h.hexdigest()
    t = type(value)
    return f"<{t.__module__}.{t.__qualname__}>"


def _hash_code(code: CodeType, h: Any, doc: str | None = None) -> None:
    consts = code.co_consts
    if doc is not None and consts and consts[0] == doc:
        consts = consts[1:]  # the docstring is kept as the first constant
    if all(type(c) in _FAST for c in consts):
        shown = repr(consts)  # the common case: a repr that is stable across processes
    else:
        parts = []
        for c in consts:
            if isinstance(c, CodeType):
                _hash_code(c, h)
                parts.append("<code>")
            else:
                parts.append(_stable(c))
        shown = "\x00".join(parts)
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_argcount,
                   code.co_kwonlyargcount, code.co_flags, shown)).encode())


#: function -> (its code object, spec, digest): flows run again in one process (tests,
#: ``serve`` ticks) hash each function once; a replaced ``__code__`` is noticed
_CACHE: "weakref.WeakKeyDictionary[Any, tuple[Any, Any, str]]" = weakref.WeakKeyDictionary()


def code_digest(fn: Any, spec: Any = None) -> str:
    """The ``CODE`` half of a fingerprint for task function ``fn`` with its ``TaskSpec``."""
    code = getattr(fn, "__code__", None)
    try:
        hit = _CACHE.get(fn)
    except TypeError:  # not weakly referenceable
        hit = None
    if hit is not None and hit[0] is code and hit[1] is spec:
        return hit[2]
    digest = _code_digest(fn, spec)
    try:
        _CACHE[fn] = (code, spec, digest)
    except TypeError:
        pass
    return digest


def _code_digest(fn: Any, spec: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    seen = 0
    obj = fn
    while obj is not None and seen < 8:
        code = getattr(obj, "__code__", None)
        if code is None:
            call = getattr(type(obj), "__call__", None)
            code = getattr(call, "__code__", None)
            h.update(f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
        if isinstance(code, CodeType):
            doc = getattr(obj, "__doc__", None)
            _hash_code(code, h, doc if isinstance(doc, str) else None)
        defaults = getattr(obj, "__defaults__", None), getattr(obj, "__kwdefaults__", None)
        if defaults != (None, None):
            h.update(_stable(defaults).encode())
        obj = getattr(obj, "__wrapped__", None)
        seen += 1
    if spec is not None:
        shaping = [getattr(spec, k, None) for k in _OPTIONS]
        options = getattr(spec, "options", None)
        if options or shaping != [None] * len(_OPTIONS):
            h.update(_stable([shaping, dict(options or {})]).encode())
    return h.hexdigest()


def inputs_digest(consts: dict | None) -> str:
    """The ``INPUTS`` half: the run parameters bound to the task."""
    if not consts:
        return "0"
    h = hashlib.blake2b(digest_size=8)
    h.update(_stable(consts).encode())
    return h.hexdigest()


def fingerprint(fn: Any, spec: Any, consts: dict | None) -> str:
    return f"{code_digest(fn, spec)}.{inputs_digest(consts)}"


def why_changed(old: str, new: str) -> str | None:
    """``"source changed"``, ``"parameters changed"``, or None when equal."""
    if old == new:
        return None
    o_code, _, o_in = old.partition(".")
    n_code, _, n_in = new.partition(".")
    if o_code == n_code and o_in != n_in:
        return "parameters changed"
    return "source changed"
