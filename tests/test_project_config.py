"""Project configuration (issue 19 item 3): ``[tool.flowdeco]`` / ``flowdeco.toml``,
``FLOWDECO_ADDOPTS``, module-level ``flowdeco_plugins``, precedence, ``config`` command."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import flowdeco
from flowdeco import cli

from test_cli import assert_one_error_line, fd


@pytest.fixture
def proj(tmp_path, monkeypatch):
    """A project folder as cwd; sys.path and the modules imported from it restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("FLOWDECO_ADDOPTS", raising=False)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        if str(getattr(mod, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


FLOW = textwrap.dedent("""
    from flowdeco import task

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1
""")


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return int(code), out, err


def config_rows(out: str) -> dict[str, tuple[str, str]]:
    """``config`` output: {option: (value, source)}."""
    rows = {}
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("option"))
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        name, rest = ln.split(None, 1)
        value, _, source = rest.rpartition("  ")
        rows[name] = (value.strip(), source.strip())
    return rows


# --------------------------------------------------------------------------- the file


def test_pyproject_table_gives_option_defaults(proj, capsys):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "pyproject.toml", """
        [project]
        name = "demo"

        [tool.flowdeco]
        state_dir = "custom-state"
        workers = 3
        exitfirst = true
    """)
    code, out, err = run_cli("config", flow.name, capsys=capsys)
    assert code == 0, err
    assert f"config file: {proj / 'pyproject.toml'} [tool.flowdeco]" in out
    rows = config_rows(out)
    assert rows["state_dir"] == ("'custom-state'", "pyproject.toml")
    assert rows["workers"] == ("3", "pyproject.toml")
    assert rows["stop_on_error"] == ("True", "pyproject.toml")
    code, out, err = run_cli(flow.name, "--run-id", "r1", capsys=capsys)
    assert code == 0, err
    assert (proj / "custom-state" / "runs" / "r1" / "audit.jsonl").exists()
    assert not (proj / ".flowdeco").exists()


def test_the_file_is_found_from_the_targets_folder_upwards_not_the_cwd(proj, capsys):
    write(proj / "project" / "flowdeco.toml", 'state_dir = "from-toml"\n')
    flow = write(proj / "project" / "flows" / f"{unique('flow')}.py", FLOW)
    elsewhere = proj / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere / "flowdeco.toml", 'state_dir = "wrong"\n')
    code, out, err = run_cli("config", str(flow), capsys=capsys)
    assert code == 0, err
    assert f"config file: {proj / 'project' / 'flowdeco.toml'}" in out
    assert config_rows(out)["state_dir"] == ("'from-toml'", "flowdeco.toml")


def test_flowdeco_toml_wins_over_pyproject_in_the_same_folder_and_a_bare_pyproject_is_skipped(
        proj, capsys):
    write(proj / "flowdeco.toml", "workers = 2\n")
    write(proj / "sub" / "pyproject.toml", '[project]\nname = "x"\n')
    flow = write(proj / "sub" / f"{unique('flow')}.py", FLOW)
    write(proj / "pyproject.toml", "[tool.flowdeco]\nworkers = 5\n")
    code, out, err = run_cli("config", str(flow), capsys=capsys)
    assert code == 0, err
    assert config_rows(out)["workers"] == ("2", "flowdeco.toml")


def test_a_plugins_option_takes_its_default_from_the_file(proj, capsys):
    """``retries`` is the retry plugin's option, ``timeout`` the timeout plugin's."""
    name = unique("flaky")
    write(proj / f"{name}.py", """
        from flowdeco import task
        CALLS = []

        @task
        def flaky():
            CALLS.append(1)
            if len(CALLS) < 3:
                raise ValueError("not yet")
            return len(CALLS)
    """)
    write(proj / "flowdeco.toml", "retries = 2\nno_state = true\n")
    code, out, err = run_cli(f"{name}.py", capsys=capsys)
    assert code == 0, out + err
    assert sys.modules[name].CALLS == [1, 1, 1]


@pytest.mark.parametrize("body, expect", [
    ("wokers = 3\n", "unknown key 'wokers'; did you mean 'workers'?"),
    ("[limitz]\ndb = 2\n", "unknown key 'limitz'"),
    ("workers = 0\n", "workers = 0: expected a number of workers >= 1"),
    ('exitfirst = "yes"\n', "exitfirst = 'yes': expected true or false"),
    ('graph = "png"\n', "graph = 'png': "),
    ("workers = [\n", "not valid TOML"),
    ('plugins = "nonexistent_plugin_zz"\n', "-p nonexistent_plugin_zz: unknown plugin"),
])
def test_a_bad_file_is_one_error_line_naming_file_and_key_exit_4(proj, capsys, body, expect):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "flowdeco.toml", body)
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 4
    line = assert_one_error_line(err)
    assert expect in line
    if "plugin" not in expect:
        assert str(proj / "flowdeco.toml") in line


