"""Result serializers: how a value that is not stored as JSON in its row becomes a file.

A :class:`Serializer` names a format (``"parquet"``), says which values it
takes (a type, tested with ``isinstance``, or a predicate), writes a value to a
binary file object (``dump(value, fh)``) and reads it back (``load(fh)``).
``safe`` says whether loading can run code: ``pickle`` is not safe, and an
unsafe serializer is never chosen by ``store="auto"``.

Built-ins (third-party libraries are imported only when a value of theirs is
stored or loaded, so none of them is needed to use flowdeco):

============  ===============================  ==================================
name          values                           file
============  ===============================  ==================================
``bytes``     ``bytes``, ``bytearray``           the raw bytes (written in slices)
``text``      ``str``                          UTF-8 (lone surrogates kept)
``parquet``   ``pandas.DataFrame``             Parquet through pyarrow
``polars``    ``polars.DataFrame``             Parquet (polars' own writer)
``npy``       ``numpy.ndarray``                ``.npy``, ``allow_pickle=False``
``pickle``    anything picklable (opt-in)      ``pickle`` protocol 5 (unsafe)
============  ===============================  ==================================

``store="auto"`` (the default) keeps JSON-able values in the row and writes
``bytes``/``str`` of :data:`FILE_THRESHOLD` bytes or more, DataFrames and
arrays to files (JSON text that large goes to a ``.json`` file).  Plugins add
formats with :func:`register_serializer` or the ``flowdeco_result_serializers``
hook (see :mod:`.hookspecs`).
"""

from __future__ import annotations

import pickle
import re
import sys
import threading
from typing import IO, Any, Callable, Iterable

__all__ = ["Serializer", "Registry", "register_serializer", "default_registry", "FILE_THRESHOLD",
           "MissingExtra", "BUILTIN_NAMES"]

#: ``bytes``/``str`` results of at least this many bytes (characters), and JSON text
#: this long, are written to a file instead of the task's row
FILE_THRESHOLD = 2**20
#: what a stored file's name may end with
_SUFFIX_RE = re.compile(r"(\.[A-Za-z0-9]{1,16})?")
_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
#: names ``store=`` takes besides serializer names
RESERVED = ("auto", "json")
#: how many bytes one write or hash step handles (keeps a copy of a slice small)
CHUNK = 1 << 20


class MissingExtra(ImportError):
    """A serializer needs a library that is not installed; says which extra to install."""


class Serializer:
    """One format for result files (see the module docstring)."""

    __slots__ = ("name", "types", "predicate", "dump", "load", "suffix", "safe", "builtin")

    def __init__(self, name: str, accepts: Any, dump: Callable[[Any, IO[bytes]], None],
                 load: Callable[[IO[bytes]], Any], suffix: str = "", *, safe: bool = True,
                 builtin: bool = False):
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in RESERVED:
            raise ValueError(f"serializer name {name!r}: use lowercase letters, digits, '_' and "
                             f"'-' (not {' or '.join(map(repr, RESERVED))})")
        if not isinstance(suffix, str) or not _SUFFIX_RE.fullmatch(suffix):
            raise ValueError(f"serializer {name!r}: suffix {suffix!r} must be '' or like '.npy'")
        if not callable(dump) or not callable(load):
            raise TypeError(f"serializer {name!r}: dump and load must be callables")
        self.name = name
        #: classes whose instances it takes (isinstance), or () when ``predicate`` decides
        self.types: tuple[type, ...] | Callable[[type], bool] = ()
        self.predicate: Callable[[Any], bool] | None = None
        if isinstance(accepts, type):
            self.types = (accepts,)
        elif isinstance(accepts, tuple) and accepts and all(isinstance(t, type) for t in accepts):
            self.types = accepts
        elif callable(accepts):
            self.predicate = accepts
        else:
            raise TypeError(f"serializer {name!r}: accepts must be a class, a tuple of classes "
                            f"or a predicate, got {accepts!r}")
        self.dump = dump
        self.load = load
        self.suffix = suffix
        self.safe = bool(safe)
        self.builtin = builtin

    def accepts(self, value: Any) -> bool:
        if self.predicate is not None:
            try:
                return bool(self.predicate(value))
            except Exception:  # noqa: BLE001 - a plugin's predicate: it just does not match
                return False
        types = self.types
        if callable(types):  # a built-in's lazy test of the class
            return bool(types(type(value)))
        return isinstance(value, types)

    def __repr__(self) -> str:
        return f"<Serializer {self.name}{'' if self.safe else ' (unsafe)'}>"


