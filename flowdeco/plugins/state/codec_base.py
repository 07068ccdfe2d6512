"""What the codec's two halves share: the tag key, the size limit, the error, class lookup.

:mod:`.codec` (encoding, :class:`~.codec.Codec`) and :mod:`.codec_decode`
(decoding) both use these; :mod:`.codec` re-exports the public ones.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable

TAG = "$t"


#: largest encoded result, in bytes (larger results fail the task; larger stored ones are refused)
MAX_RESULT_BYTES = 64 * 2**20


_HINT = ("register a hook with flowdeco.plugins.state.register_type(T, encode=..., decode=...) "
         "or return plain data")


_PATHS: dict[str, type] = {c.__name__: c for c in (
    pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.Path,
    pathlib.PosixPath, pathlib.WindowsPath)}


class Unstorable(Exception):
    """A value that cannot be stored; ``str()`` names the type, the path and the reason."""

    def __init__(self, type_name: str, reason: str):
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.path: list[str] = []

    def where(self) -> str:
        return "$" + "".join(reversed(self.path))

    def __str__(self) -> str:
        return f"{self.type_name} at {self.where()}: {self.reason}"


def type_name(t: type) -> str:
    mod = getattr(t, "__module__", "builtins")
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def _unstorable(v: Any, reason: str) -> Unstorable:
    return Unstorable(type_name(type(v)), reason)


def resolve_class(path: str) -> Any:
    """``module:Qualname`` among already imported modules, or None (never imports)."""
    mod_name, sep, qual = path.partition(":")
    if not sep or not qual:
        return None
    obj: Any = sys.modules.get(mod_name)
    if obj is None:
        return None
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _ClassCodec:
    """How one class is taken apart and rebuilt (cached per class)."""

    __slots__ = ("path", "kind", "unstructure", "structure", "cls")

    def __init__(self, cls: type, path: str, kind: str, unstructure: Callable[[Any], dict],
                 structure: Callable[[dict], Any]):
        self.cls = cls
        self.path = path
        self.kind = kind
        self.unstructure = unstructure
        self.structure = structure


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
