/* flowdeco dashboard helpers (our own code; no library).  Data is only ever written
   with textContent/setAttribute, never as markup, so names and errors stay text. */
'use strict';
var FD = (function () {
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  var SVGNS = 'http://www.w3.org/2000/svg';
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function pad(n) { return n < 10 ? '0' + n : '' + n; }
  function when(ts) {
    if (ts === null || ts === undefined) return '-';
    var d = new Date(ts * 1000);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + 'Z';
  }
  function secs(s) {
    if (s === null || s === undefined || isNaN(s)) return '-';
    if (s < 0.001) return (s * 1e6).toFixed(0) + 'µs';
    if (s < 1) return (s * 1000).toFixed(1) + 'ms';
    if (s < 60) return s.toFixed(2) + 's';
    var m = Math.floor(s / 60), h = Math.floor(m / 60);
    return h ? h + 'h' + pad(m % 60) + 'm' + pad(Math.floor(s % 60)) + 's' : m + 'm' + pad(Math.floor(s % 60)) + 's';
  }
  var COLORS = { succeeded: '#2e7d32', failed: '#c62828', running: '#1565c0', retrying: '#ef6c00',
    retried: '#ef6c00', skipped: '#9e9e9e', restored: '#00897b', interrupted: '#6a1b9a', pending: '#cfd8dc',
    crashed: '#ad1457' };
  var ORDER = ['running', 'retrying', 'failed', 'interrupted', 'succeeded', 'restored', 'skipped', 'pending'];
  function counts(c) {
    var keys = Object.keys(c).sort(function (a, b) { return ORDER.indexOf(a) - ORDER.indexOf(b); });
    return keys.filter(function (k) { return c[k]; }).map(function (k) { return c[k] + ' ' + k; }).join(', ');
  }
  function csrf() { var m = document.querySelector('meta[name=csrf-token]'); return m ? m.content : ''; }
  function download(name, blob) {
    var a = el('a', { href: URL.createObjectURL(blob), download: name });
    document.body.appendChild(a); a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  return { el: el, sv: sv, when: when, secs: secs, COLORS: COLORS, ORDER: ORDER, counts: counts,
           csrf: csrf, download: download, SVGNS: SVGNS };
})();
