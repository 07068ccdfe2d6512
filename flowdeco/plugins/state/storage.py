"""``store=``: how each task's result is kept -- in its row as JSON, in a file, or not at all.

:class:`ResultStore` turns a task's value into the text of its row
(:meth:`ResultStore.encode`, on the worker for in-process executors, else on
the scheduler thread) and stored text back into a value
(:meth:`ResultStore.decode`).  Choices, per task (``@task(store=...)``) or
for the run (``run(store=...)``, ``--store``):

- ``"auto"`` (default): JSON in the row for JSON-able values up to
  :data:`~.serializers.FILE_THRESHOLD`; larger JSON text, large
  ``bytes``/``str``, DataFrames and arrays in files (safe serializers only,
  see :mod:`.serializers`);
- ``"json"``: JSON only (a value without a JSON form fails its task);
- a serializer's name (``"pickle"``, ``"parquet"``, ...): that file format;
- ``False``: not saved; dependents get the value in memory, a resume runs
  the task again.
"""

from __future__ import annotations

from typing import Any

from ...errors import StateError, UsageError
from .codec import Codec, Unstorable, type_name
from .results import UNSAVED, FileRef, ResultFileError, ResultFiles, ResultWriteError, parse_ref
from .serializers import FILE_THRESHOLD, MissingExtra, Registry, Serializer
from .writer import UnstorableResult

__all__ = ["ResultStore", "normalize_choice", "UnstorableResult"]

_FALSE = ("false", "none", "no", "off", "0")
#: result types ``auto`` keeps as JSON in the row (when their text is small)
_ROW_TYPES = frozenset({int, float, bool, type(None), dict, list, tuple})


def normalize_choice(value: Any, where: str) -> Any:
    """A ``store=`` value as the plugin uses it: False or a name (CLI text ``false`` is False)."""
    if value is False or value is None:
        return False if value is False else "auto"
    if isinstance(value, str) and value.strip():
        v = value.strip()
        return False if v.lower() in _FALSE else v
    raise UsageError(f"{where}: store must be \"auto\", \"json\", \"pickle\", a serializer's "
                     f"name or False, got {value!r}")


class ResultStore:
    """Encodes results for rows and decodes them back (thread-safe: workers encode)."""

    def __init__(self, codec: Codec, files: ResultFiles, registry: Registry):
        self.codec = codec
        self.files = files
        self.registry = registry

    def check(self, choice: Any, where: str) -> None:
        """UsageError when ``choice`` names no serializer."""
        if choice is False or choice in ("auto", "json") or self.registry.get(choice):
            return
        raise UsageError(f"{where}: store={choice!r} names no serializer; choose one of "
                         f"{self.registry.choices()}")

    def encode(self, run_id: str, name: str, choice: Any, value: Any) -> str:
        """The row text for ``value`` (writing its file first when it gets one).

        Raises :class:`UnstorableResult` (the task fails, no retry) or
        :class:`ResultWriteError` (the disk refused: the run stops).
        """
        if choice == "auto":
            t = type(value)
            # the hot path (a small JSON-able result): one type test, no other call
            if t in _ROW_TYPES or ((t is str or t is bytes) and len(value) < FILE_THRESHOLD):
                try:
                    text = self.codec.dumps(value, None)
                except Unstorable as exc:
                    raise self._unstorable(name, value, exc) from None
                if len(text) < FILE_THRESHOLD:
                    return text
                return self.files.write_json(run_id, name, text)
            ser = self.registry.auto(value)
            if ser is None:
                return self._json(run_id, name, value)
        elif choice is False:
            return UNSAVED
        elif choice == "json":
            return self._json(run_id, name, value)
        else:
            ser = self.registry.get(choice)
            if ser is None:  # (checked at collection; a plugin may have gone since)
                raise UnstorableResult(f"task {name!r}: store={choice!r} names no serializer; "
                                       f"choose one of {self.registry.choices()}")
            if not ser.accepts(value):
                raise UnstorableResult(f"task {name!r}: store={choice!r} does not take a result "
                                       f"of type {type_name(type(value))}; "
                                       f"choose another with @task(store=...): "
                                       f"{self.registry.choices()}")
        return self._file(run_id, name, ser, value)

    def _json(self, run_id: str, name: str, value: Any) -> str:
        try:
            text = self.codec.dumps(value, None)
        except Unstorable as exc:
            raise self._unstorable(name, value, exc) from None
        if len(text) >= FILE_THRESHOLD:
            return self.files.write_json(run_id, name, text)
        return text

    def _unstorable(self, name: str, value: Any, exc: Unstorable) -> UnstorableResult:
        return UnstorableResult(
            f"task {name!r}: result of type {type_name(type(value))} cannot be stored: "
            f"{exc}; or choose how with @task(store=...): {self.registry.choices()} "
            "(pickle takes any picklable value, loaded back only from your own state dir)")

    def _file(self, run_id: str, name: str, ser: Serializer, value: Any) -> str:
        try:
            return self.files.write(run_id, name, ser, value)
        except ResultWriteError:
            raise
        except MissingExtra as exc:
            raise UnstorableResult(f"task {name!r}: {exc} (or choose another store=)") from None
        except Exception as exc:  # noqa: BLE001 - a format library may raise anything
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise UnstorableResult(
                f"task {name!r}: result of type {type_name(type(value))} cannot be stored with "
                f"serializer {ser.name!r}: {type(exc).__name__}: {detail}; choose another with "
                f"@task(store=...): {self.registry.choices()}") from None

    def decode(self, text: str) -> Any:
        """The value of stored text: JSON, or a file.  :class:`ResultFileError` when the file
        cannot be used (the task runs again), StateError for malformed JSON."""
        ref = parse_ref(text)
        if ref is None:
            if text == UNSAVED:
                raise ResultFileError("its result was not saved (store=False)")
            return self.codec.loads(text)
        value = self.files.read(ref)
        if ref.serializer == "json":
            return self.codec.loads(value, limit=None)
        return value

    @staticmethod
    def ref(text: str | None) -> FileRef | None:
        """The file reference in stored text (None: a value in the row); None when malformed."""
        try:
            return parse_ref(text)
        except StateError:
            return None
