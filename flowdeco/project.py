"""Project configuration, the pytest way: a config file, ``FLOWDECO_ADDOPTS``, ``flowdeco_plugins``.

- **The file**: ``flowdeco.toml`` (top-level keys) or ``pyproject.toml``
  (the ``[tool.flowdeco]`` table), looked for in the target's folder, then
  each parent folder; the first folder holding either wins (``flowdeco.toml``
  before ``pyproject.toml``; a ``pyproject.toml`` without ``[tool.flowdeco]``
  does not count).  Its keys give defaults to options: a key is an option's
  ``run()`` name (``workers``, ``state_dir``, ``stop_on_error``, ``log_format``)
  or its long flag without dashes (``exitfirst``, ``state-dir``), for any
  option a loaded plugin declares; an unknown key is an error naming the file
  and the key.  ``plugins = ["slowest", "no:progress"]`` loads/blocks plugins
  like ``-p``; a table (``[tool.flowdeco.limits]``) feeds a repeatable
  ``NAME=VALUE`` option (``--limit``, ``--param``).
- **The environment**: ``FLOWDECO_ADDOPTS`` holds command-line arguments
  (shell quoting) put before the real ones, like ``PYTEST_ADDOPTS``.
- **Precedence**: command line > ``FLOWDECO_ADDOPTS`` > file > the option's
  default (a repeatable option accumulates: file, then environment, then
  command line).  ``python -m flowdeco config [TARGET] [options]`` shows each
  value and where it came from.
- **The flow module**: a module-level ``flowdeco_plugins = ["name", ...]``
  in the target module names plugins it needs (like ``pytest_plugins``); the
  module's folder is on ``sys.path`` when plugins load, so a plugin module
  next to the flow file resolves from any working directory.

The file and the environment apply to the command line; :func:`flowdeco.run`
takes its options as arguments (module ``flowdeco_plugins`` apply to both).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import UsageError, suggest

#: config files looked for in each folder, in this order
CONFIG_FILES = ("flowdeco.toml", "pyproject.toml")
#: the environment variable of extra command-line arguments
ADDOPTS = "FLOWDECO_ADDOPTS"
#: the module-level name of the plugins a flow module needs
MODULE_PLUGINS = "flowdeco_plugins"
#: flags that take a value (core and built-in plugins', serve's), to find TARGET before
#: every plugin has declared its flags
VALUED_FLAGS = ("-w", "--workers", "--executor", "--param", "--param-env", "--secret",
                "--run-id", "-k", "--graph", "--state-dir", "-p", "--run-timeout", "--limit",
                "--resume", "--log-format", "--store", "--rerun", "--timeout", "--retries",
                "--cron", "--tz", "--max-ticks")


class ProjectConfig:
    """The config file found for a target (``path`` None: none) and its table."""

    __slots__ = ("path", "values")

    def __init__(self, path: Path | None = None, values: Mapping[str, Any] | None = None):
        self.path = path
        self.values: Mapping[str, Any] = values or {}

    @property
    def where(self) -> str:
        """How errors name the file and table."""
        if self.path is None:
            return "(no config file)"
        return f"{self.path} [tool.flowdeco]" if self.path.name == "pyproject.toml" \
            else str(self.path)

    def plugins(self) -> tuple[list[str], list[str]]:
        """``plugins = [...]``: names to load and names to block (``no:NAME``)."""
        raw = self.values.get("plugins", ())
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(p, str) for p in raw):
            raise UsageError(f"{self.where}: plugins must be a list of plugin names, "
                             f"got {raw!r}")
        load = [p for p in raw if not p.startswith("no:")]
        block = [p[3:] for p in raw if p.startswith("no:")]
        return load, block

    def defaults(self, parser: Any) -> dict[str, Any]:
        """The file's values as option defaults ``{dest: value}``, checked and converted
        like the command line would; an unknown key is a :class:`UsageError`."""
        by_key: dict[str, Any] = {}
        for o in parser.options:
            by_key[o.dest] = o
            for flag in o.flags:
                if flag.startswith("--"):
                    by_key.setdefault(flag[2:].replace("-", "_"), o)
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            o = by_key.get(key.replace("-", "_"))
            if o is None:
                hint = suggest(key.replace("-", "_"), sorted(by_key))
                raise UsageError(
                    f"{self.where}: unknown key {key!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + " (keys are option names: python -m flowdeco --help lists the options;"
                      " a plugin's option needs that plugin loaded)")
            if o.dest in out:
                raise UsageError(f"{self.where}: {key!r} sets option {o.dest!r} a second time")
            out[o.dest] = _convert(o, key, value, self.where)
        return out


def _convert(o: Any, key: str, value: Any, where: str) -> Any:
    """A file value as the option's value (what argparse would make of the flag)."""
    kw = o.kwargs
    action = kw.get("action")
    bad = f"{where}: {key} = {value!r}: "
    if action in ("store_true", "store_false"):
        if not isinstance(value, bool):
            raise UsageError(bad + "expected true or false")
        return value
    if action == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(bad + "expected a count (0, 1, 2, ...)")
        return value
    if action == "append":
        if isinstance(value, Mapping):  # a table: NAME = VALUE pairs
            value = [f"{k}={v}" for k, v in value.items()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_one(kw, x, bad, bool(o.flags)) for x in value]
    return _one(kw, value, bad, bool(o.flags))


