"""``Secret``: a value that is masked wherever flowdeco renders or records it."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")

MASK = "***"


class Secret(Generic[T]):
    """Wrap a sensitive value (a token, a password) so logs never show it.

    The audit trail and the console print ``***`` for a ``Secret`` anywhere in
    an event (also nested in lists and dicts), and ``str``/``repr``/``format``
    never reveal it.  Call :meth:`reveal` where the real value is needed::

        @task
        def fetch(token: Secret):    # --param token=... / --param-env token=API_TOKEN
            return get(url, auth=token.reveal())

    A run parameter taken by a parameter annotated ``Secret`` (or ``Secret[int]``,
    converted inside the wrapper) in any task, or named by ``--secret NAME``, is
    wrapped for every task and in ``ctx.params`` (see :mod:`flowdeco.params`).
    """

    __slots__ = ("_value",)

    def __init__(self, value: T):
        self._value = value

    def reveal(self) -> T:
        """The wrapped value.  Keep it out of logs."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        return (Secret, (self._value,))


def mask(value: Any) -> Any:
    """``value`` with every ``Secret`` inside it (lists, tuples, dicts, sets) replaced by ``***``."""
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, dict):
        return {mask(k): mask(v) for k, v in value.items()}
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(mask(v) for v in value)
    if isinstance(value, (list, tuple)):  # subclasses such as namedtuples
        return [mask(v) for v in value]
    return value
