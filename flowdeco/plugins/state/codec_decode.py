"""Decoding stored results: JSON text back to values, strictly (see :mod:`.codec` for the rules).

:class:`Decoding` is the reading half of :class:`~.codec.Codec` (its base):
anything malformed raises :class:`~flowdeco.StateError` naming the path in
the value (``$[3]['key']``); classes are only looked up among modules already
imported, never imported.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
import math
import uuid
from typing import Any

import cattrs

from ...errors import StateError
from .codec_base import _PATHS, MAX_RESULT_BYTES, TAG, Unstorable, _short, resolve_class


class Decoding:
    """``loads``/``decode`` and the per-tag decoders; the attributes it reads
    (``_custom_names``, ``_by_path``, ``_classes``...) are set by :class:`~.codec.Codec`."""

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
