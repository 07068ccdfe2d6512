/* Runs view: the table re-renders in place when the store changes (Server-Sent Events
   from /api/stream); the filters live in the URL, so a reload keeps them. */
'use strict';
(function () {
  var body = document.getElementById('runs-body');
  var live = document.getElementById('live');
  function render(data) {
    var rows = document.createDocumentFragment();
    data.runs.forEach(function (r) {
      var tr = FD.el('tr', { 'data-run': r.run_id, 'data-status': r.status });
      tr.appendChild(FD.el('td', null, r.flow));
      var td = FD.el('td'); td.appendChild(FD.el('a', { href: '/runs/' + encodeURIComponent(r.run_id) }, r.run_id)); tr.appendChild(td);
      td = FD.el('td'); td.appendChild(FD.el('span', { 'class': 'st st-' + r.status, title: 'run ' + r.status }, r.status)); tr.appendChild(td);
      tr.appendChild(FD.el('td', { 'class': 'ts' }, FD.when(r.started)));
      tr.appendChild(FD.el('td', { 'class': 'dur' }, FD.secs(r.duration)));
      td = FD.el('td');
      Object.keys(r.counts).forEach(function (k) {
        td.appendChild(FD.el('span', { 'class': 'cnt st-' + k, title: r.counts[k] + ' ' + k }, r.counts[k] + ' ' + k));
        td.appendChild(document.createTextNode(' '));
      });
      tr.appendChild(td);
      tr.appendChild(FD.el('td', { 'class': 'mono' }, (r.version || '').slice(0, 10)));
      rows.appendChild(tr);
    });
    body.replaceChildren(rows);
    document.getElementById('total').textContent = data.total;
  }
  var pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      fetch('/api/runs' + location.search).then(function (r) { return r.json(); })
        .then(function (d) { if (d.runs) render(d); }).catch(function () {});
    }, 100);
  }
  var es = null;
  function connect() {
    if (!window.EventSource || es) return;
    es = new EventSource('/api/stream');
    es.addEventListener('changed', refresh);
    es.onopen = function () { live.classList.remove('off'); refresh(); };
    es.onerror = function () { live.classList.add('off'); };
  }
  // a page kept in the back/forward cache must not hold its stream open: browsers allow
  // six connections per host, and the next pages would wait for one
  window.addEventListener('pagehide', function () { if (es) { es.close(); es = null; } });
  window.addEventListener('pageshow', function (e) { if (e.persisted) connect(); });
  connect();
})();
