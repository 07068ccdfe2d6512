"""The dashboard in a real browser: selenium driving Debian's chromium (headless).

Skipped, with the reason, only when chromium, chromedriver or selenium are absent
(CI installs them: see .ci/run).  The server is the real command (``python -m
flowdeco ui --port 0``) in its own process; runs are started by other processes.
Set FLOWDECO_UPDATE_SCREENSHOT=1 to refresh docs/ui-run.png (the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.browser

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    pytest.skip(f"chromium ({CHROMIUM}) or chromedriver ({DRIVER}) not installed: "
                "apt-get install chromium chromium-driver", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
pytest.importorskip("starlette", reason="the ui extra is not installed: pip install "
                    "'flowdeco[ui]'")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (NoAlertPresentException,  # noqa: E402
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait as _Wait  # noqa: E402

import flowdeco  # noqa: E402
from flowdeco import task  # noqa: E402
from flowdeco.plugins.state.store import SQLiteStore, TaskRow  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"

LIVE_FLOW = """
    import os, time
    from flowdeco import task

    @task
    def begin():
        return 1

    @task
    def gate(begin):
        while not os.path.exists("go"):
            time.sleep(0.01)
        return begin + 1

    @task
    def broken(begin):
        raise ValueError("it broke here")
"""


@task
def one():
    return 1


@task
def two(one):
    return one + 1


@task
def broken(one):
    raise ValueError("bad <b>input</b>")


@task(name=XSS)
def xss_task():
    return 3


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="fd-chromium-")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def clean_console(browser):
    browser.get_log("browser")  # drop what earlier tests left
    yield browser
    assert console_errors(browser) == []


class Server:
    def __init__(self, state: Path, cwd: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowdeco", "ui", "--state-dir", str(state), "--port", "0",
             *extra],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"flowdeco ui: (http://\S+/) ", line)
        if not m:
            self.stop()
            raise AssertionError(f"ui did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1).rstrip("/")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


PIPE = flowdeco.Pipeline("squares")


@PIPE.stage(workers=2)
def parse(x):
    if x == 3:
        raise ValueError("unlucky")
    return int(x)


@PIPE.stage(workers=1)
def square(n):
    return n * n


@task
def numbers():
    return list(range(10))


SQUARES = PIPE.as_task("squares", source=numbers)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("uib")
    (w / "live.py").write_text(textwrap.dedent(LIVE_FLOW))
    state = w / "state"
    flowdeco.run([one, two, broken], state_dir=state, run_id="r-fail", quiet=2)
    flowdeco.run([one, two, xss_task], state_dir=state, run_id="r-ok", quiet=2)
    flowdeco.run([numbers, SQUARES], state_dir=state, run_id="r-pipe", workers=2, quiet=2)
    _synthetic(state, "r-groups", ["prep.a", "prep.b", "prep.c", "load"] +
               [f"scan[{i}]" for i in range(6)])
    return w


@pytest.fixture(scope="module")
def server(work):
    s = Server(work / "state", work)
    yield s
    s.stop()


def _synthetic(state: Path, run_id: str, names: list[str], failed_every: int = 0) -> None:
    """A saved run written through the store's own API plus its audit trail (fast)."""
    store = SQLiteStore(state)
    store.open()
    t0 = time.time() - 60
    store.begin_run(run_id, "synthetic", t0, resumed=False)
    rows, lines = [], [{"event": "run_started", "timestamp": _iso(t0), "run_id": run_id,
                        "flow": "synthetic", "tasks": len(names)}]
    for i, n in enumerate(names):
        s, e = t0 + i * 0.001, t0 + i * 0.001 + 0.004
        bad = failed_every and i % failed_every == 0
        rows.append(TaskRow(n, "failed" if bad else "succeeded", 1, s, e, None,
                            None if bad else "1", "ValueError: x" if bad else None, None))
        lines.append({"event": "task_started", "timestamp": _iso(s), "run_id": run_id,
                      "task": n, "attempt": 1})
        lines.append({"event": "task_failed" if bad else "task_succeeded",
                      "timestamp": _iso(e), "run_id": run_id, "task": n, "attempts": 1})
    store.record_tasks(run_id, rows)
    store.finish_run(run_id, "succeeded", t0 + 30, 30.0)
    store.close()
    d = state / "runs" / run_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "audit.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _iso(ts: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def WebDriverWait(driver, timeout: float, **kw):  # noqa: N802 - selenium's name
    """Waits that look again when the page redrew an element under them (a relayout)."""
    return _Wait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,), **kw)


