// A tiny element builder: text always goes in as text nodes, never as HTML, so nothing a device
// reports (ids, reasons, versions) can inject markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function table(head, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, head.map((c) => h('th', {}, c)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))));
}

export const pct = (x) => `${(x * 100).toFixed(1)}%`;

export function bytes(n) {
  if (n === null || n === undefined) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function ago(at) {
  if (at === null || at === undefined) return 'never';
  const s = Math.max(0, Math.round((Date.now() - at) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

/** A bar of segments [{n, cls, label}] out of total. */
export function bar(total, segments) {
  return h('div', { class: 'bar', role: 'img', 'aria-label': segments.map((s) => `${s.label} ${s.n}`).join(', ') },
    segments.filter((s) => s.n > 0).map((s) => {
      const seg = h('span', { class: `seg ${s.cls}`, title: `${s.label}: ${s.n}` });
      // Through the CSSOM: the page's content security policy allows no inline style attributes.
      seg.style.width = `${total ? (100 * s.n) / total : 0}%`;
      return seg;
    }));
}
