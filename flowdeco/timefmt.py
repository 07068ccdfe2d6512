"""How times read on screen: one start-time and one duration format for the
``runs`` commands and the dashboard, so the two never disagree.

Standard library only: ``flowdeco ui`` imports it without importing the
engine or structlog (the dashboard must start fast).
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["seconds", "when"]


def when(ts: float | None) -> str:
    """A POSIX timestamp as ``YYYY-MM-DD HH:MM:SSZ`` (UTC); ``-`` for None."""
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(s: float | None) -> str:
    """A duration: ``12.3ms`` under a second, ``4.56s`` under a minute, then
    ``2m05s`` / ``1h02m05s``; ``-`` for None."""
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.1f}ms"
    if s < 60:
        return f"{s:.2f}s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
