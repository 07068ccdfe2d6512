"""The CLI against a cluster started from the command line (``dask scheduler``, ``dask worker``).

Not a ``LocalCluster``: the scheduler and two workers are separate
processes started in a folder that is *not* the flow's, so nothing on their
``sys.path`` knows the flow -- the situation of a user who starts a cluster
and points ``python -m flowdeco flow.py --dask-address`` at it.  The flow
module and the sibling module it imports reach the cluster only through the
plugin's upload (``--dask-upload``, on by default with ``--dask-address``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("flowdeco_dask")
distributed = pytest.importorskip("distributed")

#: starting Python processes that import Dask on a loaded 2-core machine can be slow
STARTUP = 120.0
RUN = 180.0


def _wait_for(what: str, ready, procs, deadline: float) -> None:
    """Poll ``ready()`` until true; fail naming ``what`` (with the logs) if a process died or time ran out."""
    while not ready():
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: {p.args[3]} exited with {p.returncode} before it was ready:\n"
                            + Path(p.log).read_text())
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not ready after {STARTUP:.0f}s")
        time.sleep(0.1)


def _start(args, cwd: Path, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    try:
        p = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=cwd, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    p.log = str(log)  # type: ignore[attr-defined]
    return p


def _stop(procs) -> None:
    """Stop the cluster processes this fixture started (their own process groups), workers first."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker --nworkers 1 --nthreads 1``, in their own folder."""
    home = tmp_path_factory.mktemp("cluster")
    sched_file = home / "scheduler.json"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(["scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", str(sched_file)],
                            home, home / "scheduler.log"))
        deadline = time.monotonic() + STARTUP
        _wait_for("dask scheduler", lambda: sched_file.exists() and sched_file.stat().st_size,
                  procs, deadline)
        address = json.loads(sched_file.read_text())["address"]
        for i in (1, 2):
            wdir = home / f"w{i}"
            wdir.mkdir()
            procs.append(_start(["worker", address, "--nworkers", "1", "--nthreads", "1",
                                 "--no-dashboard", "--local-directory", str(wdir)],
                                home, home / f"worker{i}.log"))
        with distributed.Client(address, timeout=f"{STARTUP:.0f}s",
                                set_as_default=False) as client:
            client.wait_for_workers(2, timeout=STARTUP)
            yield SimpleNamespace(address=address, client=client, home=home)
    finally:
        _stop(procs[::-1])


