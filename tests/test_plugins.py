"""The plugin system (§5): hooks, options, -p / -p no:, entry points, manager reuse."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import flowdeco
from flowdeco import (CollectionError, FakeClock, Finish, FlowError, Reschedule, Restored,
                      UsageError, cli, hookimpl)
from flowdeco import manager
from flowdeco.testing import run_flow

# --------------------------------------------------------------------------- helpers


class Recorder:
    """Records every reported event and the thread it arrived on."""

    def __init__(self):
        self.events = []
        self.threads = set()

    @hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)
        self.threads.add(threading.current_thread())

    def names(self, with_task=True):
        return [(e.name, e.task) if with_task else e.name for e in self.events]


TWO_TASKS = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def load(extract):
        return extract + 1
"""

FLAKY = """
    from flowdeco import task

    CALLS = []

    @task
    def flaky():
        CALLS.append(1)
        if len(CALLS) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    @task
    def after(flaky):
        return flaky + "!"
"""


# --------------------------------------------------------------------------- report


def test_report_receives_events_in_order_on_calling_thread(mods):
    _, path = mods.write_module("""
        from flowdeco import task

        @task
        def extract(ctx):
            ctx.log.info("inside", n=1)
            return 1

        @task
        def load(extract):
            return extract + 1

        @task
        def other():
            return 0
    """)
    rec = Recorder()
    caller = threading.current_thread()
    result = run_flow(str(path), plugins=[rec], workers=4, run_id="rep1")
    assert result.ok
    assert rec.threads == {caller}
    names = rec.names()
    assert names[0] == ("run_started", None)
    assert names[-1] == ("run_finished", None)
    for t in ("extract", "load", "other"):
        assert names.index(("task_started", t)) < names.index(("task_succeeded", t))
    assert names.index(("task_started", "extract")) < names.index(("inside", "extract")) \
        < names.index(("task_succeeded", "extract"))
    assert names.index(("task_succeeded", "extract")) < names.index(("task_started", "load"))
    assert all(e.run_id == "rep1" for e in rec.events)
    assert rec.events[-1].fields["status"] == "succeeded"
    done = [e for e in rec.events if e.name == "task_succeeded"]
    assert all(e.outcome is not None and e.outcome.status == "succeeded" for e in done)


def test_report_thread_with_a_worker_thread_caller(mods):
    _, path = mods.write_module(TWO_TASKS)
    rec = Recorder()
    box = {}

    def target():
        box["result"] = run_flow(str(path), plugins=[rec])
        box["thread"] = threading.current_thread()

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    assert box["result"].ok
    assert rec.threads == {box["thread"]}
    assert [n for n in rec.names(False) if n.startswith(("run_", "task_"))] == [
        "run_started", "task_started", "task_succeeded", "task_started", "task_succeeded",
        "run_finished"]


def test_plugin_objects_are_not_kept_for_the_next_run(mods):
    _, path = mods.write_module(TWO_TASKS)
    rec = Recorder()
    run_flow(str(path), plugins=[rec])
    n = len(rec.events)
    run_flow(str(path))
    assert len(rec.events) == n


# --------------------------------------------------------------------------- wrap / attempts


class WrapAll:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    @hookimpl
    def flowdeco_task_wrap(self, run, task):
        def deco(call):
            def wrapped(kwargs):
                with self.lock:
                    self.calls.append((task.name, dict(kwargs)))
                return call(kwargs)
            return wrapped
        return deco


class RetryOnce:
    def __init__(self):
        self.seen = []

    @hookimpl
    def flowdeco_attempt_done(self, run, task, attempt):
        self.seen.append((task.name, attempt.number, attempt.ok))
        if not attempt.ok and attempt.number == 1:
            return Reschedule(delay=0)
        return None


def test_wrap_sees_every_attempt_and_reschedule_retries(mods):
    _, path = mods.write_module(FLAKY)
    wrap, retry, rec = WrapAll(), RetryOnce(), Recorder()
    result = run_flow(str(path), plugins=[wrap, retry, rec])
    assert result.ok, result.outcomes
    out = result["flaky"]
    assert out.status == "succeeded" and out.attempts == 2 and out.result == "ok"
    assert result["after"].result == "ok!"
    assert [name for name, _ in wrap.calls] == ["flaky", "flaky", "after"]
    assert wrap.calls[2][1] == {"flaky": "ok"}
    assert retry.seen[0] == ("flaky", 1, False)
    retrying = [e for e in rec.events if e.name == "task_retrying"]
    assert len(retrying) == 1
    assert retrying[0].task == "flaky"
    assert retrying[0].fields["attempt"] == 1
    assert retrying[0].fields["delay"] == 0
    assert retrying[0].fields["error"] == "ValueError: first attempt fails"
    started = [e.fields["attempt"] for e in rec.events
               if e.name == "task_started" and e.task == "flaky"]
    assert started == [1, 2]
    assert not any(e.name == "task_failed" for e in rec.events)


