"""Options and configuration.

Plugins declare options once (``flowdeco_addoption``); each option is both a
CLI flag and a keyword argument of :func:`flowdeco.run` under its ``dest``.
Declaring records a small :class:`Option`; an ``argparse`` parser is built
only when the CLI needs one, so a Python ``run()`` pays nothing for argparse.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Iterable, Mapping

import attrs
import pluggy

from .clock import Clock
from .errors import UsageError, suggest
from .stash import Stash

_NOTSET = object()


@attrs.frozen
class Option:
    flags: tuple[str, ...]
    dest: str
    default: Any = None
    help: str = ""
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    group: str = "general"


class UsageArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are :class:`UsageError` (CLI exit 4), not exit 2.

    :meth:`Parser.argparser` builds one; a plugin's CLI command
    (``flowdeco_cli_commands``) uses it so a bad flag there exits like one
    of the main command.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see python -m flowdeco --help)")


class Parser:
    """Collects options declared by plugins (``parser.addoption(...)``)."""

    def __init__(self) -> None:
        self.options: list[Option] = []
        self._by_dest: dict[str, Option] = {}
        self._flags: set[str] = set()
        #: ``{dest: default}``, made on first use (every run starts from a copy)
        self._defaults: dict[str, Any] | None = None

    def addoption(self, *flags: str, dest: str, default: Any = None, help: str = "",
                  group: str = "general", **kwargs: Any) -> None:
        """Declare an option.  ``kwargs`` go to ``argparse.add_argument`` (``type``, ``action``,
        ``choices``, ``metavar``, ``nargs``); ``group`` titles the ``--help`` section."""
        if dest in self._by_dest:
            raise ValueError(f"option {dest!r} declared twice")
        clash = self._flags.intersection(flags)
        if clash:
            raise ValueError(f"option flag(s) {sorted(clash)} declared twice")
        opt = Option(tuple(flags), dest, default, help, dict(kwargs), group)
        self.options.append(opt)
        self._by_dest[dest] = opt
        self._flags.update(flags)
        self._defaults = None

    def defaults(self) -> dict[str, Any]:
        """A new ``{dest: default}`` dict (a pooled parser serves many runs: built once)."""
        if self._defaults is None:
            self._defaults = {o.dest: o.default for o in self.options}
        return dict(self._defaults)

    def __contains__(self, dest: str) -> bool:
        return dest in self._by_dest

    def argparser(self, prog: str = "flowdeco", description: str = "",
                  epilog: str = "") -> UsageArgumentParser:
        """The CLI parser: ``TARGET`` and every declared option, grouped; errors exit 4."""
        ap = UsageArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("target", nargs="?", help="a file path, a module name, or module:flow")
        groups: dict[str, Any] = {}
        for o in self.options:
            if not o.flags:
                continue
            g = groups.get(o.group)
            if g is None:
                g = groups[o.group] = ap.add_argument_group(o.group)
            g.add_argument(*o.flags, dest=o.dest, default=o.default, help=o.help, **o.kwargs)
        return ap


class Config:
    """The configuration of one invocation: plugin manager, option values, clock."""

    def __init__(self, pluginmanager: pluggy.PluginManager, parser: Parser,
                 values: Mapping[str, Any], clock: Clock | None = None,
                 from_cli: bool = False):
        self.pluginmanager = pluginmanager
        self.hook = pluginmanager.hook
        self.parser = parser
        self.option = argparse.Namespace()
        vars(self.option).update(values)  # (Namespace(**values) sets them one by one)
        self.clock = clock or Clock()
        self.from_cli = from_cli
        #: plugin state that lives as long as the configuration (keys: :class:`StashKey`)
        self.stash: Stash = Stash()

    def getoption(self, name: str, default: Any = _NOTSET) -> Any:
        try:
            return getattr(self.option, name)
        except AttributeError:
            if default is not _NOTSET:
                return default
            raise ValueError(f"no option named {name!r}") from None


def positive_int(what: str) -> Callable[[str], int]:
    """An argparse ``type=`` for a count >= 1 (``--workers``, ``--max-active``, ...):
    its error names ``what`` is counted."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of {what} >= 1, got {text!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"expected a number of {what} >= 1, got {n}")
        return n
    parse.__name__ = f"number of {what}"
    return parse


def merge_options(parser: Parser, given: Mapping[str, Any]) -> dict[str, Any]:
    """Option defaults overlaid with ``given``; an unknown name is a :class:`UsageError`."""
    values = parser.defaults()
    for key, value in given.items():
        if key not in values:
            hint = suggest(key, list(values))
            raise UsageError(
                f"run() got an unknown option {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + " (a plugin that provides it may be disabled or not installed)")
        values[key] = value
    return values


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from ``--param`` into a dict (values stay strings)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(
                f"--param {pair!r}: expected NAME=VALUE with NAME a Python identifier")
        out[key] = value
    return out


def check_run_timeout(value: Any) -> float | None:
    """``run_timeout`` as float seconds (None: no limit); anything but a finite number > 0
    is a :class:`UsageError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise UsageError(f"run_timeout must be a number of seconds > 0, got {value!r} "
                         "(--run-timeout S / run(run_timeout=S))")
    return float(value)
