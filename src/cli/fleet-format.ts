/** Human-readable output of `edgekit fleet` (--json prints the API's answers as they are). */
import type { RolloutCost } from '../fleet/cost.js';
import type { RolloutProgress } from '../fleet/progress.js';
import type { RolloutStatus } from '../fleet/service.js';
import type { DeviceRow, StoredReport } from '../fleet/store/store.js';
import { formatWindow } from '../fleet/windows.js';

/** Columns padded to their widest cell; the last column is not padded. */
export function table(head: string[], rows: Array<Array<string | number>>): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n');
}

export function bytes(n: number | null): string {
  if (n === null) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) (v /= 1024), u++;
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function ago(at: number | null, now = Date.now()): string {
  if (at === null) return 'never';
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function deviceTable(devices: DeviceRow[]): string {
  if (!devices.length) return 'no devices';
  return table(
    ['DEVICE', 'STATUS', 'CHANNEL', 'BOARD', 'VERSION', 'LAST SEEN', 'LAST REPORT', 'TAGS'],
    devices.map((d) => [d.id, d.status, d.channel, d.board ?? '-', d.version ?? '-', ago(d.lastSeen), d.lastReport?.state ?? '-', d.tags.join(',') || '-']),
  );
}

export function deviceDetail(d: DeviceRow, reports: StoredReport[]): string {
  const lines = [
    `device ${d.id}`,
    `  status        ${d.status}`,
    `  channel       ${d.channel}`,
    `  tags          ${d.tags.join(', ') || '-'}`,
    `  board         ${d.board ?? '-'}`,
    `  version       ${d.version ?? '-'}${d.previousVersion ? ` (before: ${d.previousVersion})` : ''}`,
    `  slot          ${d.slot ?? '-'}${d.slotState ? ` (${Object.entries(d.slotState).map(([k, v]) => `${k}: ${v}`).join(', ')})` : ''}`,
    `  last seen     ${d.lastSeen === null ? 'never' : `${iso(d.lastSeen)} (${ago(d.lastSeen)})`}`,
    `  registered    ${iso(d.createdAt)}`,
  ];
  if (reports.length) {
    lines.push('', table(['RECEIVED', 'STATE', 'VERSION', 'RUNNING', 'SLOT', 'REASON'],
      reports.map((r) => [iso(r.receivedAt), r.state, r.version ?? '-', r.running, r.slot, r.reason ?? ''])));
  } else lines.push('', 'no reports yet');
  return lines.join('\n');
}

export function rolloutTable(rollouts: RolloutStatus[]): string {
  if (!rollouts.length) return 'no rollouts';
  return table(
    ['ROLLOUT', 'VERSION', 'CHANNEL', 'STATE', 'STAGE', 'OFFERED', 'IN PROGRESS', 'SUCCEEDED', 'FAILED'],
    rollouts.map((r) => [r.id, r.version, r.channel, r.state, `${r.stage + 1}/${r.stages.length}`, r.counts.offered, r.counts.inProgress, r.counts.succeeded, r.counts.failed]),
  );
}

export function rolloutDetail(r: RolloutStatus, p: RolloutProgress): string {
  const filter = [r.filter.board && `board ${r.filter.board}`, r.filter.tags.length && `tags ${r.filter.tags.join(',')}`].filter(Boolean).join(', ');
  const lines = [
    `rollout ${r.id}: ${r.version} to channel ${r.channel}${filter ? ` (${filter})` : ''}`,
    `  state         ${r.state}${r.reason ? ` (${r.reason})` : ''}`,
    `  stage         ${r.stage + 1} of ${r.stages.length}, opened ${iso(r.stageStartedAt)}`,
    `  failures      ${pct(p.failureRatio)} of the devices in stages 1-${r.stage + 1} (pauses above ${pct(r.maxFailureRatio)})`,
    `  successes     ${pct(p.successRatio)} (the next stage needs ${pct(r.minSuccessRatio)})`,
    `  windows       ${r.windows.length ? `${r.windows.map((w) => formatWindow(w) + (w.timeZone ? '' : ' UTC')).join('; ')}` : 'any time'}`,
    '',
    table(['STAGE', 'PERCENT', 'WAIT', 'OPEN', 'DEVICES', 'OFFERED', 'IN PROGRESS', 'SUCCEEDED', 'FAILED', 'FAILURE RATIO'],
      p.stages.map((s) => [s.stage, `${s.percent}%`, `${s.waitSeconds}s`, s.open ? 'yes' : 'no', s.devices, s.offered, s.inProgress, s.succeeded + s.alreadyOn, s.failed, pct(s.failureRatio)])),
  ];
  return lines.join('\n');
}

export function costDetail(c: RolloutCost): string {
  const filter = [c.filter.board && `board ${c.filter.board}`, c.filter.tags.length && `tags ${c.filter.tags.join(',')}`].filter(Boolean).join(', ');
  const head = `${c.rolloutId ? `rollout ${c.rolloutId}: ` : ''}${c.version} to channel ${c.channel}${filter ? ` (${filter})` : ''}: ` +
    `${c.devices} device${c.devices === 1 ? '' : 's'} to update, ${bytes(c.bytes)} in all` +
    `${c.unknownDevices ? ` (+ ${c.unknownDevices} of unknown size)` : ''}; ${c.upToDate} already run ${c.version}`;
  if (!c.cohorts.length) return head;
  const from = (v: string | null) => v ?? '(none)';
  return [
    head,
    '',
    table(['FROM VERSION', 'BOARD', 'DEVICES', 'DOWNLOAD', 'PER DEVICE', 'COHORT'],
      c.cohorts.map((k) => [from(k.fromVersion), k.board ?? '(unknown)', k.devices, k.method ?? 'unknown', bytes(k.bytesPerDevice), bytes(k.bytes)])),
    ...c.cohorts.filter((k) => k.problem).map((k) => `unknown size for ${from(k.fromVersion)} on ${k.board ?? 'an unknown board'}: ${k.problem}`),
  ].join('\n');
}