def _one(kw: Mapping[str, Any], value: Any, bad: str, flagged: bool = False) -> Any:
    conv = kw.get("type")
    if isinstance(value, (Mapping, list, tuple)) and conv is None:
        raise UsageError(bad + "expected a single value")
    if conv is None and flagged and isinstance(value, (int, float, _dt.date, _dt.time)) \
            and not isinstance(value, bool):
        # argparse hands a flag without type= text: `state_dir = 5` or `run_id = 2026-01-01`
        # means what `--state-dir 5` does (as a number or date it crashed or was refused);
        # a boolean stays one, as run() takes it (store = false)
        value = value.isoformat() if isinstance(value, (_dt.date, _dt.time)) else str(value)
    if conv is not None:
        try:
            value = conv(value if isinstance(value, str) else
                         ("true" if value is True else "false" if value is False else str(value)))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise UsageError(bad + str(exc)) from None
    choices = kw.get("choices")
    if choices is not None and value not in choices:
        raise UsageError(bad + f"expected one of {', '.join(map(str, choices))}")
    return value


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise UsageError(f"{path}: reading it needs Python 3.11 or the tomli package "
                             "(pip install 'flowdeco[toml]')") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: not UTF-8 (byte {exc.start}); save it as "
                         "UTF-8") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def find_config(start: Path) -> ProjectConfig:
    """The config file for a target in folder ``start`` (see the module docstring)."""
    folder = start.resolve()
    for d in (folder, *folder.parents):
        for name in CONFIG_FILES:
            path = d / name
            if not path.is_file():
                continue
            data = _load_toml(path)
            if name == "pyproject.toml":
                tool = data.get("tool", {})
                if not isinstance(tool, dict) or "flowdeco" not in tool:
                    continue
                data = tool["flowdeco"]
                if not isinstance(data, dict):
                    raise UsageError(f"{path}: [tool.flowdeco] must be a table")
            return ProjectConfig(path, data)
    return ProjectConfig()


def is_file_target(target: str) -> bool:
    """Whether a CLI target names a ``.py`` file (or a package folder)."""
    base = target.rsplit(":", 1)[0] if ":" in target[2:] else target
    return Path(base).exists() and (base.endswith(".py") or Path(base).is_dir())


def target_folder(target: str | None) -> Path:
    """The folder the config search starts from: a file target's folder, else the
    working directory (a module name is found from there)."""
    if target:
        base = target.rsplit(":", 1)[0] if ":" in target[2:] else target
        p = Path(base)
        if p.is_file():
            return p.parent
        if p.is_dir():
            return p
    return Path.cwd()


def env_args(environ: Mapping[str, str] | None = None) -> list[str]:
    """``FLOWDECO_ADDOPTS`` split like a shell would."""
    text = (os.environ if environ is None else environ).get(ADDOPTS, "")
    if not text:
        return []
    import shlex
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{ADDOPTS}={text!r}: {exc}") from None


