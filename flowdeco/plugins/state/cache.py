"""Input-hash caching: ``@task(cache=True)`` reuses a result computed before from the same inputs.

A task with ``cache=`` gets a *cache key* when it becomes ready:

    sha256(JSON [task name, code digest, inputs])

- the task name is the qualified name (``etl.load``); for an instance of a
  mapped task (``parse[3]``) it is the mapped task's name, so an element's
  cached result is found again when the list it came from grew or was
  reordered;
- the code digest is the ``CODE`` half of the resume fingerprint
  (:mod:`.fingerprint`): a change to the task's code (or to the ``@task``
  options that shape its result) is a miss;
- inputs are the task's arguments (its dependencies' results and bound run
  parameters; ``ctx`` and defaults left out) in the result codec's JSON form
  with object keys sorted, or, with ``cache=key_fn``, what ``key_fn`` returns
  when called with the task's parameters by name (like ``when=``): then only
  what the key function returns counts.  An input that is the result of an
  upstream task stored as a file (a DataFrame, a large string, see
  :mod:`.storage`) counts by that file's sha256: it is not encoded again.  An input that has no
  JSON form (a connection, a lock) cannot be hashed: the task runs uncached
  and one ``state_warning`` per task says to give ``cache=`` a key function.

The key is stored with the task's row when it succeeds (same commit, no
second copy of the result).  A later ready task with the same key -- in any
run of any flow in the same state dir -- is ``restored`` from the newest
successful row whose end is at most ``cache_ttl`` seconds ago (no limit
without ``cache_ttl``); its ``task_restored`` event carries ``source="cache"``,
``cached_run`` and ``age`` (seconds).  The restored task gets its own row in
the current run, so resuming that run restores it like any completed task.

``--no-cache`` runs every cached task and ``--refresh EXPR`` (``-k`` syntax,
repeatable) the matching ones; so does ``--rerun`` for its tasks and their
downstream.  All still record their keys, so the fresh results answer later
runs.  Deleting a run (``flowdeco runs --delete``)
forgets its cached results.  Without a store (``--no-state``) nothing is
cached and every task runs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from ...errors import StateError
from ...outcome import Restored
from .codec import Codec, Unstorable


class Cache:
    """Keys, lookups and hits of one run (scheduler thread only)."""

    def __init__(self, store: Any, codec: Codec, fingerprint: Callable[[int], str],
                 refresh: Callable[[str], bool] | None, results: Any = None,
                 digests: dict[str, str] | None = None):
        self.find = getattr(store, "find_cached", None)
        self.codec = codec
        #: the plugin's ResultStore (file results), and task name -> sha256 of its result file
        self.results = results
        self.digests = digests if digests is not None else {}
        self.fingerprint = fingerprint
        #: tasks whose stored results are not used this run (``--no-cache``, ``--refresh``)
        self.refresh = refresh
        #: task or instance name -> its key, until its row is written
        self.keys: dict[str, str] = {}
        #: task or instance name -> the JSON result it was restored with, until written
        self.hits: dict[str, str] = {}
        self._warned: set[str] = set()

    def lookup(self, run: Any, task: Any, name: str) -> Restored | None:
        """The stored result for ``name`` (a task, or an instance of mapped ``task``), or None."""
        spec = task.spec
        if spec.map is not None and name == task.name:
            return None  # a mapped task is cached instance by instance
        key = self.key(run, task, name)
        if key is None:
            return None
        self.keys[name] = key
        if self.find is None or (self.refresh is not None and self.refresh(task.name)):
            return None
        now = run.now()
        ttl = spec.cache_ttl
        entry = self.find(key, now - ttl if ttl is not None else 0.0)
        if entry is None:
            return None
        if not getattr(entry, "intact", True):
            self._warn(run, task.name, f"the cached result from run {entry.run_id!r} does not "
                                       "match its checksum (changed since it was written); "
                                       "running it again")
            return None
        text = entry.result
        try:
            if self.results is None:
                value = self.codec.loads(text)
            else:
                value = self.results.decode(text)
                ref = self.results.ref(text)
                if ref is not None:  # a copy of the file of its own: the other run may go
                    text = self.results.files.link(ref, run.run_id, name)
        except StateError as exc:  # e.g. a class that is gone, a file deleted: compute it again
            self._warn(run, task.name, f"the cached result from run {entry.run_id!r} cannot "
                                       f"be loaded ({exc}); running it again")
            return None
        self.hits[name] = text
        return Restored(value, fields={"source": "cache", "cached_run": entry.run_id,
                                       "age": round(max(now - entry.finished, 0.0), 3)})

    def key(self, run: Any, task: Any, name: str) -> str | None:
        """The cache key of ``name``, or None (with a warning) when its inputs cannot be hashed."""
        spec = task.spec
        inputs = run.task_inputs(task, name)
        files: dict[str, str] = {}
        if spec.cache is True:
            material: Any = inputs
            if self.digests:
                material, files = self._by_digest(run, task, inputs)
        else:
            fn = spec.cache
            try:
                material = fn(**{p.name: inputs[p.name] for p in spec.cache_params
                                 if p.name in inputs})
            except Exception as exc:  # noqa: BLE001 - a user function may raise anything
                self._warn(run, task.name, f"its cache key function raised "
                                           f"{type(exc).__name__}: {exc}; running uncached")
                return None
        try:
            tree = self.codec.encode(material)
        except Unstorable as exc:
            what = "its cache key" if spec.cache is not True else \
                f"input {exc.path[-1].strip('[]')}" if exc.path else "an input"
            self._warn(run, task.name, f"{what} cannot be hashed: {exc}; running uncached "
                                       "(give cache= a key function of the inputs that "
                                       "identify the result)")
            return None
        code = self.fingerprint(task.index).partition(".")[0]
        text = json.dumps([task.name, code, tree, files] if files else [task.name, code, tree],
                          sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        # surrogatepass: a run parameter decoded with surrogateescape still has a key
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def _by_digest(self, run: Any, task: Any, inputs: dict[str, Any]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
        """Inputs whose upstream result is a file, replaced by that file's sha256."""
        files: dict[str, str] = {}
        vertices = run.graph.vertices
        mapped = task.spec.map
        for arg, dep in zip(task.argnames, task.argdeps):
            if arg == mapped or arg not in inputs:
                continue
            digest = self.digests.get(vertices[dep].name)
            if digest is not None:
                files[arg] = digest
        if not files:
            return inputs, files
        return {k: v for k, v in inputs.items() if k not in files}, files

    def _warn(self, run: Any, task: str, message: str) -> None:
        if task not in self._warned:  # once per task, not once per mapped instance
            self._warned.add(task)
            run.emit("state_warning", task=task, level="warning", error=f"cache: {message}")


__all__ = ["Cache"]