def node(driver, name: str, kind: str = "task"):
    """The graph node of a task (``kind``: task, grp, map), None when not drawn."""
    for _ in range(5):
        try:
            for el in driver.find_elements(By.CSS_SELECTOR, "#graph g.node"):
                if el.get_attribute("data-key") == f"{kind}:{name}":
                    return el
            return None
        except StaleElementReferenceException:  # the graph was redrawn meanwhile
            continue
    return None


def ready(driver, timeout: float = 10) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")


def _wait_for(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


# ------------------------------------------------------------------- tests


def test_runs_page_lists_a_run_started_by_another_process(clean_console, server, work):
    d = clean_console
    d.get(server.url + "/")
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-run="r-ok"]'))
    time.sleep(0.3)  # the live stream is open
    r = subprocess.run([sys.executable, "-m", "flowdeco", "live.py", "--state-dir", "state",
                        "--run-id", "other-proc", "-k", "begin", "-q"], cwd=work,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    WebDriverWait(d, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-run="other-proc"]'))
    assert d.execute_script("return performance.getEntriesByType('navigation').length") == 1


def test_run_page_shows_running_then_succeeded_without_reload(clean_console, server, work):
    d = clean_console
    go = work / "go"
    if go.exists():
        go.unlink()
    audit = work / "state" / "runs" / "live-1" / "audit.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "flowdeco", "live.py", "--state-dir", "state",
                          "--run-id", "live-1", "-q"], cwd=work, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(audit, '"task": "gate"')
        d.get(server.url + "/runs/live-1")
        ready(d)
        WebDriverWait(d, 5).until(lambda d: node(d, "gate") is not None)
        WebDriverWait(d, 5).until(  # the state in words as well as colour
            lambda d: node(d, "gate").get_attribute("data-status") == "running"
            and "task gate: running" in node(d, "gate").get_attribute("aria-label"))
        d.execute_script("window.__same_page = 1")
        go.write_text("")
        _wait_for(audit, '"event": "task_succeeded", "timestamp": ')
        _wait_for(audit, '"task": "gate", "attempts"')
        seen = time.monotonic()
        WebDriverWait(d, 2.0, poll_frequency=0.05).until(
            lambda d: node(d, "gate").get_attribute("data-status") == "succeeded")
        latency = time.monotonic() - seen
        WebDriverWait(d, 2).until(
            lambda d: "task gate: succeeded" in node(d, "gate").get_attribute("aria-label"))
        assert d.execute_script("return window.__same_page") == 1  # no reload happened
        assert latency < 2.0
        WebDriverWait(d, 5).until(lambda d: node(d, "broken").get_attribute("data-status")
                                  == "failed")
        # the audit trail tail grew in place
        assert any("task_succeeded gate" in li.text
                   for li in d.find_elements(By.CSS_SELECTOR, "#audit li"))
    finally:
        go.write_text("")
        p.wait(60)


def test_failed_task_panel_shows_its_traceback(clean_console, server):
    d = clean_console
    d.get(server.url + "/runs/r-fail")
    ready(d)
    node(d, "broken").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.ID, "panel-traceback"))
    tb = d.find_element(By.ID, "panel-traceback").text
    assert "Traceback (most recent call last)" in tb and "bad <b>input</b>" in tb
    assert d.find_element(By.ID, "panel-status").text == "failed"
    assert d.find_elements(By.CSS_SELECTOR, "#panel-body b") == []  # the error stayed text
    png = d.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FLOWDECO_UPDATE_SCREENSHOT"):
        (ROOT / "docs" / "ui-run.png").write_bytes(png)


