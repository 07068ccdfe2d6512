/* Run view: graph (graph.js: layered layout, computed once; states updated in place), timeline,
   metrics, outcomes, audit trail (live tail from a byte offset over Server-Sent Events)
   and the task panel.  The same script draws the static report (data embedded in the
   page as JSON, no server: #run-data).  Sub-flows, mapped tasks and large graphs: graph.js. */
'use strict';
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var embedded = $('run-data');
  var STATIC = !!embedded;
  var runId = $('runhead').getAttribute('data-run');
  var M = null;                 // the run model (see flowdeco/ui/model.py)
  var tasks = [], byName = new Map();
  var graph = FDGraph.create($('graph'), runId, clickNode);
  var crit = new Set();
  var auditOffset = 0, openTask = null;
  var actions = (document.querySelector('meta[name=actions]') || {}).content === '1';

  function api(path) { return fetch(path).then(function (r) { return r.json(); }); }

  function load() {
    if (STATIC) { start(JSON.parse(embedded.textContent)); return; }
    api('/api/runs/' + encodeURIComponent(runId)).then(start);
  }

  function start(model) {
    M = model;
    tasks = []; byName = new Map();
    var cols = M.columns;
    M.tasks.forEach(function (row) {
      var t = {}; cols.forEach(function (c, i) { t[c] = row[i]; });
      addTask(t);
    });
    crit = new Set(M.critical || []);
    header();
    relayoutNow();
    timeline(); metrics(); outcomes();
    auditInit();
    if (!STATIC) follow();
    document.body.setAttribute('data-ready', '1');
  }

  function addTask(t) { t.index = tasks.length; tasks.push(t); byName.set(t.name, t); return t; }

  function header() {
    var r = M.run, c = {};
    tasks.forEach(function (t) { c[t.status] = (c[t.status] || 0) + 1; });
    var st = $('run-status');
    st.textContent = r.status; st.className = 'st st-' + r.status; st.title = 'run ' + r.status;
    $('run-summary').textContent = 'started ' + FD.when(r.started) + ' · ' + FD.secs(r.duration) +
      (r.sessions > 1 ? ' · ' + r.sessions + ' sessions' : '') + ' · ' + tasks.length + ' tasks: ' + FD.counts(c) +
      (r.version ? ' · flow version ' + String(r.version).slice(0, 12) : '');
  }

  function relayoutNow() {
    var view = graph.layout(tasks, M.edges || [], crit);
    graph.draw(); legend();
    $('graph-note').textContent = view.nodes.length + ' nodes' +
      (view.nodes.length !== tasks.length ? ' for ' + tasks.length + ' tasks' : '') +
      (M.has_edges ? '' : ' · no graph snapshot recorded for this run: tasks without edges');
  }

  function legend() {
    var p = $('legend'); p.replaceChildren();
    ['pending', 'running', 'succeeded', 'failed', 'skipped', 'restored', 'interrupted'].forEach(function (k) {
      var s = FD.el('span', { 'class': 'st st-' + k }, k); p.appendChild(s); p.appendChild(document.createTextNode(' '));
    });
    p.appendChild(FD.el('span', null, 'thick black border: critical path; dashed orange: code changed since the previous run'));
  }

  function clickNode(n) {
    if (n.kind === 'grp') { graph.expand(n.label); return; }
    if (n.kind === 'map' && n.members.length) {
      var parent = byName.get(n.label);
      panel(parent ? parent.name : tasks[n.members[0]].name, n); return;
    }
    panel(n.label, null);
  }

  function exportSvg() {
    FD.download('run-' + runId + '.svg', new Blob([graph.svgText()], { type: 'image/svg+xml' }));
  }
  function exportPng() {
    graph.pngCanvas().toBlob(function (b) { FD.download('run-' + runId + '.png', b); }, 'image/png');
  }

  // ---------------------------------------------------------------- live updates
  var END = { task_succeeded: 'succeeded', task_failed: 'failed', task_skipped: 'skipped',
              task_restored: 'restored', task_interrupted: 'interrupted' };
  var relayout = null, refetch = null;

  function apply(ev) {
    var name = ev.task, st = null;
    if (ev.event === 'task_started') st = 'running';
    else if (ev.event === 'task_retrying') st = 'retrying';
    else if (END[ev.event]) st = END[ev.event];
    else if (ev.event === 'run_finished' || ev.event === 'run_started') { scheduleRefetch(300); return; }
    if (!st || typeof name !== 'string') return;
    var t = byName.get(name);
    if (!t) {  // a task the page did not know (no snapshot, or a new mapped instance)
      t = addTask({ name: name, status: st, attempts: 0, started: null, finished: null, error: null });
      if (!relayout) relayout = setTimeout(function () { relayout = null; relayoutNow(); }, 250);
    }
    t.status = st;
    if (ev.error) t.error = ev.error;
    if (t.node && !relayout) {
      graph.refresh(t.node);
    }
    header();
    if (openTask === name) scheduleDetail();
    scheduleRefetch(1500);
  }

  var fetchCost = 0;  // ms the last model fetch took: a big run is re-fetched less often
  function scheduleRefetch(ms) {  // timeline, metrics and run status: from the server, now and then
    if (STATIC || refetch) return;
    refetch = setTimeout(function () {
      refetch = null;
      var t0 = Date.now();
      api('/api/runs/' + encodeURIComponent(runId)).then(function (m) {
        fetchCost = Date.now() - t0;
        if (!m.run) return;
        M.run = m.run; M.timeline = m.timeline; M.metrics = m.metrics; M.critical = m.critical; M.pipeline = m.pipeline;
        m.tasks.forEach(function (row) {  // the store is the authority once an event is in
          var t = byName.get(row[0]); if (t) { t.status = row[1]; t.attempts = row[2]; t.started = row[3]; t.finished = row[4]; t.error = row[5]; }
        });
        crit = new Set(M.critical || []);
        graph.setCrit(crit);
        if (!relayout) graph.refreshAll();
        header(); timeline(); metrics(); outcomes();
      }).catch(function () {});
    }, Math.max(ms, 10 * fetchCost));
  }

  var es = null;
  function follow() {
    if (!window.EventSource || es) return;
    es = new EventSource('/api/runs/' + encodeURIComponent(runId) + '/stream?from=' + auditOffset);
    es.addEventListener('audit', function (m) {
      var ev = JSON.parse(m.data);
      auditOffset = +m.lastEventId || auditOffset;
      apply(ev); auditAppend(+m.lastEventId, ev, true);
    });
    es.addEventListener('store', function () { scheduleRefetch(200); });
  }

  // ---------------------------------------------------------------- timeline
  function timeline() {
    var tl = M.timeline, box = $('timeline');
    box.replaceChildren();
    if (!tl.bars.length) { box.appendChild(FD.el('p', { 'class': 'small' }, 'no attempts yet')); return; }
    var W = Math.max(300, (box.clientWidth || 900) - 140), LH = 16, left = 120;
    var t0 = tl.start, span = Math.max((tl.end || t0) - t0, 1e-6);
    var sx = function (t) { return left + (t - t0) / span * W; };
    var s = FD.sv('svg', { width: '100%', viewBox: '0 0 ' + (left + W + 10) + ' ' + (tl.lanes.length * LH + 24),
      preserveAspectRatio: 'xMinYMin meet', role: 'img', 'aria-label': 'timeline' });
    tl.lanes.forEach(function (l, i) { s.appendChild(FD.sv('text', { x: 2, y: i * LH + 12 }, l)); });
    var now = tl.end || t0;
    tl.bars.forEach(function (b) {
      var x = sx(b.start), end = b.end === null ? now : b.end, w = Math.max(sx(end) - x, 1.5);
      var r = FD.sv('rect', { x: x, y: b.lane * LH + 2, width: w, height: LH - 4, 'class': 's-' + b.outcome + (crit.has(b.task) ? ' crit' : ''),
        fill: FD.COLORS[b.outcome] || '#999', 'data-task': b.task });
      r.appendChild(FD.sv('title', null, b.task + ' · attempt ' + b.n + ' · ' + b.outcome + ' · ' + FD.secs(end - b.start) +
        (b.worker ? ' · worker ' + b.worker : '') + (b.delay ? ' · then waited ' + FD.secs(b.delay) + ' before retrying' : '') +
        (crit.has(b.task) ? ' · critical path' : '')));
      s.appendChild(r);
      if (b.delay && b.end !== null) {
        var wl = FD.sv('line', { x1: sx(b.end), x2: sx(b.end + b.delay), y1: b.lane * LH + LH / 2, y2: b.lane * LH + LH / 2, 'class': 'wait' });
        wl.appendChild(FD.sv('title', null, b.task + ' · waiting ' + FD.secs(b.delay) + ' before attempt ' + (b.n + 1)));
        s.appendChild(wl);
      }
    });
    s.appendChild(FD.sv('text', { x: left, y: tl.lanes.length * LH + 18 }, FD.when(t0)));
    s.appendChild(FD.sv('text', { x: left + W, y: tl.lanes.length * LH + 18, 'text-anchor': 'end' }, '+' + FD.secs(span)));
    s.addEventListener('click', function (e) { var t = e.target.getAttribute && e.target.getAttribute('data-task'); if (t) panel(t, null); });
    box.appendChild(s);
    $('timeline-note').textContent = (tl.workers_recorded ? 'one lane per worker (a running attempt shows on a "running" lane until its worker is recorded, when it ends)' : 'workers not recorded (older trail): attempts packed into lanes') +
      (tl.total > tl.bars.length ? ' · the ' + tl.bars.length + ' longest of ' + tl.total + ' attempts' : '') +
      ' · bars: succeeded green, failed red, retried orange (dashed: the wait), running blue; black outline: critical path';
  }

  function metrics() {
    var m = M.metrics, box = $('metrics');
    box.replaceChildren();
    var t = FD.el('table', { 'class': 'kv' });
    var row = function (k, v) { var tr = FD.el('tr'); tr.appendChild(FD.el('td', null, k)); tr.appendChild(FD.el('td', null, v)); t.appendChild(tr); };
    row('makespan', FD.secs(m.makespan));
    row('task time', FD.secs(m.task_time) + ' on ' + m.lanes + ' lane(s)');
    row('parallel efficiency', m.efficiency === null ? '-' : Math.round(m.efficiency * 100) + '%');
    row('critical path', FD.secs(m.critical_time) + ': ' + (M.critical || []).join(' → '));
    row('retries', m.retries + (m.waits ? ' (waited ' + FD.secs(m.waits) + ')' : ''));
    box.appendChild(t);
    if (m.per_lane.length) {
      var u = FD.el('table'); var h = FD.el('tr');
      ['lane', 'tasks', 'busy', 'util'].forEach(function (k) { h.appendChild(FD.el('th', null, k)); }); u.appendChild(h);
      m.per_lane.slice(0, 64).forEach(function (l) {
        var tr = FD.el('tr');
        [l.lane, l.tasks, FD.secs(l.busy), l.util === null ? '-' : Math.round(l.util * 100) + '%'].forEach(function (v) { tr.appendChild(FD.el('td', null, v)); });
        u.appendChild(tr);
      });
      box.appendChild(u);
    }
    var p = $('pipeline'); p.replaceChildren();
    if (M.pipeline && M.pipeline.length) {
      p.appendChild(FD.el('h3', null, 'pipelines'));
      var pt = FD.el('table'), ph = FD.el('tr');
      var num = function (v, d) { return v === null || v === undefined ? '-' : (d ? v.toFixed(d) : v); };
      ['node / stage', 'items in', 'out', 'failed', 'items/s', 'queue high-water', 'duration'].forEach(function (k) { ph.appendChild(FD.el('th', null, k)); }); pt.appendChild(ph);
      M.pipeline.forEach(function (x) {
        var tr = FD.el('tr', { 'data-pipeline': x.task });
        [x.task, x.items, x.outputs, x.failed, num(x.rate, 1), num(x.high_water), FD.secs(x.duration)].forEach(function (v) { tr.appendChild(FD.el('td', null, v)); });
        pt.appendChild(tr);
        (x.stages || []).forEach(function (st) {  // per stage: the node's pipeline_finished
          var sr = FD.el('tr', { 'data-stage': st.stage, 'class': 'stage' });
          ['\u2003' + st.stage + (st.workers ? ' \u00d7' + st.workers : ''), num(st['in']), num(st.out), num(st.failed), num(st.rate, 1), num(st.queue_hwm), ''].forEach(function (v) { sr.appendChild(FD.el('td', null, v)); });
          pt.appendChild(sr);
        });
      });
      p.appendChild(pt);
    }
  }

  function outcomes() {
    var box = $('outcomes'); box.replaceChildren();
    var c = {}; tasks.forEach(function (t) { c[t.status] = (c[t.status] || 0) + 1; });
    box.appendChild(FD.el('p', null, FD.counts(c) || 'no tasks'));
    var bad = tasks.filter(function (t) { return t.status === 'failed' || t.status === 'interrupted'; });
    if (!bad.length) return;
    var tb = FD.el('table', { id: 'failures' }), h = FD.el('tr');
    ['task', 'status', 'error'].forEach(function (k) { h.appendChild(FD.el('th', null, k)); }); tb.appendChild(h);
    bad.slice(0, 200).forEach(function (t) {
      var tr = FD.el('tr', { 'data-task': t.name });
      var a = FD.el('a', { href: '#', 'data-task': t.name }, t.name); var td = FD.el('td'); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(FD.el('td', null, t.status)); tr.appendChild(FD.el('td', null, t.error || ''));
      tb.appendChild(tr);
    });
    tb.addEventListener('click', function (e) { var n = e.target.getAttribute('data-task'); if (n) { e.preventDefault(); panel(n, null); } });
    box.appendChild(tb);
    if (bad.length > 200) box.appendChild(FD.el('p', { 'class': 'small' }, '... and ' + (bad.length - 200) + ' more'));
  }

  // ---------------------------------------------------------------- audit trail
  var auditKinds = new Set();
  function auditInit() {
    auditOffset = M.audit.offset;
    $('audit').replaceChildren();
    M.audit.events.forEach(function (p) { auditAppend(p[0], p[1], false); });
    $('audit-note').textContent = M.audit.total > M.audit.events.length ? 'last ' + M.audit.events.length + ' of ' + M.audit.total + ' events' + (STATIC ? '' : ', then live') : (STATIC ? '' : 'live');
    $('audit-task').addEventListener('input', auditFilter);
    $('audit-event').addEventListener('change', auditFilter);
    var more = $('audit-earlier');
    more.hidden = STATIC || M.audit.total <= M.audit.events.length;
    more.addEventListener('click', auditEarlier);
  }
  var auditLoading = false;
  function auditEarlier() {  // the page before the first event shown (by its line's end offset)
    if (auditLoading) return;
    auditLoading = true;
    var list = $('audit'), first = list.firstElementChild;
    var before = first ? first.getAttribute('data-pos') : auditOffset;
    api('/api/runs/' + encodeURIComponent(runId) + '/audit?limit=300&before=' + before).then(function (d) {
      var frag = document.createDocumentFragment();
      d.events.forEach(function (p) { frag.appendChild(auditItem(p[0], p[1])); });
      list.insertBefore(frag, list.firstChild);
      $('audit-earlier').hidden = !d.more;
    }).finally(function () { auditLoading = false; });
  }
  function auditShown(ev) {
    var t = $('audit-task').value.trim(), k = $('audit-event').value;
    return (!t || (ev.task || '').indexOf(t) >= 0) && (!k || ev.event === k);
  }
  function auditItem(pos, ev) {
    if (!auditKinds.has(ev.event)) {
      auditKinds.add(ev.event); $('audit-event').appendChild(FD.el('option', { value: ev.event }, ev.event));
    }
    var rest = Object.assign({}, ev); delete rest.event; delete rest.timestamp; delete rest.run_id; delete rest.task; delete rest.traceback;
    var li = FD.el('li', { 'class': 'ev-' + ev.event, 'data-pos': pos, 'data-task': ev.task || '', 'data-event': ev.event },
      (ev.timestamp || '').slice(11, 23) + ' ' + ev.event + (ev.task ? ' ' + ev.task : '') + ' ' + JSON.stringify(rest));
    li._ev = ev;
    if (!auditShown(ev)) li.hidden = true;
    return li;
  }
  function auditAppend(pos, ev, live) {
    var list = $('audit'), li = auditItem(pos, ev);
    var stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.appendChild(li);
    while (list.childElementCount > 5000) list.firstElementChild.remove();
    if (live && stick) list.scrollTop = list.scrollHeight;
  }
  function auditFilter() { Array.prototype.forEach.call($('audit').children, function (li) { li.hidden = !auditShown(li._ev); }); }

  // ---------------------------------------------------------------- task panel
  var detailTimer = null;
  function scheduleDetail() {
    if (detailTimer) return;
    detailTimer = setTimeout(function () { detailTimer = null; if (openTask) panel(openTask, null, true); }, 150);
  }

  function panel(name, node, quiet) {
    openTask = name;
    var p = $('panel'), was = p.hidden; p.hidden = false;
    if (was) timeline();  // the cards got narrower: redraw the timeline to fit
    $('panel-name').textContent = name;
    var got = STATIC ? Promise.resolve((M.details || {})[name] || localDetail(name))
      : api('/api/runs/' + encodeURIComponent(runId) + '/tasks/' + encodeURIComponent(name)).catch(function () { return localDetail(name); });
    got.then(function (d) { if (openTask === name) renderPanel(d && d.name !== undefined ? d : localDetail(name), node); });
  }

  function localDetail(name) {
    var t = byName.get(name) || { status: 'unknown' };
    return { name: name, status: t.status, attempts: [], error: t.error, traceback: null, result_preview: null };
  }

  function renderPanel(d, node) {
    var b = $('panel-body'); b.replaceChildren();
    var st = FD.el('p'); st.appendChild(FD.el('span', { 'class': 'st st-' + d.status, id: 'panel-status', title: 'task ' + d.status }, d.status));
    if (d.cached) st.appendChild(FD.el('span', { 'class': 'small' }, ' restored from a stored result (cache hit or resume)'));
    if (d.reason) st.appendChild(FD.el('span', { 'class': 'small' }, ' reason: ' + d.reason));
    var t = byName.get(d.name);
    if (t && t.changed) st.appendChild(FD.el('span', { 'class': 'small' }, ' · code changed since the previous run'));
    b.appendChild(st);
    if (node && node.kind === 'map') b.appendChild(FD.el('p', null, node.members.length + ' instances: ' + FD.counts(node.counts)));
    if (d.attempts && d.attempts.length) {
      var tb = FD.el('table', { id: 'panel-attempts' }), h = FD.el('tr');
      ['#', 'started', 'took', 'outcome', 'worker', 'then'].forEach(function (k) { h.appendChild(FD.el('th', null, k)); }); tb.appendChild(h);
      d.attempts.forEach(function (a) {
        var tr = FD.el('tr');
        [a.n, FD.when(a.start), a.end === null ? 'running' : FD.secs(a.end - a.start), a.outcome, a.worker || '-',
         a.delay ? 'retry in ' + FD.secs(a.delay) : ''].forEach(function (v) { tr.appendChild(FD.el('td', null, v)); });
        if (a.error) tr.title = a.error;
        else if (a.reason) tr.title = a.reason + (a.result ? ': result ' + a.result : '');
        tb.appendChild(tr);
      });
      b.appendChild(tb);
    }
    if (d.error) { b.appendChild(FD.el('h3', null, 'error')); b.appendChild(FD.el('pre', { id: 'panel-error' }, d.error)); }
    if (d.traceback) { b.appendChild(FD.el('h3', null, 'traceback')); b.appendChild(FD.el('pre', { id: 'panel-traceback' }, d.traceback)); }
    if (d.result_preview !== null && d.result_preview !== undefined) {
      b.appendChild(FD.el('h3', null, 'result (' + d.result_size + ' characters stored)'));
      b.appendChild(FD.el('pre', { id: 'panel-result' }, d.result_preview));
    }
    if (d.logs && d.logs.length) {
      b.appendChild(FD.el('h3', null, 'logged'));
      b.appendChild(FD.el('pre', null, d.logs.map(function (e) { return (e.timestamp || '').slice(11, 23) + ' ' + e.event + ' ' + JSON.stringify(e); }).join('\n')));
    }
    if (actions && !STATIC) {
      var f = FD.el('form', { id: 'rerun-form' });
      f.appendChild(FD.el('label', null, 'target '));
      var inp = FD.el('input', { name: 'target', value: M.run.flow, size: 18 }); f.appendChild(inp);
      f.appendChild(FD.el('button', { type: 'submit', id: 'rerun' }, 're-run from this task'));
      var out = FD.el('p', { 'class': 'small', id: 'rerun-out' });
      f.addEventListener('submit', function (e) {
        e.preventDefault();
        fetch('/api/runs/' + encodeURIComponent(runId) + '/rerun', { method: 'POST',
          headers: { 'content-type': 'application/json', 'x-csrf-token': FD.csrf() },
          body: JSON.stringify({ task: d.name, target: inp.value }) })
          .then(function (r) { return r.json(); })
          .then(function (j) { out.textContent = j.error || ('started: ' + j.argv.join(' ') + ' (output: ' + j.log + ')'); });
      });
      b.appendChild(f); b.appendChild(out);
    }
  }

  // a page kept in the back/forward cache must not hold its stream open (six connections
  // per host); it resumes from its offset when shown again
  window.addEventListener('pagehide', function () { if (es) { es.close(); es = null; } });
  window.addEventListener('pageshow', function (e) { if (e.persisted && M && !STATIC) follow(); });
  $('panel-close').addEventListener('click', function () { $('panel').hidden = true; openTask = null; timeline(); });
  $('export-svg').addEventListener('click', exportSvg);
  $('export-png').addEventListener('click', exportPng);
  // for tests and the console: the exports as text, the model as drawn
  window.FDRun = { tasks: function () { return tasks; }, view: graph.view,
                   svg: graph.svgText, png: function () { return graph.pngCanvas().toDataURL('image/png'); } };
  load();
})();