def test_a_file_that_is_not_utf8_is_one_line_not_a_traceback(proj, capsys):
    """QA: a flowdeco.toml in another encoding crashed with UnicodeDecodeError (exit 3)."""
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    cfg = proj / "flowdeco.toml"
    cfg.write_bytes(b"workers = 2\n# caf\xe9\n")
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 4, out + err
    line = assert_one_error_line(err)
    assert "not valid TOML: not UTF-8" in line and str(cfg) in line


@pytest.mark.parametrize("body, where, run_id", [
    ("state_dir = 5\n", "5", None),
    ("run_id = 12\nstate_dir = 's'\n", "s", "12"),
    ("run_id = 2026-01-01\nstate_dir = 's'\n", "s", "2026-01-01"),
])
def test_a_number_or_date_for_a_text_option_means_what_the_flag_would(proj, capsys, body,
                                                                     where, run_id):
    """QA: `state_dir = 5` crashed (TypeError, exit 3) and `run_id = 12` was refused, while
    `--state-dir 5` / `--run-id 12` work: a file value is what argparse would make of it."""
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "flowdeco.toml", body)
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 0, out + err
    assert (proj / where / "state.db").exists()
    if run_id:
        assert (proj / where / "runs" / run_id / "audit.jsonl").exists()


def test_a_bad_key_in_pyproject_names_the_table(proj, capsys):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "pyproject.toml", "[tool.flowdeco]\nstate_dri = 'x'\n")
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 4
    line = assert_one_error_line(err)
    assert f"{proj / 'pyproject.toml'} [tool.flowdeco]: unknown key 'state_dri'" in line


# --------------------------------------------------------------------------- precedence


def test_precedence_command_line_over_environment_over_file(proj, capsys, monkeypatch):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "flowdeco.toml", 'workers = 2\nstate_dir = "file-state"\nrun_id = "from-file"\n')
    monkeypatch.setenv("FLOWDECO_ADDOPTS", "-w 3 --state-dir 'env state'")
    code, out, err = run_cli("config", flow.name, "-w", "4", capsys=capsys)
    assert code == 0, err
    rows = config_rows(out)
    assert rows["workers"] == ("4", "command line")
    assert rows["state_dir"] == ("'env state'", "FLOWDECO_ADDOPTS")
    assert rows["run_id"] == ("'from-file'", "flowdeco.toml")
    assert "FLOWDECO_ADDOPTS: -w 3 --state-dir env state" in out
    # and the run itself uses them
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 0, err
    assert (proj / "env state" / "runs" / "from-file" / "audit.jsonl").exists()


def test_a_bad_flowdeco_addopts_is_a_usage_error(proj, capsys, monkeypatch):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    monkeypatch.setenv("FLOWDECO_ADDOPTS", "--workers 'unclosed")
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 4
    assert "FLOWDECO_ADDOPTS" in assert_one_error_line(err)


def test_help_describes_configuration_and_the_config_command(proj, capsys):
    code, out, err = run_cli("--help", capsys=capsys)
    assert code == 0
    assert "FLOWDECO_ADDOPTS" in out and "[tool.flowdeco]" in out
    assert "config (option values and where they come from)" in out


def test_config_without_a_file_says_where_it_looked(proj, capsys):
    code, out, err = run_cli("config", capsys=capsys)
    assert code == 0, err
    assert f"config file: none (looked for flowdeco.toml and pyproject.toml [tool.flowdeco] " \
           f"in {proj}" in out


# --------------------------------------------------------------------------- plugins


PLUGIN = """
    from flowdeco import hookimpl

    SEEN = []

    @hookimpl
    def flowdeco_addoption(parser):
        parser.addoption("--{flag}", dest="{dest}", default="unset", group="{dest}")

    @hookimpl
    def flowdeco_run_start(run):
        SEEN.append(run.config.getoption("{dest}"))
"""


def plugin_source(dest: str) -> str:
    return PLUGIN.format(flag=dest.replace("_", "-"), dest=dest)


def test_plugins_next_to_the_flow_file_resolve_from_another_folder(proj, capsys):
    """``-p NAME`` finds a plugin module beside the flow file (it failed before)."""
    plug = unique("slowest")
    write(proj / "flows" / f"{plug}.py", plugin_source(plug))
    flow = write(proj / "flows" / f"{unique('flow')}.py", FLOW)
    code, out, err = run_cli(str(flow), "-p", plug, f"--{plug.replace('_', '-')}", "hi",
                             "--no-state", capsys=capsys)
    assert code == 0, err
    assert sys.modules[plug].SEEN == ["hi"]


