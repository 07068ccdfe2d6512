"""Task results as JSON, never pickle: a tagged encoding with strict rules.

A value is encoded by its *exact runtime type*, recursively (a subclass of a
built-in type is not the built-in type):

==========================================  ==============================================
value                                       stored as
==========================================  ==============================================
None, bool, int, str, finite float          itself
list                                        a JSON array
dict whose keys are all str (none ``$t``)   a JSON object
tuple, set, frozenset                       ``{"$t": "tuple", "v": [...]}`` (same for sets)
any other dict (int keys, tuple keys, ...)  ``{"$t": "dict", "v": [[key, value], ...]}``
datetime, date, time                        ``{"$t": "datetime", "v": "<ISO 8601>"}``;
                                            ``tzinfo`` must be None or a fixed
                                            ``datetime.timezone`` (convert zoneinfo to UTC)
timedelta                                   ``{"$t": "timedelta", "v": [days, s, us]}``
Decimal, UUID, complex, bytes, bytearray,   ``{"$t": "decimal", "v": "1.10"}``, ...
pathlib paths
Enum members (IntEnum, Flag, ...)           ``{"$t": "enum", "c": "module:Qualname", "v": name}``
attrs classes, dataclasses, namedtuples     ``{"$t": "obj", "c": "module:Qualname",
                                            "v": {field: value}}``
a type registered with :func:`register_type`  ``{"$t": "custom", "c": name, "v": ...}``
==========================================  ==============================================

attrs classes and dataclasses are taken apart and rebuilt by a private
``cattrs.Converter`` (fields with ``init=False`` are recomputed by the class,
private ``_x`` attributes map to ``x=`` arguments); their field *values* follow
the table above, whatever the annotations say, so a tuple in a field comes
back a tuple.

Storing is strict: the encoded value is decoded again and must compare equal
to the original (``==``) with the same type, so nothing is silently changed.
NaN and infinity (``allow_nan=False``), classes defined inside a function,
objects without value equality, cycles, and every type not in the table
cannot be stored: :class:`Unstorable` says which type, where (``$.rows[3]``),
and how to register a hook.  Loading is strict as well: unknown tags, extra
keys, wrong types and classes that are not already imported raise
:class:`~flowdeco.StateError` (a stored result never imports a module).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import pathlib
import sys
import uuid
from typing import Any, Callable

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from ...errors import StateError

__all__ = ["Codec", "Unstorable", "register_type", "default_codec", "MAX_RESULT_BYTES"]

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


class Codec:
    """Encodes values to JSON text and back; see the module docstring for the rules."""

    def __init__(self) -> None:
        # A converter for taking attrs classes and dataclasses apart and putting them
        # together: every field value passes through unchanged (our walk encodes it).
        conv = cattrs.Converter()
        conv.register_structure_hook_func(lambda t: True, lambda v, t: v)
        conv.register_unstructure_hook_func(lambda t: True, lambda v: v)
        self._converter = conv
        self._classes: dict[type, _ClassCodec | None] = {}
        self._by_path: dict[tuple[str, str], _ClassCodec] = {}
        self._custom: dict[type, tuple[str, Callable[[Any], Any]]] = {}
        self._custom_names: dict[str, tuple[type, Callable[[Any], Any]]] = {}
        self._encoders: dict[type, Callable[[Any], Any]] = {
            list: self._enc_list, dict: self._enc_dict, tuple: self._enc_seq("tuple"),
            set: self._enc_set("set"), frozenset: self._enc_set("frozenset"),
            _dt.datetime: self._enc_dt("datetime"), _dt.time: self._enc_dt("time"),
            _dt.date: lambda v: {TAG: "date", "v": v.isoformat()},
            _dt.timedelta: lambda v: {TAG: "timedelta", "v": [v.days, v.seconds, v.microseconds]},
            decimal.Decimal: lambda v: {TAG: "decimal", "v": str(v)},
            uuid.UUID: lambda v: {TAG: "uuid", "v": str(v)},
            complex: self._enc_complex,
            bytes: lambda v: {TAG: "bytes", "v": base64.b64encode(v).decode("ascii")},
            bytearray: lambda v: {TAG: "bytearray", "v": base64.b64encode(v).decode("ascii")},
        }
        for cls in _PATHS.values():
            self._encoders[cls] = lambda v: {TAG: "path", "c": type(v).__name__, "v": str(v)}

    # ------------------------------------------------------------------ registry

    def register_type(self, cls: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any],
                      *, name: str | None = None) -> None:
        """Store instances of exactly ``cls`` as ``encode(obj)`` and load them with ``decode``.

        ``encode`` returns any storable value (it is encoded by the same rules);
        ``decode`` receives that value back and returns the object.  ``name``
        (default ``module:Qualname``) is what the stored record refers to, so
        keep it stable.  Registering a class again replaces its hooks.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register_type: expected a class, got {cls!r}")
        if not callable(encode) or not callable(decode):
            raise TypeError("register_type: encode and decode must be callables")
        key = name if name is not None else f"{cls.__module__}:{cls.__qualname__}"
        old = self._custom.get(cls)
        if old is not None:
            self._custom_names.pop(old[0], None)
        self._custom[cls] = (key, encode)
        self._custom_names[key] = (cls, decode)

    # ------------------------------------------------------------------ encoding

    def dumps(self, value: Any, limit: int | None = MAX_RESULT_BYTES) -> str:
        """JSON text for ``value``; raises :class:`Unstorable` when it cannot be stored exactly.

        ``limit``: the largest text in bytes (None: no limit, the text goes to a file).
        """
        t = type(value)
        if t is int:
            text = _dumps_plain(value) if value.bit_length() > 10_000 else int.__repr__(value)
        elif value is None or t is bool:
            text = "null" if value is None else "true" if value else "false"
        elif t is str:
            text = _dumps_plain(value)
        elif t is float:
            self._enc_float(value)
            text = repr(value)
        else:
            try:
                tree = self._enc(value)
            except RecursionError:
                raise _unstorable(value, "nested too deeply, or it contains itself") from None
            try:
                back = self.decode(tree)
                same = type(back) is t and bool(back == value)
            except StateError as exc:
                raise _unstorable(value, f"it would not load back: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a foreign __eq__ may raise anything
                raise _unstorable(value, f"comparing it with its loaded copy raised "
                                         f"{type(exc).__name__}: {exc}") from None
            if not same:
                raise _unstorable(value, "it does not come back equal after a round trip "
                                         "(does it define value equality?)")
            text = _dumps_plain(tree)
        if not text.isascii():  # O(1) for ASCII text: CPython keeps the flag
            _check_utf8(value, text)
        if limit is not None and len(text) > limit // 4 and len(text.encode("utf-8")) > limit:
            raise _unstorable(value, f"its JSON form is larger than {limit} bytes")
        return text

    def encode(self, value: Any) -> Any:
        """The JSON-ready tree for ``value`` (no round-trip check)."""
        return self._enc(value)

    def _enc(self, v: Any) -> Any:
        t = type(v)
        if t is str or t is int or t is bool or v is None:
            return v
        if t is float:
            return self._enc_float(v)
        enc = self._encoders.get(t)
        if enc is not None:
            return enc(v)
        custom = self._custom.get(t)
        if custom is not None:
            name, fn = custom
            try:
                raw = fn(v)
            except Exception as exc:  # noqa: BLE001 - a user hook
                raise _unstorable(v, f"its encode hook raised {type(exc).__name__}: "
                                     f"{exc}") from None
            try:
                return {TAG: "custom", "c": name, "v": self._enc(raw)}
            except Unstorable as exc:
                exc.path.append(f"<{name}>")
                raise
        cc = self._classes.get(t, False)
        if cc is False:
            cc = self._class_codec(t)
        if cc is None:
            raise _unstorable(v, f"no JSON form for this type; {_HINT}")
        if cc.kind == "enum":
            return {TAG: "enum", "c": cc.path, "v": v.name}
        return {TAG: "obj", "c": cc.path, "v": self._enc_fields(cc.unstructure(v))}

    def _enc_float(self, v: float) -> float:
        if math.isfinite(v):
            return v
        raise Unstorable("float", f"{v!r} is not JSON (NaN and infinity are refused)")

    def _enc_list(self, v: list) -> list:
        out = []
        enc = self._enc
        for i, x in enumerate(v):
            try:
                out.append(enc(x))
            except Unstorable as exc:
                exc.path.append(f"[{i}]")
                raise
        return out

    def _enc_seq(self, tag: str) -> Callable[[Any], dict]:
        return lambda v: {TAG: tag, "v": self._enc_list(v)}  # type: ignore[arg-type]

    def _enc_set(self, tag: str) -> Callable[[Any], dict]:
        def enc(v: Any) -> dict:
            items = list(v)
            try:
                items.sort()  # stable bytes for equal sets when the items are orderable
            except TypeError:
                pass
            return {TAG: tag, "v": self._enc_list(items)}
        return enc

    def _enc_fields(self, v: dict, attributes: bool = True) -> dict:
        """Encode the values of a str-keyed mapping (an object's fields, or a plain dict)."""
        out = {}
        enc = self._enc
        for k, x in v.items():
            try:
                out[k] = enc(x)
            except Unstorable as exc:
                exc.path.append(f".{k}" if attributes else f"[{k!r}]")
                raise
        return out

    def _enc_dict(self, v: dict) -> dict:
        if TAG not in v and all(type(k) is str for k in v):
            return self._enc_fields(v, attributes=False)
        pairs = []
        for k, x in v.items():
            try:
                pairs.append([self._enc(k), self._enc(x)])
            except Unstorable as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return {TAG: "dict", "v": pairs}

    def _enc_dt(self, tag: str) -> Callable[[Any], dict]:
        def enc(v: Any) -> dict:
            tz = v.tzinfo
            if tz is not None and type(tz) is not _dt.timezone:
                raise _unstorable(v, f"its tzinfo {tz!r} is not a fixed datetime.timezone; "
                                     "convert it with .astimezone(datetime.timezone.utc)")
            return {TAG: tag, "v": v.isoformat()}
        return enc

    def _enc_complex(self, v: complex) -> dict:
        return {TAG: "complex", "v": [self._enc_float(v.real), self._enc_float(v.imag)]}

    def _class_codec(self, t: type) -> _ClassCodec | None:
        """Find how to store instances of ``t`` (an Enum, attrs class, dataclass, namedtuple)."""
        kind = None
        if issubclass(t, enum.Enum):
            kind = "enum"
        elif attrs.has(t) or dataclasses.is_dataclass(t):
            kind = "obj"
        elif issubclass(t, tuple) and isinstance(getattr(t, "_fields", None), tuple):
            kind = "namedtuple"
        if kind is None:
            self._classes[t] = None
            return None
        qual = t.__qualname__
        path = f"{t.__module__}:{qual}"
        if "<locals>" in qual:
            raise Unstorable(type_name(t), "the class is defined inside a function, so it "
                                           "cannot be found again when loading; define it at "
                                           f"module level or {_HINT}")
        if resolve_class(path) is not t:
            raise Unstorable(type_name(t), f"the class is not reachable as {path}, so it cannot "
                                           f"be found again when loading; {_HINT}")
        if kind == "enum":
            cc = _ClassCodec(t, path, kind, lambda v: {}, lambda d: d)
        elif kind == "namedtuple":
            fields = t._fields  # type: ignore[attr-defined]

            def structure(d: dict, t: Any = t, fields: tuple = fields) -> Any:
                if set(d) != set(fields):
                    raise ValueError(f"expected fields {list(fields)}, got {sorted(d)}")
                return t(**d)
            cc = _ClassCodec(t, path, "obj", lambda v: v._asdict(), structure)
        else:
            un = make_dict_unstructure_fn(t, self._converter)
            st = make_dict_structure_fn(t, self._converter, _cattrs_forbid_extra_keys=True)
            cc = _ClassCodec(t, path, "obj", un, lambda d, st=st, t=t: st(d, t))
        self._classes[t] = cc
        self._by_path[(cc.kind, path)] = cc
        return cc

    # ------------------------------------------------------------------ decoding

    def loads(self, text: str | bytes, limit: int | None = MAX_RESULT_BYTES) -> Any:
        """The value stored as ``text``; :class:`StateError` for anything malformed.

        ``limit``: the longest text accepted (None: no limit, a result file's).
        """
        try:
            if limit is not None and len(text) > limit:
                raise StateError(f"stored result is larger than {MAX_RESULT_BYTES} bytes")
            tree = json.loads(text, parse_constant=_refuse_constant)
        except StateError:
            raise
        except RecursionError:
            raise StateError("stored result is nested too deeply") from None
        except (ValueError, TypeError) as exc:
            raise StateError(f"stored result is not valid JSON: {exc}") from None
        return self.decode(tree)

    def decode(self, tree: Any) -> Any:
        """The value of an encoded tree; :class:`StateError` naming the path when malformed."""
        try:
            return self._dec(tree)
        except _DecodeError as exc:
            raise StateError(f"stored result at {exc.where()}: {exc.reason}") from None
        except RecursionError:
            raise StateError("stored result is nested too deeply") from None

    def _dec(self, x: Any) -> Any:
        t = type(x)
        if t is dict:
            if TAG in x:
                return self._dec_tagged(x)
            out = {}
            for k, v in x.items():
                try:
                    out[k] = self._dec(v)
                except _DecodeError as exc:
                    exc.path.append(f"[{k!r}]")
                    raise
            return out
        if t is list:
            return self._dec_list(x)
        if t is str or t is int or t is bool or x is None:
            return x
        if t is float:
            if not math.isfinite(x):
                raise _DecodeError(f"{x!r} is not allowed")
            return x
        raise _DecodeError(f"unexpected {t.__name__}")

    def _dec_list(self, x: list) -> list:
        out = []
        for i, v in enumerate(x):
            try:
                out.append(self._dec(v))
            except _DecodeError as exc:
                exc.path.append(f"[{i}]")
                raise
        return out

    def _dec_tagged(self, x: dict) -> Any:
        tag = x[TAG]
        if type(tag) is not str:
            raise _DecodeError(f"tag must be a string, not {type(tag).__name__}")
        spec = _TAGS.get(tag)
        if spec is None:
            raise _DecodeError(f"unknown tag {tag!r}")
        keys, vtype = spec
        if len(x) != len(keys) or any(k not in x for k in keys):
            raise _DecodeError(f"{tag!r} record must have exactly the keys {sorted(keys)}, "
                               f"got {sorted(x)}")
        v = x["v"]
        if vtype is not None and type(v) is not vtype:
            raise _DecodeError(f"{tag!r} value must be a {vtype.__name__}, not {type(v).__name__}")
        if "c" in keys and type(x["c"]) is not str:
            raise _DecodeError(f"{tag!r} class name must be a string")
        try:
            return getattr(self, "_dec_" + tag)(x)
        except (_DecodeError, StateError):
            raise
        except RecursionError:
            raise
        except Exception as exc:  # noqa: BLE001 - constructors of stored types raise anything
            raise _DecodeError(f"cannot rebuild {tag!r} value: {type(exc).__name__}: "
                               f"{_short(exc)}") from None

    def _dec_tuple(self, x: dict) -> tuple:
        return tuple(self._dec_list(x["v"]))

    def _dec_set(self, x: dict) -> set:
        return set(self._dec_list(x["v"]))

    def _dec_frozenset(self, x: dict) -> frozenset:
        return frozenset(self._dec_list(x["v"]))

    def _dec_dict(self, x: dict) -> dict:
        out = {}
        for i, pair in enumerate(x["v"]):
            if type(pair) is not list or len(pair) != 2:
                raise _DecodeError(f"dict item {i} must be a [key, value] pair")
            try:
                out[self._dec(pair[0])] = self._dec(pair[1])
            except _DecodeError as exc:
                exc.path.append(f"[{i}]")
                raise
        return out

    def _dec_datetime(self, x: dict) -> _dt.datetime:
        return _dt.datetime.fromisoformat(x["v"])

    def _dec_date(self, x: dict) -> _dt.date:
        return _dt.date.fromisoformat(x["v"])

    def _dec_time(self, x: dict) -> _dt.time:
        return _dt.time.fromisoformat(x["v"])

    def _dec_timedelta(self, x: dict) -> _dt.timedelta:
        v = x["v"]
        if len(v) != 3 or any(type(n) is not int for n in v):
            raise _DecodeError("timedelta must be [days, seconds, microseconds] ints")
        return _dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2])

    def _dec_decimal(self, x: dict) -> decimal.Decimal:
        if len(x["v"]) > 10_000:
            raise _DecodeError("decimal is too long")
        return decimal.Decimal(x["v"])

    def _dec_uuid(self, x: dict) -> uuid.UUID:
        return uuid.UUID(x["v"])

    def _dec_complex(self, x: dict) -> complex:
        v = x["v"]
        if len(v) != 2 or any(type(n) not in (int, float) for n in v):
            raise _DecodeError("complex must be [real, imag] numbers")
        return complex(v[0], v[1])

    def _dec_bytes(self, x: dict) -> bytes:
        return base64.b64decode(x["v"].encode("ascii"), validate=True)

    def _dec_bytearray(self, x: dict) -> bytearray:
        return bytearray(self._dec_bytes(x))

    def _dec_path(self, x: dict) -> Any:
        cls = _PATHS.get(x["c"])
        if cls is None:
            raise _DecodeError(f"unknown path class {x['c']!r}")
        return cls(x["v"])

    def _dec_enum(self, x: dict) -> Any:
        cls = self._find_class("enum", x["c"])
        member = cls.__members__.get(x["v"])
        if member is None:
            raise _DecodeError(f"{x['c']} has no member {x['v']!r}")
        return member

    def _dec_obj(self, x: dict) -> Any:
        cc = self._find_class("obj", x["c"])
        fields = {}
        for k, v in x["v"].items():
            try:
                fields[k] = self._dec(v)
            except _DecodeError as exc:
                exc.path.append(f".{k}")
                raise
        try:
            return cc.structure(fields)
        except Exception as exc:  # noqa: BLE001 - cattrs and the class's own __init__
            msg = "; ".join(cattrs.transform_error(exc)) \
                if isinstance(exc, cattrs.BaseValidationError) else _short(exc)
            raise _DecodeError(f"cannot rebuild {x['c']}: {msg}") from None

    def _dec_custom(self, x: dict) -> Any:
        found = self._custom_names.get(x["c"])
        if found is None:
            raise _DecodeError(f"no hook is registered for {x['c']!r}; call "
                               "flowdeco.plugins.state.register_type before loading")
        cls, decode = found
        value = self._dec(x["v"])
        try:
            obj = decode(value)
        except Exception as exc:  # noqa: BLE001 - a user hook
            raise _DecodeError(f"the decode hook of {x['c']!r} raised {type(exc).__name__}: "
                               f"{_short(exc)}") from None
        if type(obj) is not cls:
            raise _DecodeError(f"the decode hook of {x['c']!r} returned a "
                               f"{type(obj).__name__}, not a {cls.__name__}")
        return obj

    def _find_class(self, kind: str, path: str) -> Any:
        cc = self._by_path.get((kind, path))
        if cc is not None and resolve_class(path) is cc.cls:
            return cc.cls if kind == "enum" else cc
        obj = resolve_class(path)
        if obj is None:
            raise _DecodeError(f"class {path} is not available (its module must be imported "
                               "before the run is resumed)")
        if not isinstance(obj, type):
            raise _DecodeError(f"{path} is not a stored {kind} class")
        try:
            found = self._class_codec(obj)
        except Unstorable as exc:
            raise _DecodeError(exc.reason) from None
        if found is None or found.kind != ("enum" if kind == "enum" else "obj"):
            raise _DecodeError(f"{path} is not a stored {kind} class")
        return obj if kind == "enum" else found


