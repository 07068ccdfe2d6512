"""The records a store loads and writes: validated ``attrs`` classes and their strict loader.

Kept apart from the SQLite code so another backend (:class:`~.store.Store`)
uses the same records and the same validation: every row is structured by a
private cattrs converter; unknown values, wrong types and oversized fields
raise :class:`~flowdeco.StateError`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal, NamedTuple

import attrs
import cattrs

from ...errors import StateError
from .codec import MAX_RESULT_BYTES

MAX_NAME = 4096
MAX_ERROR = 65536
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
TASK_STATUSES = ("running", "succeeded", "failed", "skipped", "restored", "interrupted")
SKIP_REASONS = ("upstream", "stopped", "condition", "trigger")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

# --------------------------------------------------------------------------- records


def _max_len(limit: int) -> Any:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value is not None and len(value) > limit:
            raise ValueError(f"{attribute.name} is {len(value)} characters long "
                             f"(the limit is {limit})")
    return check


def _non_negative(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


#: 9999-12-31T23:59:59Z: later timestamps cannot be shown as dates
_MAX_TIMESTAMP = 253402300799.0


def _timestamp(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and not 0 <= value <= _MAX_TIMESTAMP:
        raise ValueError(f"{attribute.name} is not a plausible timestamp: {value!r}")


def _run_id(inst: Any, attribute: Any, value: str) -> None:
    if not _RUN_ID_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid run id {value[:140]!r}")


@attrs.frozen
class RunRecord:
    """One saved run."""

    run_id: str = attrs.field(validator=_run_id)
    flow: str = attrs.field(validator=_max_len(MAX_NAME))
    status: Literal["running", "succeeded", "failed", "interrupted"]
    started: float = attrs.field(validator=_timestamp)
    #: when the latest session (first start or resume) began
    session_started: float = attrs.field(validator=_timestamp)
    finished: float | None = attrs.field(default=None, validator=_timestamp)
    duration: float = attrs.field(default=0.0, validator=_non_negative)
    sessions: int = attrs.field(default=1, validator=_non_negative)
    pid: int | None = None


@attrs.frozen
class TaskRecord:
    """One task of a saved run, as last recorded."""

    name: str = attrs.field(validator=_max_len(MAX_NAME))
    status: Literal["running", "succeeded", "failed", "skipped", "restored", "interrupted"]
    attempts: int = attrs.field(validator=_non_negative)
    started: float | None = attrs.field(default=None, validator=_timestamp)
    finished: float | None = attrs.field(default=None, validator=_timestamp)
    fingerprint: str | None = attrs.field(default=None, validator=_max_len(64))
    result: str | None = attrs.field(default=None, validator=_max_len(MAX_RESULT_BYTES))
    error: str | None = attrs.field(default=None, validator=_max_len(MAX_ERROR))
    reason: Literal["upstream", "stopped", "condition", "trigger"] | None = None
    #: the input-hash cache key (tasks with ``cache=``), else None
    cache_key: str | None = attrs.field(default=None, validator=_max_len(64))
    #: sha256 (hex) of ``result`` as written; None for rows of older stores (trusted)
    checksum: str | None = attrs.field(default=None, validator=_max_len(64))

    @property
    def intact(self) -> bool:
        """False when the stored result's bytes changed since they were written."""
        return result_intact(self.result, self.checksum)

    @property
    def completed(self) -> bool:
        return self.status in ("succeeded", "restored")

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return max(self.finished - self.started, 0.0)


class TaskRow(NamedTuple):
    """What the plugin writes for a task (cheap to build on the hot path); columns in order."""

    name: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    fingerprint: str | None
    result: str | None
    error: str | None
    reason: str | None
    cache_key: str | None = None


@attrs.frozen
class CacheEntry:
    """A stored successful result that answers an input-hash cache key."""

    run_id: str = attrs.field(validator=_run_id)
    name: str = attrs.field(validator=_max_len(MAX_NAME))
    finished: float = attrs.field(validator=_timestamp)
    result: str = attrs.field(validator=_max_len(MAX_RESULT_BYTES))
    checksum: str | None = attrs.field(default=None, validator=_max_len(64))

    @property
    def intact(self) -> bool:
        return result_intact(self.result, self.checksum)


def checksum(result: str) -> str:
    """What a row's ``checksum`` holds: sha256 (hex) of the result's UTF-8 bytes."""
    return hashlib.sha256(result.encode("utf-8", "surrogatepass")).hexdigest()


def result_intact(result: str | None, digest: str | None) -> bool:
    """Whether ``result`` still matches ``digest`` (no digest: an older row, trusted)."""
    return digest is None or result is None or checksum(result) == digest


@attrs.frozen
class RunSummary:
    """A run with its task counts by status (``runs`` listing)."""

    run: RunRecord
    counts: dict[str, int]


def _strict_converter() -> cattrs.Converter:
    """Structures rows into records without coercion: ``"3"`` is not an int."""
    conv = cattrs.Converter(forbid_extra_keys=True)

    def exact(kind: type, name: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            if type(value) is not kind:
                raise TypeError(f"expected {name}, got {type(value).__name__}")
            return value
        return hook

    def real(value: Any, _: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise TypeError(f"expected a finite number, got {type(value).__name__} {value!r:.40}")
        return float(value)

    conv.register_structure_hook(int, exact(int, "an integer"))
    conv.register_structure_hook(str, exact(str, "text"))
    conv.register_structure_hook(float, real)
    return conv


_CONVERTER = _strict_converter()


def _explain(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown keys {sorted(exc.extra_fields)}"
    return str(exc) or type(exc).__name__


def structure(data: dict, cls: type, what: str) -> Any:
    """A validated record from a row dict, or :class:`StateError` naming ``what`` and the field."""
    try:
        return _CONVERTER.structure(data, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs groups, attrs validators
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc, format_exception=_explain))
        else:
            detail = f"{type(exc).__name__}: {exc}"
        raise StateError(f"{what} is invalid: {detail[:500]}") from None


_TASK_COLUMNS = ("name", "status", "attempts", "started", "finished", "fingerprint", "result",
                 "error", "reason", "cache_key", "checksum")
_RUN_COLUMNS = tuple(f.name for f in attrs.fields(RunRecord))
#: columns of ``tasks`` added after version 1 (a read-only open leaves older stores as they are)
_ADDED_IN = {"cache_key": 2, "checksum": 3}