def test_module_level_flowdeco_plugins_are_loaded_cli_and_run(proj, capsys):
    plug = unique("modplug")
    write(proj / "flows" / f"{plug}.py", plugin_source(plug))
    flow = write(proj / "flows" / f"{unique('flow')}.py",
                 FLOW + f"\nflowdeco_plugins = [{plug!r}]\n")
    write(proj / "flowdeco.toml", f'{plug} = "from the file"\nno_state = true\n')
    code, out, err = run_cli(str(flow), capsys=capsys)
    assert code == 0, err
    assert sys.modules[plug].SEEN == ["from the file"]   # its option's default from the file
    code, out, err = run_cli(str(flow), f"--{plug.replace('_', '-')}", "cli", capsys=capsys)
    assert code == 0, err
    assert sys.modules[plug].SEEN[-1] == "cli"
    result = flowdeco.run(str(flow), state_dir=None, **{plug: "python"})
    assert result.ok and sys.modules[plug].SEEN[-1] == "python"


def test_bad_flowdeco_plugins_is_a_usage_error(proj, capsys):
    flow = write(proj / f"{unique('flow')}.py", FLOW + "\nflowdeco_plugins = 3\n")
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 4
    assert "flowdeco_plugins must be a list of plugin names" in assert_one_error_line(err)


def test_file_plugins_load_and_block(proj, capsys):
    plug = unique("fileplug")
    write(proj / f"{plug}.py", plugin_source(plug))
    flow = write(proj / "flows" / f"{unique('flow')}.py", FLOW)
    write(proj / "flowdeco.toml", f'plugins = ["{plug}", "no:audit"]\nrun_id = "x1"\n')
    code, out, err = run_cli(str(flow), capsys=capsys)
    assert code == 0, err
    assert sys.modules[plug].SEEN == ["unset"]
    assert (proj / "flows" / ".flowdeco").exists() or (proj / ".flowdeco").exists()
    assert not list(proj.rglob("audit.jsonl"))   # the audit plugin was blocked


def test_the_config_file_applies_in_a_subprocess(tmp_path):
    write(tmp_path / "flowdeco.toml", 'state_dir = "st"\nrun_id = "sub1"\n')
    write(tmp_path / "flow_sub.py", FLOW)
    proc = fd("flow_sub.py", cwd=tmp_path, env={"FLOWDECO_ADDOPTS": "-q"})
    assert proc.returncode == 0, proc.stderr
    trail = tmp_path / "st" / "runs" / "sub1" / "audit.jsonl"
    assert [json.loads(ln)["event"] for ln in trail.read_text().splitlines()][-1] == \
        "run_finished"


def test_flowdeco_addopts_plugins_apply(proj, capsys, monkeypatch):
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    monkeypatch.setenv("FLOWDECO_ADDOPTS", "-p no:audit --run-id e1")
    code, out, err = run_cli(flow.name, capsys=capsys)
    assert code == 0, err
    assert (proj / ".flowdeco").exists()
    assert not list(proj.rglob("audit.jsonl"))


def test_python_run_takes_options_as_arguments_not_from_the_file(proj):
    """The file and FLOWDECO_ADDOPTS are the command line's; run() is explicit."""
    flow = write(proj / f"{unique('flow')}.py", FLOW)
    write(proj / "flowdeco.toml", 'state_dir = "from-file"\n')
    result = flowdeco.run(str(flow), run_id="py1")
    assert result.ok
    assert (proj / ".flowdeco" / "runs" / "py1").exists()
    assert not (proj / "from-file").exists()


def test_serve_takes_option_defaults_from_the_file_and_the_environment(proj, capsys,
                                                                        monkeypatch):
    import datetime as dt

    from flowdeco import FakeClock
    from flowdeco.manager import make_pluginmanager
    from flowdeco.plugins import serve as serve_mod

    name = unique("hourly")
    write(proj / "flows" / f"{name}.py", """
        from flowdeco import task

        @task(cron="0 * * * *")
        def report():
            return 1
    """)
    write(proj / "flows" / "flowdeco.toml", 'state_dir = "served"\n')
    monkeypatch.setenv("FLOWDECO_ADDOPTS", "--tz UTC")
    clock = FakeClock(wall=dt.datetime(2026, 6, 1, 10, 20, tzinfo=dt.timezone.utc).timestamp())
    rc = serve_mod.main([f"flows/{name}.py", "--max-ticks", "1"], make_pluginmanager(),
                        clock=clock)
    assert rc == 0, capsys.readouterr().err
    assert (proj / "served" / "runs" / f"{name}-20260601T110000Z" / "audit.jsonl").exists()
    capsys.readouterr()
    write(proj / "flows" / "flowdeco.toml", 'state_dri = "served"\n')
    rc = serve_mod.main([f"flows/{name}.py", "--max-ticks", "1"], make_pluginmanager(),
                        clock=clock)
    assert rc == 4
    assert "unknown key 'state_dri'" in assert_one_error_line(capsys.readouterr().err)