def test_pipeline_stages_and_worker_lanes_show_on_the_run_page(clean_console, server):
    d = clean_console
    d.get(server.url + "/runs/r-pipe")
    ready(d)
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pipeline tr.stage"))
    cells = {r.get_attribute("data-stage"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
             for r in d.find_elements(By.CSS_SELECTOR, "#pipeline tr.stage")}
    assert list(cells) == ["parse", "square"]
    assert cells["parse"][1:4] == ["10", "9", "1"] and cells["square"][1:4] == ["9", "9", "0"]
    assert all(int(c[5]) >= 1 for c in cells.values())  # queue high-water mark
    assert "one lane per worker" in d.find_element(By.ID, "timeline-note").text


def test_filters_survive_a_reload(clean_console, server):
    d = clean_console
    d.get(server.url + "/")
    Select(d.find_element(By.ID, "f-status")).select_by_value("failed")
    d.find_element(By.ID, "f-text").send_keys("r-")
    d.find_element(By.ID, "f-apply").click()
    WebDriverWait(d, 5).until(lambda d: "status=failed" in d.current_url)
    url = d.current_url
    d.get("about:blank")
    d.get(url)  # a reload: only the URL carries the filters
    assert Select(d.find_element(By.ID, "f-status")).first_selected_option.text == "failed"
    assert d.find_element(By.ID, "f-text").get_attribute("value") == "r-"
    # the live list re-renders its rows when its stream opens: read them in a wait
    WebDriverWait(d, 5).until(lambda d: [tr.get_attribute("data-run") for tr in d.find_elements(
        By.CSS_SELECTOR, "#runs-body tr")] == ["r-fail"])


def test_xss_task_name_stays_text(clean_console, server):
    d = clean_console
    d.get(server.url + "/runs/r-ok")
    ready(d)
    n = node(d, XSS)
    assert n is not None and "task <script>alert(1)</script>: succeeded" in \
        n.get_attribute("aria-label")
    n.click()
    WebDriverWait(d, 5).until(lambda d: d.find_element(By.ID, "panel-name").text == XSS)
    with pytest.raises(NoAlertPresentException):
        d.switch_to.alert.text  # noqa: B018
    assert d.execute_script("return document.querySelectorAll('main script').length") == 0


def test_subflows_collapse_and_mapped_tasks_stack(clean_console, server):
    d = clean_console
    d.get(server.url + "/runs/r-groups")
    ready(d)
    scan = node(d, "scan", "map")
    assert scan is not None and "6 instances: 6 succeeded" in scan.get_attribute("aria-label")
    prep = node(d, "prep", "grp")
    assert prep is not None and node(d, "prep.a") is None
    prep.click()
    WebDriverWait(d, 5).until(lambda d: node(d, "prep.a") is not None)
    assert node(d, "prep", "grp") is None


def test_a_10000_task_run_opens_within_3_seconds(clean_console, server, work):
    names = [f"t{i:05d}" for i in range(9000)] + [f"m[{i}]" for i in range(900)] + \
        [f"sub.s{i}" for i in range(100)]
    _synthetic(work / "state", "big", names, failed_every=97)
    d = clean_console
    d.get(server.url + "/")  # warm the connection (not the run)
    t0 = time.monotonic()
    d.get(server.url + "/runs/big")
    ready(d, timeout=30)
    took = time.monotonic() - t0
    assert took < 3.0, f"the 10,000-task run took {took:.2f}s to open"
    assert d.find_elements(By.CSS_SELECTOR, "#graph canvas")
    assert "10000 tasks" in d.find_element(By.ID, "run-summary").text
    assert "9002 nodes for 10000 tasks" in d.find_element(By.ID, "graph-note").text


def test_static_report_opens_from_disk_without_network(clean_console, work, tmp_path):
    out = tmp_path / "run.html"
    r = subprocess.run([sys.executable, "-m", "flowdeco", "runs", "report", "r-fail",
                        "--state-dir", "state", "-o", str(out)], cwd=work,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = clean_console
    d.get(out.as_uri())
    ready(d)
    assert node(d, "broken").get_attribute("data-status") == "failed"
    assert d.execute_script("return performance.getEntriesByType('resource').length") == 0
    node(d, "broken").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.ID, "panel-traceback"))
    assert "bad <b>input</b>" in d.find_element(By.ID, "panel-traceback").text
    assert d.find_elements(By.CSS_SELECTOR, "#timeline rect")


