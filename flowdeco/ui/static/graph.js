/* The run graph: visible nodes from tasks (sub-flows collapsed, mapped instances stacked),
   a layered layout computed once (longest path from the sources, one barycentre pass,
   wide layers wrapped), and its drawing: SVG elements up to SVG_MAX nodes (each state in
   words: aria-label, <title>, data-status), else a canvas that draws only what is in
   view (drag to pan, wheel to zoom).  Exports: SVG text and a PNG canvas. */
'use strict';
var FDGraph = (function () {
  var SVG_MAX = 800, NW = 150, NH = 30, GX = 24, GY = 46, ROW_MAX = 40;
  function base(name) { var m = /^(.*)\[\d+\]$/.exec(name); return m ? m[1] : null; }

  /* box: the element to draw in; onClick(node) when a node is clicked. */
  function create(box, runId, onClick) {
    var tasks = [], edgesIn = [], crit = new Set(), expanded = new Set();
    var prefix = new Map(), mapped = new Set(), view = null;
    var svg = null, canvas = null, cam = { x: 0, y: 0, s: 1 }, dirty = false;

    // ---------------------------------------------------------------- the graph model
    function groupOf(name) {
      var b = base(name); if (b !== null) return 'map:' + b;
      if (mapped.has(name)) return 'map:' + name;
      var parts = name.split('.');
      for (var i = 1; i < parts.length; i++) {
        var p = parts.slice(0, i).join('.');
        if (!expanded.has(p) && (prefix.get(p) || 0) > 1) return 'grp:' + p;
      }
      return 'task:' + name;
    }

    function layout() {
      // prefixes (sub-flows) and mapped bases, then visible nodes and edges
      prefix = new Map(); mapped = new Set();
      tasks.forEach(function (t) {
        var b = base(t.name); if (b !== null) mapped.add(b);
        var parts = t.name.split('.');
        for (var i = 1; i < parts.length; i++) { var p = parts.slice(0, i).join('.'); prefix.set(p, (prefix.get(p) || 0) + 1); }
      });
      var byKey = new Map(), nodes = [];
      tasks.forEach(function (t) {
        var key = groupOf(t.name), n = byKey.get(key);
        if (!n) {
          var kind = key.slice(0, key.indexOf(':'));
          n = { key: key, kind: kind, label: key.slice(kind.length + 1), members: [], index: nodes.length };
          byKey.set(key, n); nodes.push(n);
        }
        n.members.push(t.index); t.node = n;
      });
      var seen = new Set(), edges = [];
      (edgesIn || []).forEach(function (e) {
        var a = tasks[e[0]].node, b = tasks[e[1]].node;
        if (a === b) return;
        var k = a.index + ',' + b.index; if (seen.has(k)) return; seen.add(k); edges.push([a.index, b.index]);
      });
      // longest-path layers (Kahn), then one barycentre pass to order each layer
      var n = nodes.length, indeg = new Int32Array(n), succ = [], pred = [];
      for (var i = 0; i < n; i++) { succ.push([]); pred.push([]); }
      edges.forEach(function (e) { indeg[e[1]]++; succ[e[0]].push(e[1]); pred[e[1]].push(e[0]); });
      var layer = new Int32Array(n), queue = [];
      for (i = 0; i < n; i++) if (!indeg[i]) queue.push(i);
      for (var qi = 0; qi < queue.length; qi++) {
        var u = queue[qi];
        succ[u].forEach(function (v) { if (layer[u] + 1 > layer[v]) layer[v] = layer[u] + 1; if (--indeg[v] === 0) queue.push(v); });
      }
      var layers = [];
      for (i = 0; i < n; i++) { (layers[layer[i]] = layers[layer[i]] || []).push(i); }
      var pos = new Float64Array(n), row = 0, width = 0;
      layers.forEach(function (L) {
        if (!L) return;
        L.forEach(function (v) {
          var p = pred[v]; if (!p.length) { pos[v] = v; return; }
          var s = 0; p.forEach(function (u) { s += pos[u]; }); pos[v] = s / p.length;
        });
        L.sort(function (a, b) { return pos[a] - pos[b] || a - b; });
        for (var k = 0; k < L.length; k += ROW_MAX) {
          var chunk = L.slice(k, k + ROW_MAX);
          chunk.forEach(function (v, j) {
            nodes[v].x = j * (NW + GX) + 10; nodes[v].y = row * (NH + GY) + 10; pos[v] = j;
          });
          width = Math.max(width, chunk.length * (NW + GX));
          row++;
        }
      });
      view = { nodes: nodes, edges: edges, byKey: byKey, width: width + 20, height: row * (NH + GY) + 20 };
      nodes.forEach(refreshNode);
    }

    function refreshNode(n) {
      var c = {};
      n.members.forEach(function (i) { var s = tasks[i].status; c[s] = (c[s] || 0) + 1; });
      n.counts = c;
      var st = 'pending';
      for (var i = 0; i < FD.ORDER.length; i++) { if (c[FD.ORDER[i]]) { st = FD.ORDER[i]; break; } }
      if (c.failed) st = 'failed'; if (c.running || c.retrying) st = 'running';
      n.status = st;
      n.crit = n.members.some(function (i) { return crit.has(tasks[i].name); });
      n.changed = n.members.some(function (i) { return tasks[i].changed; });
      var what = n.kind === 'map' ? 'mapped task ' + n.label + ' (' + n.members.length + ' instances: ' + FD.counts(c) + ')'
        : n.kind === 'grp' ? 'sub-flow ' + n.label + ' (' + n.members.length + ' tasks: ' + FD.counts(c) + '; click to expand)'
        : 'task ' + n.label + ': ' + st;
      if (n.changed) what += ' · code changed since the previous run';
      if (n.crit) what += ' · on the critical path';
      n.words = what;
    }

    // ---------------------------------------------------------------- drawing
    function draw() {
      box.replaceChildren();
      svg = canvas = null;
      box.style.height = Math.max(80, Math.min(420, view.height + 16)) + 'px';
      if (view.nodes.length <= SVG_MAX) { svg = buildSvg(false); box.appendChild(svg); }
      else { canvasInit(box); }
    }

    function buildSvg(forExport) {
      var s = FD.sv('svg', { xmlns: FD.SVGNS, width: view.width, height: view.height,
        viewBox: '0 0 ' + view.width + ' ' + view.height, role: 'img', 'aria-label': 'task graph of run ' + runId });
      if (forExport) s.appendChild(FD.sv('style', null, exportStyle()));
      var defs = FD.sv('defs'), mk = FD.sv('marker', { id: 'fd-arrow', viewBox: '0 0 8 8', refX: 8, refY: 4,
        markerWidth: 7, markerHeight: 7, orient: 'auto' });
      mk.appendChild(FD.sv('path', { d: 'M0,0 L8,4 L0,8 z', fill: '#90a4ae' }));
      defs.appendChild(mk); s.appendChild(defs);
      var ge = FD.sv('g', { 'class': 'edges' });
      view.edges.forEach(function (e) {
        var a = view.nodes[e[0]], b = view.nodes[e[1]];
        var x1 = a.x + NW / 2, y1 = a.y + NH, x2 = b.x + NW / 2, y2 = b.y, my = (y1 + y2) / 2;
        ge.appendChild(FD.sv('path', { 'class': 'edge', d: 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + my + ' ' + x2 + ',' + my + ' ' + x2 + ',' + y2,
          'marker-end': 'url(#fd-arrow)' }));
      });
      s.appendChild(ge);
      var gn = FD.sv('g', { 'class': 'nodes' });
      view.nodes.forEach(function (n) { gn.appendChild(svgNode(n)); });
      s.appendChild(gn);
      if (!forExport) s.addEventListener('click', function (ev) {
        var g = ev.target.closest('.node'); if (g) onClick(view.nodes[+g.getAttribute('data-i')]);
      });
      return s;
    }

    function svgNode(n) {
      var g = FD.sv('g', { 'class': 'node', 'data-i': n.index, 'data-key': n.key, transform: 'translate(' + n.x + ',' + n.y + ')' });
      g.appendChild(FD.sv('title'));
      g.appendChild(FD.sv('rect', { 'class': 'box', width: NW, height: NH, rx: 5 }));
      g.appendChild(FD.sv('g', { 'class': 'stack' }));
      g.appendChild(FD.sv('text', { x: 8, y: 19 }));
      n.el = g; paintSvgNode(n);
      return g;
    }

    function paintSvgNode(n) {
      var g = n.el; if (!g) return;
      g.setAttribute('class', 'node' + (n.crit ? ' crit' : '') + (n.changed ? ' changed' : ''));
      g.setAttribute('data-status', n.status);
      g.setAttribute('aria-label', n.words);
      g.firstChild.textContent = n.words;
      var rect = g.childNodes[1], stack = g.childNodes[2], text = g.childNodes[3];
      rect.setAttribute('class', 'box s-' + n.status);
      rect.setAttribute('fill', FD.COLORS[n.status] || '#ccc');
      stack.replaceChildren();
      if (n.kind !== 'task') {  // stacked node: a bar of counts by status along the bottom
        var x = 0, total = n.members.length;
        FD.ORDER.forEach(function (k) {
          if (!n.counts[k]) return;
          var w = NW * n.counts[k] / total;
          stack.appendChild(FD.sv('rect', { x: x, y: NH - 6, width: w, height: 6, fill: FD.COLORS[k] }));
          x += w;
        });
      }
      var label = n.kind === 'map' ? n.label + ' ×' + n.members.length : n.kind === 'grp' ? '▸ ' + n.label + ' (' + n.members.length + ')' : n.label;
      text.textContent = label.length > 22 ? label.slice(0, 21) + '…' : label;
      text.setAttribute('class', n.status === 'pending' || n.status === 'skipped' ? 'dark' : 'light');
    }

    function canvasInit(box) {
      canvas = FD.el('canvas', { 'aria-label': 'task graph (' + view.nodes.length + ' nodes; click a node for its panel)', role: 'img' });
      box.appendChild(canvas);
      var w = box.clientWidth || 800, h = box.clientHeight || 420;
      canvas.width = w; canvas.height = h;
      cam = { x: 0, y: 0, s: Math.max(0.25, Math.min(1, w / view.width)) };
      var drag = null;
      canvas.addEventListener('mousedown', function (e) { drag = { x: e.clientX, y: e.clientY, cx: cam.x, cy: cam.y, moved: false }; });
      window.addEventListener('mouseup', function (e) {
        if (drag && !drag.moved) { var n = hit(e); if (n) onClick(n); }
        drag = null;
      });
      canvas.addEventListener('mousemove', function (e) {
        if (!drag) { var n = hit(e); canvas.title = n ? n.words : ''; return; }
        var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        cam.x = drag.cx - dx / cam.s; cam.y = drag.cy - dy / cam.s; schedule();
      });
      canvas.addEventListener('wheel', function (e) {
        e.preventDefault();
        var r = canvas.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
        var wx = cam.x + mx / cam.s, wy = cam.y + my / cam.s;
        cam.s = Math.max(0.02, Math.min(3, cam.s * (e.deltaY < 0 ? 1.2 : 1 / 1.2)));
        cam.x = wx - mx / cam.s; cam.y = wy - my / cam.s; schedule();
      }, { passive: false });
      paintCanvas(canvas.getContext('2d'), cam, canvas.width, canvas.height);
    }

    function hit(e) {
      var r = canvas.getBoundingClientRect();
      var x = cam.x + (e.clientX - r.left) / cam.s, y = cam.y + (e.clientY - r.top) / cam.s;
      for (var i = 0; i < view.nodes.length; i++) {
        var n = view.nodes[i];
        if (x >= n.x && x <= n.x + NW && y >= n.y && y <= n.y + NH) return n;
      }
      return null;
    }

    function schedule() {
      if (dirty) return; dirty = true;
      requestAnimationFrame(function () {
        dirty = false;
        if (canvas) paintCanvas(canvas.getContext('2d'), cam, canvas.width, canvas.height);
      });
    }

    function paintCanvas(ctx, c, w, h) {
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, w, h);
      ctx.setTransform(c.s, 0, 0, c.s, -c.x * c.s, -c.y * c.s);
      var x0 = c.x, y0 = c.y, x1 = c.x + w / c.s, y1 = c.y + h / c.s;
      var vis = function (n) { return n.x + NW >= x0 && n.x <= x1 && n.y + NH >= y0 && n.y <= y1; };
      // many edges seen from afar are a grey fog: fainter, so the states stay readable
      ctx.globalAlpha = c.s < 0.5 && view.edges.length > 2000 ? 0.2 : 1;
      ctx.strokeStyle = '#90a4ae'; ctx.lineWidth = 1; ctx.beginPath();
      view.edges.forEach(function (e) {
        var a = view.nodes[e[0]], b = view.nodes[e[1]];
        if (!vis(a) && !vis(b)) return;
        ctx.moveTo(a.x + NW / 2, a.y + NH); ctx.lineTo(b.x + NW / 2, b.y);
      });
      ctx.stroke();
      ctx.globalAlpha = 1;
      var text = c.s > 0.45;
      ctx.font = '12px system-ui, sans-serif'; ctx.textBaseline = 'middle';
      view.nodes.forEach(function (n) {
        if (!vis(n)) return;
        ctx.fillStyle = FD.COLORS[n.status] || '#ccc';
        ctx.fillRect(n.x, n.y, NW, NH);
        if (n.kind !== 'task') {
          var x = n.x;
          FD.ORDER.forEach(function (k) {
            if (!n.counts[k]) return;
            var bw = NW * n.counts[k] / n.members.length; ctx.fillStyle = FD.COLORS[k]; ctx.fillRect(x, n.y + NH - 6, bw, 6); x += bw;
          });
        }
        if (n.crit || n.changed) { ctx.strokeStyle = n.changed ? '#ff6f00' : '#000'; ctx.lineWidth = 2.5; ctx.strokeRect(n.x, n.y, NW, NH); }
        if (text) {
          ctx.fillStyle = n.status === 'pending' || n.status === 'skipped' ? '#263238' : '#fff';
          var label = n.kind === 'map' ? n.label + ' ×' + n.members.length : n.kind === 'grp' ? '▸ ' + n.label : n.label;
          ctx.fillText(label.length > 22 ? label.slice(0, 21) + '…' : label, n.x + 8, n.y + NH / 2);
        }
      });
    }

    function exportStyle() {
      return '.edge{stroke:#90a4ae;fill:none}.node text{font:12px sans-serif}.light{fill:#fff}.dark{fill:#263238}' +
        '.crit rect.box{stroke:#000;stroke-width:2.5}.changed rect.box{stroke:#ff6f00;stroke-width:3}';
    }

    function svgText() { return new XMLSerializer().serializeToString(buildSvg(true)); }
    function pngCanvas() {
      var scale = Math.min(1, 8000 / Math.max(view.width, view.height));
      var cv = document.createElement('canvas');
      cv.width = Math.ceil(view.width * scale); cv.height = Math.ceil(view.height * scale);
      paintCanvas(cv.getContext('2d'), { x: 0, y: 0, s: scale }, cv.width, cv.height);
      return cv;
    }


    return {
      /* tasks: [{name, status, changed, index}], edges: [[i, j]] task indices, crit: Set of names */
      layout: function (t, e, c) { tasks = t; edgesIn = e; crit = c; layout(); return view; },
      draw: draw,
      view: function () { return view; },
      setCrit: function (c) { crit = c; },
      /* a task's state changed: its node is repainted in place */
      refresh: function (n) { refreshNode(n); if (svg) paintSvgNode(n); else schedule(); },
      refreshAll: function () { view.nodes.forEach(function (n) { refreshNode(n); if (svg) paintSvgNode(n); }); if (!svg) schedule(); },
      expand: function (prefixName) { expanded.add(prefixName); layout(); draw(); },
      svgText: svgText, pngCanvas: pngCanvas
    };
  }
  return { create: create, base: base, SVG_MAX: SVG_MAX };
})();