def test_reschedule_is_in_the_audit_trail(mods):
    _, path = mods.write_module(FLAKY)
    result = flowdeco.run(str(path), plugins=[RetryOnce()], state_dir=mods.cwd / "st",
                          run_id="re1")
    assert result.ok
    lines = (mods.cwd / "st" / "runs" / "re1" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(ln) for ln in lines]
    names = [(e["event"], e.get("task"), e.get("attempt")) for e in events
             if e["event"] in ("task_started", "task_retrying", "task_succeeded")]
    assert names[:3] == [("task_started", "flaky", 1), ("task_retrying", "flaky", 1),
                         ("task_started", "flaky", 2)]
    ok = next(e for e in events if e["event"] == "task_succeeded" and e["task"] == "flaky")
    assert ok["attempts"] == 2


def test_without_attempt_done_a_failure_is_final(mods):
    _, path = mods.write_module(FLAKY)
    result = run_flow(str(path))
    assert result.status == "failed"
    assert result["flaky"].attempts == 1
    assert result["after"].status == "skipped" and result["after"].reason == "upstream"


class FinishPlugin:
    @hookimpl
    def flowdeco_run_start(self, run):
        run.on_success.add(run.graph.by_name["double"])
        run.on_success.add(run.graph.by_name["veto"])

    @hookimpl
    def flowdeco_attempt_done(self, run, task, attempt):
        if task.name == "broken":
            return Finish(result="fallback")
        if task.name == "double":
            assert attempt.ok
            return Finish(result=attempt.result * 10)
        if task.name == "veto":
            return Finish(error=RuntimeError("vetoed"))
        return None


def test_finish_replaces_result_or_error(mods):
    _, path = mods.write_module("""
        from flowdeco import task

        @task
        def broken():
            raise ValueError("nope")

        @task
        def uses_broken(broken):
            return broken + "!"

        @task
        def double():
            return 2

        @task
        def uses_double(double):
            return double + 1

        @task
        def veto():
            return "fine"
    """)
    result = run_flow(str(path), plugins=[FinishPlugin()])
    assert result["broken"].status == "succeeded"
    assert result["broken"].result == "fallback"
    assert result["uses_broken"].result == "fallback!"
    assert result["double"].result == 20
    assert result["uses_double"].result == 21
    assert result["veto"].status == "failed"
    assert result["veto"].error == "RuntimeError: vetoed"
    assert result.status == "failed"


# --------------------------------------------------------------------------- restore / delay


class RestoreA:
    @hookimpl
    def flowdeco_task_restore(self, run, task):
        if task.name == "a":
            return Restored(42)
        return None


def test_restore_skips_the_call_and_feeds_dependents(mods):
    _, path = mods.write_module("""
        from flowdeco import task

        CALLED = []

        @task
        def a():
            CALLED.append("a")
            return 1

        @task
        def b(a):
            return a + 1
    """)
    rec = Recorder()
    result = run_flow(str(path), plugins=[RestoreA(), rec])
    module = sys.modules[path.stem]
    assert module.CALLED == []
    assert result.ok
    assert result["a"].status == "restored"
    assert result["a"].result == 42
    assert result.results == {"a": 42, "b": 43}
    assert ("task_restored", "a") in rec.names()
    assert ("task_started", "a") not in rec.names()


class DelayLater:
    @hookimpl
    def flowdeco_task_delay(self, run, task):
        return 3600.0 if task.name == "later" else None


def test_delay_with_fake_clock_completes_instantly(mods):
    _, path = mods.write_module("""
        from flowdeco import task

        @task
        def now():
            return 1

        @task
        def later(now):
            return now + 1
    """)
    t0 = time.monotonic()
    result = run_flow(str(path), plugins=[DelayLater()], clock=FakeClock())
    elapsed = time.monotonic() - t0
    assert result.ok
    assert result.results == {"now": 1, "later": 2}
    assert elapsed < 5
    waited = result["later"].started_at - result["now"].finished_at
    assert waited >= dt.timedelta(seconds=3600)
    assert result.duration >= 3600


# --------------------------------------------------------------------------- options

