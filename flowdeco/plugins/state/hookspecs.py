"""The hook the state plugin adds for storage backends (registered with the plugin manager
when the state plugin configures, and by ``python -m flowdeco runs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Config
    from .store import Store

hookspec = pluggy.HookspecMarker("flowdeco")


@hookspec(firstresult=True)
def flowdeco_state_store(state_dir: str, config: "Optional[Config]") -> "Optional[Store]":
    """Return the :class:`~flowdeco.plugins.state.Store` that keeps runs, or None.

    Stops at first non-None result; the built-in SQLite store answers last.
    Called once per session from ``flowdeco_configure`` (``config`` is the
    session's configuration) and once by ``python -m flowdeco runs``
    (``config`` is None).  ``state_dir`` is ``--state-dir``; a backend may
    keep its data elsewhere but should keep lock files or other local traces
    under it.  The store is not opened yet.
    """


@hookspec
def flowdeco_result_serializers() -> "list":
    """Return serializers for result files (:class:`~flowdeco.plugins.state.Serializer`).

    Called once per run when the state plugin is on; they are added after the
    built-ins and :func:`~flowdeco.plugins.state.register_serializer`'s, so a
    name given again replaces the earlier one.  A serializer with
    ``safe=False`` (its loading can run code) is used only by tasks that name it.
    """
