/** Plain-text tables for the benchmark's report: right-aligned numbers, one header row. */

export function formatTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function seconds(s) {
  return `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

export function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(2)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** ours / theirs: below 1.00 means ours is faster or smaller. */
export function ratio(ours, theirs) {
  return theirs > 0 ? `${(ours / theirs).toFixed(2)}x` : 'n/a';
}