class _DecodeError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def where(self) -> str:
        return "$" + "".join(reversed(self.path))


#: tag -> (required keys, type of "v" or None)
_TAGS: dict[str, tuple[frozenset[str], type | None]] = {
    **{t: (frozenset({TAG, "v"}), list) for t in ("tuple", "set", "frozenset", "dict",
                                                  "timedelta", "complex")},
    **{t: (frozenset({TAG, "v"}), str) for t in ("datetime", "date", "time", "decimal",
                                                 "uuid", "bytes", "bytearray")},
    "path": (frozenset({TAG, "c", "v"}), str),
    "enum": (frozenset({TAG, "c", "v"}), str),
    "obj": (frozenset({TAG, "c", "v"}), dict),
    "custom": (frozenset({TAG, "c", "v"}), None),
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _dumps_plain(tree: Any) -> str:
    try:
        return _ENCODER.encode(tree)
    except RecursionError:
        raise Unstorable("value", "nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise Unstorable(type(tree).__name__, f"JSON refused it: {exc}") from None


def _check_utf8(value: Any, text: str) -> None:
    """Unstorable when ``text`` is not valid UTF-8 (a lone surrogate such as ``"\\ud800"``).

    ``json`` passes lone surrogates through, SQLite cannot store them: found
    here, on the worker, the task fails alone instead of its whole batch.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return
    where, bad = _find_surrogate(json.loads(text), [])
    exc = _unstorable(value, f"its text holds a lone surrogate {bad!r}, which is not valid "
                             "UTF-8 and cannot be stored (text decoded with "
                             "errors='surrogateescape'?); return bytes, or clean the text")
    exc.path.extend(reversed(where))
    raise exc


def _find_surrogate(tree: Any, path: list[str]) -> tuple[list[str], str]:
    """Where in a JSON tree the first string that UTF-8 refuses is (path, the character)."""
    if type(tree) is str:
        for ch in tree:
            if "\ud800" <= ch <= "\udfff":
                return path, ch
        return [], ""
    items = tree.items() if type(tree) is dict else enumerate(tree) if type(tree) is list else ()
    for k, v in items:
        step = f"[{k!r}]" if type(k) is str else f"[{k}]"
        if type(k) is str:
            found, ch = _find_surrogate(k, path + [step])
            if ch:
                return found, ch
        found, ch = _find_surrogate(v, path + [step])
        if ch:
            return found, ch
    return [], ""


#: the process-wide codec used by the state plugin
default_codec = Codec()


def register_type(cls: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any],
                  *, name: str | None = None) -> None:
    """Teach the state store a type: see :meth:`Codec.register_type`.

    Example::

        register_type(Money, encode=lambda m: [m.cents, m.currency],
                      decode=lambda v: Money(*v))
    """
    default_codec.register_type(cls, encode, decode, name=name)
