"""Ctrl-C and SIGTERM as messages instead of exceptions.

The scheduler (and ``flowdeco serve``) must stop at a point of their choosing,
not wherever a ``KeyboardInterrupt`` happens to land, so while they run both
signals call a handler that only posts a message.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

try:  # the C functions: signal.signal's wrapper converts numbers and handlers to and
    # from enums, ~6x their cost (several calls a run)
    from _signal import getsignal as _get_handler, signal as _set_handler
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    _get_handler, _set_handler = signal.getsignal, signal.signal

Handler = Callable[[int, Any], None]


def on_stop_signals(handler: Handler) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``handler``; returns the function that puts the old ones back.

    Signal handlers can only be set from the main thread: elsewhere (a run
    started from a worker thread of the application) nothing changes.  Nor is
    a handler installed outside Python (``getsignal`` gives None) replaced:
    it could not be put back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            if _get_handler(sig) is None:
                continue
            old[sig] = _set_handler(sig, handler)
        except (ValueError, OSError):
            pass

    def restore() -> None:
        for sig, previous in old.items():
            _set_handler(sig, previous)

    return restore
