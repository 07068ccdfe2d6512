"""Ctrl-C and SIGTERM as messages instead of exceptions.

The scheduler (and ``flowdeco serve``) must stop at a point of their choosing,
not wherever a ``KeyboardInterrupt`` happens to land, so while they run both
signals call a handler that only posts a message.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

try:  # the C function: signal.signal's wrapper converts numbers and handlers to and
    from _signal import signal as _set_handler  # from enums, ~6x its cost (4 calls a run)
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    _set_handler = signal.signal

Handler = Callable[[int, Any], None]


def on_stop_signals(handler: Handler) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``handler``; returns the function that puts the old ones back.

    Signal handlers can only be set from the main thread: elsewhere (a run
    started from a worker thread of the application) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = _set_handler(sig, handler)
        except (ValueError, OSError):
            pass

    def restore() -> None:
        for sig, previous in old.items():
            _set_handler(sig, previous)

    return restore