def guess_target(args: Sequence[str], takes_value: Iterable[str]) -> str | None:
    """The TARGET in ``args`` before the full parser exists: the first argument that
    is neither a flag nor the value of a flag known to take one."""
    valued = set(takes_value)
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--":
            continue
        if a.startswith("-") and len(a) > 1:
            if "=" not in a and a in valued:
                skip = True
            continue
        return a
    return None


def command_defaults(parser: Any, argv: Sequence[str]) -> dict[str, Any]:
    """The config file's option defaults for a plugin command that runs a TARGET
    (``serve``): the file found from the target's folder upwards, checked against
    ``parser``'s options."""
    guess = guess_target(list(argv), VALUED_FLAGS)
    return find_config(target_folder(guess)).defaults(parser)


def module_plugins(module: Any) -> list[str]:
    """A flow module's ``flowdeco_plugins`` (names), checked."""
    raw = getattr(module, MODULE_PLUGINS, None)
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(p, str) for p in raw):
        raise UsageError(f"{getattr(module, '__file__', None) or module.__name__}: "
                         f"{MODULE_PLUGINS} must be a list of plugin names, got {raw!r}")
    return list(raw)


def put_on_path(folder: Path | None) -> None:
    """Make plugin modules in ``folder`` importable by name (pytest's prepend mode)."""
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def target_module(target: str) -> Any:
    """The module a CLI target names (``file.py``, ``package.module``, ``x.py:flow``),
    imported as collection would (the same module object is collected later)."""
    from .collect import _looks_like_path, load_file, load_module
    base = target
    if ":" in target[2:]:
        base = target.rsplit(":", 1)[0]
    return load_file(Path(base)) if _looks_like_path(base) or Path(base).is_file() \
        else load_module(base)


class ConfigSources:
    """What ``python -m flowdeco config`` shows: the config file, ``FLOWDECO_ADDOPTS``,
    the option values after the file and the environment (``env_values``) and after the
    command line too (``values``), the plugins each source asked for."""

    def __init__(self, config: ProjectConfig, env: list[str], parser: Any, file: dict,
                 env_values: dict, values: dict, file_plugins: list[str],
                 module_plugins: list[str], target: str | None):
        self.config, self.env, self.parser, self.file = config, env, parser, file
        self.env_values, self.values = env_values, values
        self.file_plugins, self.module_plugins, self.target = file_plugins, module_plugins, target


def render_config(src: ConfigSources) -> str:
    """The ``config`` command's report (precedence: command line > FLOWDECO_ADDOPTS > file)."""
    folder = target_folder(src.target)
    lines = [f"config file: {src.config.where}" if src.config.path is not None else
             f"config file: none (looked for flowdeco.toml and pyproject.toml [tool.flowdeco] "
             f"in {folder} and its parents)",
             f"{ADDOPTS}: {' '.join(src.env) if src.env else '(not set)'}",
             "precedence: command line > FLOWDECO_ADDOPTS > config file > default"]
    if src.file_plugins:
        lines.append(f"plugins from the config file: {', '.join(src.file_plugins)}")
    if src.module_plugins:
        lines.append(f"plugins from {src.target} ({MODULE_PLUGINS}): "
                     f"{', '.join(src.module_plugins)}")
    rows = []
    for o in src.parser.options:
        d = o.dest
        value = src.values.get(d)
        if value != src.env_values.get(d):
            where = "command line"
        elif value != src.file.get(d, o.default):
            where = ADDOPTS
        elif d in src.file:
            where = src.config.path.name
        else:
            continue
        if d == "param":  # values may be secrets: names only
            value = [str(x).partition("=")[0] + "=***" for x in value]
        rows.append((d, repr(value), where))
    if rows:
        w1 = max(len(r[0]) for r in rows)
        w2 = max(len(r[1]) for r in rows)
        lines.append("")
        lines.append(f"{'option':<{w1}}  {'value':<{w2}}  from")
        lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    lines.append("")
    lines.append("every other option has its default (python -m flowdeco --help lists them)")
    return "\n".join(lines)
