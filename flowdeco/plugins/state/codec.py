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
import uuid
from typing import Any, Callable

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from ...errors import StateError
from .codec_base import (_HINT, _PATHS, MAX_RESULT_BYTES, TAG, Unstorable, _ClassCodec,  # noqa: F401
                         _unstorable, resolve_class, type_name)
from .codec_decode import Decoding

__all__ = ["Codec", "Unstorable", "register_type", "default_codec", "MAX_RESULT_BYTES"]

class Codec(Decoding):
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