def flowdeco(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m flowdeco ARGS`` as a user runs it (this worktree's flowdeco, via PYTHONPATH)."""
    return subprocess.run([sys.executable, "-m", "flowdeco", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=RUN)


def _write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


FLOW = """
    import json
    import os
    from pathlib import Path
    from flowdeco import task
    from {helper} import scale

    @task
    def numbers():
        return [1, 2, 3]

    @task
    def scaled(numbers):
        return [scale(n) for n in numbers]

    @task
    def report(scaled, out):
        # workers share the driver's disk here (localhost), not its memory
        Path(out).write_text(json.dumps({{"total": sum(scaled), "pid": os.getpid()}}))
"""


def _registered(client) -> list[str]:
    """The plugin names the scheduler holds (worker plugins and its own)."""
    def names(dask_scheduler):
        return sorted(map(str, [*dask_scheduler.worker_plugins, *dask_scheduler.plugins]))
    return client.run_on_scheduler(names)


def test_file_flow_and_its_sibling_module_run_on_the_cluster(dask_cluster, tmp_path):
    flows, elsewhere, out = tmp_path / "flows", tmp_path / "elsewhere", tmp_path / "out.json"
    elsewhere.mkdir()
    _write(flows, "fdc_helper.py", """
        def scale(n):
            return n * 10
    """)
    flow = _write(flows, "fdc_flow.py", FLOW.format(helper="fdc_helper"))
    before = _registered(dask_cluster.client)
    args = (flow, "--executor", "dask", "--dask-address", dask_cluster.address, "--no-state",
            "--param", f"out={out}", "-q")
    proc = flowdeco(*args, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "3 succeeded" in proc.stdout
    got = json.loads(out.read_text())
    assert got["total"] == 60
    assert got["pid"] in set(dask_cluster.client.run(os.getpid).values())
    # the run leaves nothing registered on the cluster
    assert _registered(dask_cluster.client) == before

    # an edited sibling reaches the long-lived workers and scheduler: no stale module
    _write(flows, "fdc_helper.py", """
        def scale(n):
            return n * 100
    """)
    proc = flowdeco(*args, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["total"] == 600


def test_unimportable_module_fails_before_anything_runs_in_one_line(dask_cluster, tmp_path):
    flows, elsewhere, state = tmp_path / "flows", tmp_path / "elsewhere", tmp_path / "st"
    elsewhere.mkdir()
    # a package in a subfolder: the flow's folder holds no lib.py, so nothing uploads it
    _write(flows / "fdclib", "__init__.py", "")
    _write(flows / "fdclib", "tools.py", """
        def scale(n):
            return n + 1
    """)
    flow = _write(flows, "fdc_pkgflow.py", FLOW.format(helper="fdclib.tools"))
    before = _registered(dask_cluster.client)
    proc = flowdeco(flow, "--executor", "dask", "--dask-address", dask_cluster.address,
                    "--state-dir", state, "--run-id", "bad", "--param", f"out={tmp_path / 'out'}",
                    cwd=elsewhere)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("flowdeco: error: ")
    assert "'fdc_pkgflow'" in line and "No module named 'fdclib'" in line
    assert "install" in line
    assert "Traceback" not in proc.stderr and "distributed" not in proc.stderr
    assert not (state / "runs" / "bad").exists()   # refused before the run started
    assert not (tmp_path / "out").exists()
    assert _registered(dask_cluster.client) == before   # the upload was taken back


def test_no_dask_upload_names_the_flag(dask_cluster, tmp_path):
    flows, elsewhere = tmp_path / "flows", tmp_path / "elsewhere"
    elsewhere.mkdir()
    flow = _write(flows, "fdc_alone.py", """
        from flowdeco import task

        @task
        def one():
            return 1
    """)
    proc = flowdeco(flow, "--executor", "dask", "--dask-address", dask_cluster.address,
                    "--no-state", "--no-dask-upload", cwd=elsewhere)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    [line] = proc.stderr.strip().splitlines()
    assert "'fdc_alone'" in line and "--dask-upload" in line, line
    # and with the upload (the default) the same flow runs
    proc = flowdeco(flow, "--executor", "dask", "--dask-address", dask_cluster.address,
                    "--no-state", "-q", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr


CRASH = """
    import os
    from pathlib import Path
    from flowdeco import task

    @task(retries=1)
    def crash(marker):
        # the first attempt kills its worker: Dask's scheduler and nanny log about it
        if not Path(marker).exists():
            Path(marker).write_text("")
            os._exit(1)
        return 1
"""


def test_dask_log_lines_follow_quiet(tmp_path):
    flow = _write(tmp_path / "flows", "fdc_crash.py", CRASH)
    got = {}
    for quiet in ((), ("-q",)):
        marker = tmp_path / f"marker{len(quiet)}"
        proc = flowdeco(flow, "--executor", "dask", "-w", "2", "--no-state",
                        "--param", f"marker={marker}", *quiet, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert marker.exists()
        got[quiet] = [line for line in proc.stderr.splitlines() if " - distributed." in line]
    assert got[()], "Dask said nothing about its dead worker: this test checks nothing"
    assert got[("-q",)] == []


def test_run_with_a_client_uploads_only_when_asked(dask_cluster, tmp_path, monkeypatch):
    from flowdeco import UsageError, run
    from flowdeco.testing import within

    flows, out = tmp_path / "flows", tmp_path / "out.json"
    _write(flows, "fdc_api_helper.py", """
        def scale(n):
            return n * 3
    """)
    flow = _write(flows, "fdc_api_flow.py", FLOW.format(helper="fdc_api_helper"))
    monkeypatch.delitem(sys.modules, "fdc_api_flow", raising=False)
    monkeypatch.delitem(sys.modules, "fdc_api_helper", raising=False)
    monkeypatch.syspath_prepend(str(flows))   # what loading the file does anyway
    client = dask_cluster.client
    with pytest.raises(UsageError, match=r"cannot import module 'fdc_api_flow' .*"
                                         r"pass dask_upload=True"):
        within(RUN, run, str(flow), executor=client, state_dir=None, params={"out": str(out)})
    assert not out.exists()
    result = within(RUN, run, str(flow), executor=client.get_executor(), dask_upload=True,
                    state_dir=None, params={"out": str(out)})
    assert result.ok, result.outcomes
    assert json.loads(out.read_text())["total"] == 18
    assert not [n for n in _registered(client) if "flowdeco" in n]
    assert client.status == "running"            # the client stays the caller's


def test_dask_upload_needs_the_dask_executor(tmp_path):
    flow = _write(tmp_path, "fdc_plain.py", """
        from flowdeco import task

        @task
        def one():
            return 1
    """)
    proc = flowdeco(flow, "--no-dask-upload", "--no-state", cwd=tmp_path)
    assert proc.returncode == 4
    assert proc.stderr.strip() == ("flowdeco: error: --dask-upload needs --executor dask "
                                   "(run(..., executor='dask', dask_upload=...))")