class Registry:
    """The serializers one session can use, by name; picks one for ``store="auto"``."""

    def __init__(self, serializers: Iterable[Serializer] = ()):
        self._by_name: dict[str, Serializer] = {}
        self._lock = threading.Lock()
        #: exact class -> the serializer ``auto`` picks for it (None: JSON); class tests only
        self._auto_cache: dict[type, Serializer | None] = {}
        self._predicates: tuple[Serializer, ...] = ()
        for s in serializers:
            self.add(s)

    def add(self, serializer: Serializer) -> None:
        """Add (or replace, by name) a serializer; later ones win ``auto`` ties."""
        with self._lock:
            self._by_name.pop(serializer.name, None)
            self._by_name[serializer.name] = serializer
            self._auto_cache = {}
            self._predicates = tuple(s for s in reversed(self._by_name.values())
                                     if s.safe and s.predicate is not None)

    def copy(self) -> "Registry":
        return Registry(self._by_name.values())

    def get(self, name: str) -> Serializer | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def choices(self) -> str:
        """The ``store=`` values, for messages."""
        return ", ".join(["auto", "json", *self._by_name]) + " or False"

    def auto(self, value: Any) -> Serializer | None:
        """The safe serializer ``store="auto"`` writes ``value`` with; None: JSON in the row."""
        t = type(value)
        if t is str or t is bytes or t is bytearray:
            if len(value) < FILE_THRESHOLD:
                return None
            return self._by_name.get("text" if t is str else "bytes")
        if t is dict or t is list or t is int or t is float or t is tuple or value is None \
                or t is bool:
            return None  # (JSON containers: no serializer takes them whole)
        for s in self._predicates:  # plugins' predicates: value by value
            if s.accepts(value):
                return s
        try:
            return self._auto_cache[t]
        except KeyError:
            pass
        found = None
        for s in reversed(list(self._by_name.values())):  # the latest registered first
            if not s.safe or s.predicate is not None:
                continue
            if s.types and (s.types(t) if callable(s.types) else issubclass(t, s.types)):
                found = s
                break
        self._auto_cache[t] = found
        return found


# --------------------------------------------------------------------------- built-ins


def _module_class(module: str, name: str) -> Callable[[type], bool]:
    """Whether a class is exactly ``module.name`` (never imports: no value of it exists
    before its module is imported)."""
    def test(t: type) -> bool:
        mod = sys.modules.get(module)
        return mod is not None and t is getattr(mod, name, None)
    return test


