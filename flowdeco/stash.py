"""Typed keys for plugin state kept on ``config.stash`` and ``run.stash`` (like pytest's).

A plugin makes one module-level key per value it keeps::

    _UPLOADS = StashKey[Uploads]("flowdeco_dask.uploads")

    config.stash[_UPLOADS] = Uploads(client)   # a type checker knows the value's type
    uploads = config.stash.get(_UPLOADS)       # Uploads | None

Keys compare by identity, so two plugins never collide even with the same
label.  Both stashes stay plain dicts at run time (string keys keep working);
:class:`Stash` only adds the typed signatures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Generic, TypeVar, overload

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key for a value of type ``T`` in a :class:`Stash`; ``label`` only names it in reprs."""

    __slots__ = ("label",)

    def __init__(self, label: str = "") -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"StashKey({self.label!r})"


class Stash(Dict[Any, Any]):
    """A dict for plugins' state; reading it with a :class:`StashKey` is typed."""

    __slots__ = ()

    if TYPE_CHECKING:  # pragma: no cover - signatures for type checkers only
        @overload  # type: ignore[override]
        def __getitem__(self, key: StashKey[T]) -> T: ...
        @overload
        def __getitem__(self, key: Any) -> Any: ...
        def __getitem__(self, key: Any) -> Any: ...

        @overload  # type: ignore[override]
        def get(self, key: StashKey[T]) -> T | None: ...
        @overload
        def get(self, key: StashKey[T], default: D) -> T | D: ...
        @overload
        def get(self, key: Any, default: Any = None) -> Any: ...
        def get(self, key: Any, default: Any = None) -> Any: ...

        @overload  # type: ignore[override]
        def setdefault(self, key: StashKey[T], default: T) -> T: ...
        @overload
        def setdefault(self, key: Any, default: Any = None) -> Any: ...
        def setdefault(self, key: Any, default: Any = None) -> Any: ...

        @overload  # type: ignore[override]
        def pop(self, key: StashKey[T]) -> T: ...
        @overload
        def pop(self, key: StashKey[T], default: D) -> T | D: ...
        @overload
        def pop(self, key: Any, default: Any = ...) -> Any: ...
        def pop(self, key: Any, default: Any = ...) -> Any: ...