def test_many_page_visits_do_not_exhaust_connections(clean_console, server):
    """Pages left for the back/forward cache used to keep their live stream open; after
    six (the browser's connections per host) the next page never loaded."""
    d = clean_console
    for i in range(5):
        for path in ("/", "/runs/r-ok"):
            t0 = time.monotonic()
            d.get(server.url + path)
            assert time.monotonic() - t0 < 10, (i, path)
        ready(d)


def test_graph_with_edges_is_layered_and_exports_as_svg_and_png(clean_console, work, tmp_path,
                                                                 monkeypatch):
    """A run with a graph snapshot (monkeypatched here: the data layer records them): each
    task is drawn below its upstream tasks, edges are paths, and the exports hold them."""
    import xml.etree.ElementTree as ET
    from flowdeco.ui.data import StateReader
    from flowdeco.ui.report import write_report
    snap = {"tasks": ["one", "two", "broken"], "edges": [["one", "two"], ["one", "broken"]]}
    monkeypatch.setattr(StateReader, "graph", lambda self, run_id: snap)
    out = write_report(work / "state", "r-fail", str(tmp_path / "g.html"))
    d = clean_console
    d.get(out.resolve().as_uri())
    ready(d)
    y = {n: float(node(d, n).get_attribute("transform").split(",")[1].rstrip(")"))
         for n in ("one", "two", "broken")}
    assert y["one"] < y["two"] == y["broken"]
    assert len(d.find_elements(By.CSS_SELECTOR, "#graph path.edge")) == 2
    svg = ET.fromstring(d.execute_script("return FDRun.svg()"))
    ns = "{http://www.w3.org/2000/svg}"
    assert len([p for p in svg.iter(f"{ns}path") if p.get("class") == "edge"]) == 2
    assert {t.text for t in svg.iter(f"{ns}text")} >= {"one", "two", "broken"}
    assert not list(svg.iter(f"{ns}script"))
    png = d.execute_script("return FDRun.png()")
    assert png.startswith("data:image/png;base64,") and len(png) > 1000


def test_rerun_from_a_task_with_actions_allowed(clean_console, work):
    """--allow-actions: the panel's button POSTs with the page's CSRF token; the re-run is a
    real resume (another process), and the page shows its events live."""
    (work / "go").write_text("")
    r = subprocess.run([sys.executable, "-m", "flowdeco", "live.py", "--state-dir", "state",
                        "--run-id", "act-1", "-q"], cwd=work, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    audit = work / "state" / "runs" / "act-1" / "audit.jsonl"
    before = audit.read_text().count('"event": "task_failed"')
    s = Server(work / "state", work, "--allow-actions")
    try:
        d = clean_console
        d.get(s.url + "/runs/act-1")
        ready(d)
        node(d, "broken").click()
        WebDriverWait(d, 5).until(lambda d: d.find_elements(By.ID, "rerun"))
        target = d.find_element(By.CSS_SELECTOR, "#rerun-form input[name=target]")
        target.clear()
        target.send_keys("live.py")
        d.find_element(By.ID, "rerun").click()
        WebDriverWait(d, 10).until(lambda d: "started:" in d.find_element(By.ID, "rerun-out").text)
        assert "--resume act-1 --rerun broken" in d.find_element(By.ID, "rerun-out").text
        _wait_for(audit, '"resumed": true')
        WebDriverWait(d, 30).until(lambda d: len([
            li for li in d.find_elements(By.CSS_SELECTOR, "#audit li")
            if li.get_attribute("data-event") == "task_failed"]) == before + 1)
        d.get("about:blank")  # leave before the server stops (its streams would error)
    finally:
        s.stop()


def test_earlier_audit_events_load_on_request(clean_console, server, work):
    names = [f"e{i:03d}" for i in range(400)]  # 801 events: the page starts with 300
    _synthetic(work / "state", "long-trail", names)
    d = clean_console
    d.get(server.url + "/runs/long-trail")
    ready(d)
    assert len(d.find_elements(By.CSS_SELECTOR, "#audit li")) == 300
    for want in (600, 801):
        d.find_element(By.ID, "audit-earlier").click()
        WebDriverWait(d, 5).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#audit li"))
                                  == want)
    first = d.find_element(By.CSS_SELECTOR, "#audit li")
    assert first.get_attribute("data-event") == "run_started"
    assert not d.find_element(By.ID, "audit-earlier").is_displayed()