OPTION_PLUGIN = """
    import os
    from flowdeco import hookimpl

    SEEN = []

    @hookimpl
    def flowdeco_addoption(parser):
        parser.addoption("--greeting", dest="greeting", default="hello",
                         help="what the test plugin says")

    @hookimpl
    def flowdeco_configure(config):
        value = config.getoption("greeting")
        SEEN.append(value)
        out = os.environ.get("FD_GREETING_OUT")
        if out:
            with open(out, "w") as f:
                f.write(value)
"""


def test_plugin_option_as_run_keyword(mods):
    name, _ = mods.write_module(OPTION_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    assert run_flow(str(flow), plugins=[name], greeting="hi").ok
    plugin = sys.modules[name]
    assert plugin.SEEN == ["hi"]
    assert run_flow(str(flow), plugins=[name]).ok
    assert plugin.SEEN == ["hi", "hello"]
    assert run_flow(str(flow), plugins=[plugin], greeting="obj").ok
    assert plugin.SEEN[-1] == "obj"


def test_plugin_option_unknown_without_the_plugin(mods):
    _, flow = mods.write_module(TWO_TASKS)
    with pytest.raises(UsageError, match="greeting"):
        run_flow(str(flow), greeting="hi")


def test_unknown_run_keyword_suggests(mods):
    name, _ = mods.write_module(OPTION_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    with pytest.raises(UsageError, match="did you mean 'workers'"):
        run_flow(str(flow), worker=2)
    with pytest.raises(UsageError, match="did you mean 'greeting'"):
        run_flow(str(flow), plugins=[name], greting="x")


def test_plugin_option_on_the_cli_in_process(mods, capsys):
    name, _ = mods.write_module(OPTION_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    assert cli.main([str(flow), "--no-state", "-p", name, "--greeting", "bye"]) == 0
    assert sys.modules[name].SEEN == ["bye"]
    assert cli.main(["--help", "-p", name]) == 0
    assert "--greeting" in capsys.readouterr().out
    assert cli.main([str(flow), "--no-state", "--greeting", "bye"]) == 4
    assert "--greeting" in capsys.readouterr().err


def test_plugin_option_on_the_cli_subprocess(mods):
    name, _ = mods.write_module(OPTION_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    out = mods.dir / "greeting.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(mods.dir),
                                                        os.environ.get("PYTHONPATH", "")]),
           "FD_GREETING_OUT": str(out)}
    proc = subprocess.run([sys.executable, "-m", "flowdeco", str(flow), "--no-state",
                           f"-p{name}", "--greeting", "salut"],
                          cwd=mods.cwd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "salut"


def test_disable_audit_by_name(mods):
    _, flow = mods.write_module(TWO_TASKS)
    st = mods.cwd / "st"
    assert run_flow(str(flow), state_dir=st, run_id="x", disable=["audit"]).ok
    assert not (st / "runs" / "x" / "audit.jsonl").exists()
    assert run_flow(str(flow), state_dir=st, run_id="y").ok
    assert (st / "runs" / "y" / "audit.jsonl").exists()


def test_core_plugin_cannot_be_disabled_from_python(mods):
    _, flow = mods.write_module(TWO_TASKS)
    with pytest.raises(UsageError, match="main"):
        run_flow(str(flow), disable=["main"])


def test_unknown_plugin_name_from_python(mods):
    _, flow = mods.write_module(TWO_TASKS)
    with pytest.raises(UsageError, match="nosuch_fd_plugin"):
        run_flow(str(flow), plugins=["nosuch_fd_plugin"])


# --------------------------------------------------------------------------- task options

RETRIES_FLOW = """
    from flowdeco import task

    @task(retries=2)
    def fetch():
        return 1
"""

CUSTOM_OPTION_FLOW = """
    from flowdeco import task

    @task(team="data")
    def owned():
        return 1
"""


class ClaimRetries:
    @hookimpl
    def flowdeco_task_options(self):
        return ["retries"]


class ClaimTeam:
    def __init__(self):
        self.teams = {}

    @hookimpl
    def flowdeco_task_options(self):
        return ["team"]

    @hookimpl
    def flowdeco_task_wrap(self, run, task):
        self.teams[task.name] = task.spec.options.get("team")


def test_unclaimed_task_option_is_a_collection_error(mods, capsys):
    _, flow = mods.write_module(RETRIES_FLOW)
    with pytest.raises(CollectionError) as info:
        run_flow(str(flow), disable=["retry"])
    assert "'fetch'" in str(info.value) and "retries" in str(info.value)
    assert cli.main([str(flow), "--no-state", "-p", "no:retry"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fetch'" in err[0] and "retries" in err[0]


def test_claimed_task_option_is_accepted(mods):
    _, flow = mods.write_module(RETRIES_FLOW)
    result = run_flow(str(flow), disable=["retry"], plugins=[ClaimRetries()])
    assert result.ok and result.results == {"fetch": 1}


def test_plugin_defined_task_option(mods):
    _, flow = mods.write_module(CUSTOM_OPTION_FLOW)
    with pytest.raises(CollectionError, match=r"'owned'.*team"):
        run_flow(str(flow))
    claim = ClaimTeam()
    assert run_flow(str(flow), plugins=[claim]).ok
    assert claim.teams == {"owned": "data"}


# --------------------------------------------------------------------------- entry points


class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name = name
        self.value = f"fake_module:{name}"
        self.group = "flowdeco"
        self._obj = obj
        self._error = error
        self.loads = 0

    def load(self):
        self.loads += 1
        if self._error is not None:
            raise self._error
        return self._obj


@pytest.fixture
def fake_eps(monkeypatch):
    """Install fake ``flowdeco`` entry points; managers built before are not reused."""
    eps: list[FakeEntryPoint] = []
    monkeypatch.setattr(manager, "entry_points", lambda: tuple(eps))
    monkeypatch.setattr(manager, "_POOL", {})
    return eps


def test_entry_point_plugin_is_loaded_and_can_be_blocked(mods, fake_eps, capsys):
    _, flow = mods.write_module(TWO_TASKS)
    rec = Recorder()
    fake_eps.append(FakeEntryPoint("fdfake", rec))
    assert run_flow(str(flow)).ok
    assert ("run_started", None) in rec.names()
    n = len(rec.events)
    assert run_flow(str(flow), disable=["fdfake"]).ok
    assert len(rec.events) == n
    assert cli.main([str(flow), "--no-state", "-p", "no:fdfake"]) == 0
    assert len(rec.events) == n
    assert cli.main([str(flow), "--no-state"]) == 0
    assert len(rec.events) > n
    capsys.readouterr()


def test_entry_point_by_name_with_p(mods, fake_eps, capsys):
    _, flow = mods.write_module(TWO_TASKS)
    rec = Recorder()
    fake_eps.append(FakeEntryPoint("fdfake2", rec))
    assert cli.main([str(flow), "--no-state", "-p", "fdfake2"]) == 0
    assert rec.names()[0] == ("run_started", None)
    assert rec.names().count(("run_started", None)) == 1  # loaded once, not twice
    capsys.readouterr()


def test_broken_entry_point_is_a_usage_error_unless_blocked(mods, fake_eps, capsys):
    _, flow = mods.write_module(TWO_TASKS)
    ep = FakeEntryPoint("fdbroken", error=ImportError("no module named zzz"))
    fake_eps.append(ep)
    with pytest.raises(UsageError, match="fdbroken"):
        run_flow(str(flow))
    assert cli.main([str(flow), "--no-state"]) == 4
    err = capsys.readouterr().err
    assert "fdbroken" in err and "no:fdbroken" in err and "Traceback" not in err
    loads = ep.loads
    assert run_flow(str(flow), disable=["fdbroken"]).ok
    assert cli.main([str(flow), "--no-state", "-p", "no:fdbroken"]) == 0
    assert ep.loads == loads  # a blocked plugin is not even imported
    capsys.readouterr()


def test_real_entry_point_distribution(tmp_path):
    """A ``.dist-info`` with ``entry_points.txt`` on PYTHONPATH, end to end."""
    site = tmp_path / "site"
    dist = site / "fdtest_epplugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fdtest-epplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[flowdeco]\nfdtestep = fdtest_epmod\n")
    (site / "fdtest_epmod.py").write_text(textwrap.dedent("""
        import os
        from flowdeco import hookimpl

        @hookimpl
        def flowdeco_configure(config):
            with open(os.environ["FD_EP_MARKER"], "a") as f:
                f.write("configured\\n")
    """))
    flow = tmp_path / "epflow.py"
    flow.write_text(textwrap.dedent(TWO_TASKS))
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "marker.txt"
    env = {**os.environ, "FD_EP_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def fd(*args):
        return subprocess.run([sys.executable, "-m", "flowdeco", str(flow), "--no-state", *args],
                              cwd=work, capture_output=True, text=True, timeout=60, env=env)

    proc = fd()
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "configured\n"
    marker.unlink()
    proc = fd("-p", "no:fdtestep")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- manager reuse

LEAKY_PLUGIN = """
    from flowdeco import hookimpl

    RECORDERS = []

    class Recorder:
        def __init__(self):
            self.run_ids = []

        @hookimpl
        def flowdeco_report(self, run, event):
            self.run_ids.append(run.run_id)

    @hookimpl
    def flowdeco_addoption(parser):
        parser.addoption("--leak", dest="leak", default=False, action="store_true")
        parser.addoption("--block-audit-trail", dest="block_audit_trail", default=False,
                         action="store_true")

    @hookimpl
    def flowdeco_configure(config):
        if config.getoption("leak"):
            rec = Recorder()
            RECORDERS.append(rec)
            config.pluginmanager.register(rec, "x")   # never unregistered
        if config.getoption("block_audit_trail"):
            config.pluginmanager.set_blocked("audit-trail")
"""


def test_plugin_registered_during_a_run_does_not_leak_into_the_next(mods):
    name, _ = mods.write_module(LEAKY_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    assert run_flow(str(flow), plugins=[name], leak=True, run_id="one").ok
    plugin = sys.modules[name]
    (rec,) = plugin.RECORDERS
    assert set(rec.run_ids) == {"one"}
    for i in range(3):
        assert run_flow(str(flow), plugins=[name], run_id=f"next{i}").ok
    assert set(rec.run_ids) == {"one"}
    assert len(plugin.RECORDERS) == 1


def test_blocked_name_during_a_run_does_not_leak_into_the_next(mods):
    name, _ = mods.write_module(LEAKY_PLUGIN)
    _, flow = mods.write_module(TWO_TASKS)
    st = mods.cwd / "st"
    assert run_flow(str(flow), plugins=[name], block_audit_trail=True, state_dir=st,
                    run_id="b1").ok
    assert not (st / "runs" / "b1" / "audit.jsonl").exists()
    assert run_flow(str(flow), plugins=[name], state_dir=st, run_id="b2").ok
    assert (st / "runs" / "b2" / "audit.jsonl").exists()


def test_pooled_managers_keep_working_across_runs(mods):
    _, flow = mods.write_module(TWO_TASKS)
    st = mods.cwd / "st"
    for i in range(6):
        result = run_flow(str(flow), state_dir=st, run_id=f"p{i}")
        assert result.ok and result.results == {"extract": 1, "load": 2}
        assert (st / "runs" / f"p{i}" / "audit.jsonl").exists()


def test_parser_defaults_are_a_fresh_dict_that_follows_new_options():
    """A pooled parser builds its defaults once: each run still gets its own dict, and an
    option declared later is in it."""
    from flowdeco.config import Config, Parser, merge_options
    parser = Parser()
    parser.addoption("--a", dest="a", default=1)
    first = merge_options(parser, {"a": 5})
    assert first == {"a": 5} and parser.defaults() == {"a": 1}
    parser.defaults()["a"] = 9
    parser.addoption("--b", dest="b", default=2)
    assert parser.defaults() == {"a": 1, "b": 2}
    config = Config(manager.make_pluginmanager(load_entrypoints=False), parser,
                    merge_options(parser, {"b": 3}))
    assert (config.getoption("a"), config.getoption("b"), vars(config.option)) == \
        (1, 3, {"a": 1, "b": 3})


def test_failed_configure_releases_cleanly(mods):
    name, _ = mods.write_module("""
        from flowdeco import FlowError, hookimpl

        @hookimpl
        def flowdeco_addoption(parser):
            parser.addoption("--explode", dest="explode", default=False, action="store_true")

        @hookimpl
        def flowdeco_configure(config):
            if config.getoption("explode"):
                raise FlowError("configure refused")
    """)
    _, flow = mods.write_module(TWO_TASKS)
    with pytest.raises(FlowError, match="configure refused"):
        run_flow(str(flow), plugins=[name], explode=True)
    assert run_flow(str(flow), plugins=[name]).ok


def test_p_naming_a_module_already_loaded_under_another_name_loads_it_once(
        write_module, monkeypatch):
    """``-p flowdeco_otel`` while the installed entry point ``otel`` already loaded that
    module: once, not pluggy's "already registered" traceback."""
    import importlib
    import importlib.metadata
    write_module("from flowdeco import hookimpl\n", name="fd_twice")
    mod = importlib.import_module("fd_twice")
    ep = importlib.metadata.EntryPoint("twice", "fd_twice", "flowdeco")
    monkeypatch.setattr(manager, "entry_points", lambda: (ep,))
    pm = manager.make_pluginmanager(["fd_twice"])
    assert [p for p in pm.get_plugins() if p is mod] == [mod]
    assert pm.get_plugin("twice") is mod
