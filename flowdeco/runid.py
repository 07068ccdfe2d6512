"""Run ids: what a valid one looks like (contract: 1-128 of ``A-Z a-z 0-9 . _ -``).

A module of its own so that commands which only read runs (``runs``, ``ui``) check
ids without importing the engine; :mod:`flowdeco.engine.session` re-exports both names.
"""

from __future__ import annotations

import re

from .errors import UsageError, shorten

RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def validate_run_id(run_id: str) -> str:
    """``run_id`` itself, or a :class:`~flowdeco.errors.UsageError` naming what is allowed."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id in (".", ".."):
        raise UsageError(
            f"invalid run id {shorten(run_id)}: use 1-128 characters from A-Z a-z 0-9 . _ - "
            "(and not '.' or '..')")
    return run_id
