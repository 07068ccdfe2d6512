"""Notify: POST a JSON summary of a failed run to a webhook (``--notify-url URL``).

When a run ends ``failed``, one HTTP ``POST`` with ``Content-Type:
application/json`` goes to the URL (Slack-, Teams- or any webhook relay that
takes JSON)::

    {"text": "flowdeco run 20261207-101500-3fa2c1 of etl failed: 3 succeeded, 1 failed in 2.01s",
     "run_id": "...", "flow": "etl", "status": "failed",
     "started_at": "2026-12-07T10:15:00+00:00", "finished_at": "...", "duration": 2.01,
     "counts": {"succeeded": 3, "failed": 1}, "failed": [{"task": "load", "error":
     "ValueError: bad row", "attempts": 3}], "audit": ".flowdeco/runs/.../audit.jsonl"}

``failed`` lists at most :data:`MAX_FAILED` tasks (``failed_count`` has the
number).  A run that succeeded or was interrupted sends nothing.
``--notify-timeout S`` (default 10) bounds the request.  Sending happens on
the scheduler thread after ``run_finished``; a webhook that fails (refused,
timeout, an HTTP error status) is reported as a ``notify_failed`` event (a
warning on the console) and never changes the run's outcome or exit code; a
delivered one as ``notify_sent`` (with the HTTP ``status``).

Nothing is registered without ``--notify-url``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..manager import hookimpl
from ..outcome import Event

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Run, RunResult
    from flowdeco.config import Config, Parser

NAME = "notify"
_PLUGIN = "notify-webhook"

#: failed tasks listed in the summary (the rest are counted)
MAX_FAILED = 50

NOTIFY_SENT = "notify_sent"
NOTIFY_FAILED = "notify_failed"


def check_url(url: Any) -> str:
    """An ``http://`` or ``https://`` URL with a host, else a usage error naming it."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--notify-url {str(url)!r}: expected an http:// or https:// URL "
                         "of a webhook")
    return str(url)


def summary(run: Any, result: Any) -> dict[str, Any]:
    """The JSON body for a finished run."""
    failed = [(name, o) for name, o in result.outcomes.items() if o.status == "failed"]
    audit = None
    if run.state_dir is not None:
        audit = os.path.join(run.state_dir, "runs", result.run_id, "audit.jsonl")
    flow = result.flow or run.graph.name
    return {
        "text": f"flowdeco run {result.run_id} of {flow} {result.status}: {result.summary()}",
        "run_id": result.run_id, "flow": flow, "status": result.status,
        "started_at": result.started_at.isoformat(), "finished_at": result.finished_at.isoformat(),
        "duration": round(result.duration, 3),
        "counts": {k: n for k, n in result.counts().items() if n},
        "failed": [{"task": name, "error": o.error, "attempts": o.attempts}
                   for name, o in failed[:MAX_FAILED]],
        "failed_count": len(failed),
        "audit": audit,
    }


def post_json(url: str, body: dict[str, Any], timeout: float) -> int:
    """POST ``body`` as JSON; the HTTP status (an error status raises ``HTTPError``)."""
    data = json.dumps(body, default=str).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "flowdeco-notify"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only
        return int(resp.status)


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment (a webhook's secret often sits there)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return f"{p.scheme}://{host}{p.path}"


class Webhook:
    """Registered with ``--notify-url``: sends the summary of a failed run."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout

    @hookimpl
    def flowdeco_unconfigure(self, config: Config) -> None:
        # registered for one session: a session without --notify-url calls nothing here
        config.pluginmanager.unregister(self)

    @hookimpl(tryfirst=True)
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        if result.status != "failed":
            return
        fields: dict[str, Any] = {"level": "info", "url": _safe_url(self.url)}
        try:
            fields["status"] = post_json(self.url, summary(run, result), self.timeout)
            name = NOTIFY_SENT
        except Exception as exc:  # noqa: BLE001 - a webhook never fails the run
            name = NOTIFY_FAILED
            fields["level"] = "warning"
            if isinstance(exc, urllib.error.HTTPError):
                fields["error"] = f"HTTP {exc.code} {exc.reason}"
            else:
                reason = getattr(exc, "reason", None) or exc
                fields["error"] = f"{type(exc).__name__}: {reason}"
        run.hook.flowdeco_report(run=run, event=Event(name, run.now(), run.run_id, None, fields))


def _timeout(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    g = "state and output"
    parser.addoption("--notify-url", dest="notify_url", default=None, metavar="URL", group=g,
                     help="POST a JSON summary of a failed run to this webhook URL")
    parser.addoption("--notify-timeout", dest="notify_timeout", default=10.0, type=_timeout,
                     metavar="S", group=g, help="seconds to wait for the webhook (default 10)")


@hookimpl
def flowdeco_configure(config: Config) -> None:
    url = config.getoption("notify_url")
    if url is None:
        return
    timeout = config.getoption("notify_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UsageError(f"notify_timeout={timeout!r}: expected seconds > 0")
    config.pluginmanager.register(Webhook(check_url(url), float(timeout)), _PLUGIN)
