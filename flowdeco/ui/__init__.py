"""``python -m flowdeco ui``: a live dashboard over a state dir, and the static run report.

Modules: :mod:`.cli` (the command, server start), :mod:`.app` (Starlette routes,
security rules, live streams), :mod:`.data` (read-only view of the store and
audit trails; the switch to the data layer's queries), :mod:`.model` (a run
as the pages draw it), :mod:`.report` (``runs report ID -o FILE.html``).
``templates/`` and ``static/`` hold our own HTML, CSS and JavaScript; nothing
is fetched from the network.  The server's dependencies are the optional
extra ``flowdeco[ui]``; this package imports none of them until used.
"""

from __future__ import annotations

from ..cli import Command

__all__ = ["ui_command"]


def ui_command() -> Command:
    """The ``ui`` subcommand (registered by the state plugin's ``flowdeco_cli_commands``)."""
    from .cli import main
    return Command(help="a live dashboard of saved runs in the browser", main=main)