def _need(module: str, extra: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise MissingExtra(f"{what} needs {module.partition('.')[0]}: install it with "
                           f"pip install 'flowdeco[{extra}]'") from None


def _write_bytes(value: Any, fh: IO[bytes]) -> None:
    view = memoryview(value)
    for i in range(0, len(view), CHUNK):
        fh.write(view[i:i + CHUNK])


def _write_text(value: str, fh: IO[bytes]) -> None:
    # slice by slice: the encoded copy of one slice at a time, never of the whole string
    for i in range(0, len(value), CHUNK):
        fh.write(value[i:i + CHUNK].encode("utf-8", "surrogatepass"))


def _read_text(fh: IO[bytes]) -> str:
    return fh.read().decode("utf-8", "surrogatepass")


def _read_bytes(fh: IO[bytes]) -> Any:
    return fh.read()


def _read_bytearray(fh: IO[bytes]) -> bytearray:
    size = fh.seek(0, 2)
    fh.seek(0)
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError("the file is shorter than it was")
        got += n
    return buf


def _pandas_dump(value: Any, fh: IO[bytes]) -> None:
    pq = _need("pyarrow.parquet", "dataframes", "storing a pandas DataFrame")
    pa = sys.modules["pyarrow"]
    pq.write_table(pa.Table.from_pandas(value, preserve_index=None), fh)


def _pandas_load(fh: IO[bytes]) -> Any:
    _need("pandas", "dataframes", "loading a pandas DataFrame")
    pq = _need("pyarrow.parquet", "dataframes", "loading a pandas DataFrame")
    return pq.read_table(fh).to_pandas()


def _polars_dump(value: Any, fh: IO[bytes]) -> None:
    value.write_parquet(fh)


def _polars_load(fh: IO[bytes]) -> Any:
    pl = _need("polars", "polars", "loading a polars DataFrame")
    return pl.read_parquet(fh)


def _npy_dump(value: Any, fh: IO[bytes]) -> None:
    np = _need("numpy", "dataframes", "storing a NumPy array")
    if value.dtype.hasobject:
        raise TypeError("an array of Python objects (dtype=object) has no .npy form without "
                        "pickle; convert it to a numeric or string dtype")
    np.save(fh, value, allow_pickle=False)


def _npy_load(fh: IO[bytes]) -> Any:
    np = _need("numpy", "dataframes", "loading a NumPy array")
    return np.load(fh, allow_pickle=False)


def _pickle_dump(value: Any, fh: IO[bytes]) -> None:
    pickle.dump(value, fh, protocol=5)


def _pickle_load(fh: IO[bytes]) -> Any:
    return pickle.load(fh)


def _builtins() -> list[Serializer]:
    return [
        Serializer("pickle", lambda v: True, _pickle_dump, _pickle_load, ".pkl", safe=False,
                   builtin=True),
        Serializer("bytes", bytes, _write_bytes, _read_bytes, ".bin", builtin=True),
        Serializer("bytearray", bytearray, _write_bytes, _read_bytearray, ".bin", builtin=True),
        Serializer("text", str, _write_text, _read_text, ".txt", builtin=True),
        _lazy("npy", "numpy", "ndarray", _npy_dump, _npy_load, ".npy"),
        _lazy("polars", "polars", "DataFrame", _polars_dump, _polars_load, ".parquet"),
        _lazy("parquet", "pandas", "DataFrame", _pandas_dump, _pandas_load, ".parquet"),
    ]


def _lazy(name: str, module: str, cls: str, dump: Any, load: Any, suffix: str) -> Serializer:
    s = Serializer(name, object, dump, load, suffix, builtin=True)
    s.types = _module_class(module, cls)
    return s


#: names of the built-in serializers
BUILTIN_NAMES = tuple(s.name for s in _builtins())

#: the process-wide registry: built-ins and :func:`register_serializer`'s additions
default_registry = Registry(_builtins())


def register_serializer(name: str, type_or_predicate: Any,
                        dump: Callable[[Any, IO[bytes]], None], load: Callable[[IO[bytes]], Any],
                        suffix: str = "", *, safe: bool = True) -> Serializer:
    """Teach the state store a file format for results.

    ``type_or_predicate``: a class (or tuple of classes, tested with
    ``isinstance``) or a function of the value; ``dump(value, fh)`` writes
    to a binary file object, ``load(fh)`` reads it back; ``suffix`` ends
    the file's name (``".onnx"``).  ``safe=False`` marks a format whose
    loading can run code (like pickle): it is used only when a task names
    it (``@task(store="NAME")``), never by ``store="auto"``.  Registering
    a name again replaces it; a safe serializer registered later wins
    ``auto`` over earlier ones and the built-ins.
    """
    s = Serializer(name, type_or_predicate, dump, load, suffix, safe=safe)
    default_registry.add(s)
    return s
