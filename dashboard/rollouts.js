// Rollouts: the list, and one rollout stage by stage with its failure ratio, what it still costs
// in downloads, and pause/resume for operators (new-rollout.js starts one).
import { ApiError, canOperate, get, post } from './api.js';
import { bar, bytes, h, iso, pct, table } from './dom.js';

const stateBadge = (s) => h('span', { class: `badge ${s}`, 'data-state': s }, s);

export function rolloutRows(rollouts) {
  return rollouts.map((r) => {
    const c = r.counts;
    return [
      h('a', { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.id), r.version, r.channel, stateBadge(r.state), `${r.stage + 1}/${r.stages.length}`,
      bar(c.offered, [{ n: c.succeeded, cls: 'ok', label: 'succeeded' }, { n: c.failed, cls: 'bad', label: 'failed' }, { n: c.inProgress, cls: 'busy', label: 'in progress' }, { n: c.offered - c.succeeded - c.failed - c.inProgress, cls: 'idle', label: 'offered' }]),
      `${c.failed}/${c.offered}`,
    ];
  });
}

export async function rolloutsView(ctx) {
  const rollouts = await get('/v1/admin/rollouts');
  return h('section', { id: 'rollouts' },
    h('h1', {}, 'Rollouts'),
    canOperate(ctx.me) && h('p', {}, h('a', { id: 'new-rollout-link', href: '#/rollouts/new' }, 'New rollout')),
    rollouts.length ? table(['Rollout', 'Version', 'Channel', 'State', 'Stage', 'Progress', 'Failed'], rolloutRows([...rollouts].reverse()))
      : h('p', { class: 'muted' }, 'No rollouts yet.'));
}

const windowText = (w) => `${w.days.length ? `${w.days.join(',')} ` : ''}${w.start}-${w.end} ${w.timeZone ?? 'UTC'}`;

export function costSection(cost) {
  if (cost instanceof ApiError) return h('p', { class: 'muted', id: 'cost-unavailable' }, `Not known: ${cost.reason}`);
  const head = h('p', { id: 'cost-total' }, `${cost.devices} device${cost.devices === 1 ? '' : 's'} still to update: ${bytes(cost.bytes)}`,
    cost.unknownDevices ? ` (+ ${cost.unknownDevices} of unknown size)` : '', `; ${cost.upToDate} already run ${cost.version}.`);
  if (!cost.cohorts.length) return head;
  return h('div', {}, head, table(['From version', 'Board', 'Devices', 'Download', 'Per device', 'Cohort'],
    cost.cohorts.map((k) => [k.fromVersion ?? '(none)', k.board ?? '(unknown)', k.devices, k.method ?? `unknown: ${k.problem}`, bytes(k.bytesPerDevice), bytes(k.bytes)]), { id: 'cost' }));
}

export async function rolloutView(id, ctx) {
  const path = `/v1/admin/rollouts/${encodeURIComponent(id)}`;
  const [r, p, cost] = await Promise.all([get(path), get(`${path}/progress`), get(`${path}/cost`).catch((e) => (e instanceof ApiError ? e : Promise.reject(e)))]);
  const act = (action) => async (e) => {
    e.target.disabled = true;
    try {
      await post(`${path}/${action}`);
      await ctx.refresh();
    } catch (err) {
      ctx.error(err);
      e.target.disabled = false;
    }
  };
  const actions = canOperate(ctx.me)
    ? h('div', { class: 'actions' },
      r.state === 'running' && h('button', { id: 'pause', onclick: act('pause') }, 'Pause'),
      r.state === 'paused' && h('button', { id: 'resume', onclick: act('resume') }, 'Resume'))
    : h('p', { class: 'muted', id: 'read-only' }, `Your token (${ctx.me.scope}) can watch this rollout; pausing and resuming need an operator token.`);
  const filter = [r.filter.board && `board ${r.filter.board}`, r.filter.tags.length && `tags ${r.filter.tags.join(', ')}`].filter(Boolean).join('; ') || 'every device of the channel';
  const over = p.failureRatio > p.maxFailureRatio;
  return h('section', { id: 'rollout', 'data-id': r.id },
    h('h1', {}, `Rollout ${r.id} `, stateBadge(r.state)),
    h('dl', {},
      h('dt', {}, 'Release'), h('dd', {}, `${r.version} to channel ${r.channel}`),
      h('dt', {}, 'Devices'), h('dd', {}, filter),
      h('dt', {}, 'Stage'), h('dd', { id: 'stage' }, `${p.stage} of ${r.stages.length}, opened ${iso(r.stageStartedAt)}`),
      h('dt', {}, 'Failure ratio'), h('dd', { id: 'failure-ratio', class: over ? 'bad' : '' }, `${pct(p.failureRatio)} of stages 1-${p.stage} (pauses above ${pct(p.maxFailureRatio)})`),
      h('dt', {}, 'Success ratio'), h('dd', {}, `${pct(p.successRatio)} (the next stage needs ${pct(p.minSuccessRatio)})`),
      h('dt', {}, 'Windows'), h('dd', { id: 'windows' }, r.windows.length ? r.windows.map(windowText).join('; ') : 'any time'),
      r.reason && h('dt', {}, 'Reason'), r.reason && h('dd', { id: 'reason' }, r.reason)),
    actions,
    h('h2', {}, 'Stages'),
    table(['Stage', 'Share', 'Wait', 'Open', 'Devices', 'Progress', 'Succeeded', 'In progress', 'Offered', 'Failed', 'Failure ratio'],
      p.stages.map((s) => [
        s.stage, `${s.percent}%`, `${s.waitSeconds}s`, s.open ? 'yes' : 'no', s.devices,
        bar(s.devices, [{ n: s.succeeded + s.alreadyOn, cls: 'ok', label: 'succeeded' }, { n: s.failed, cls: 'bad', label: 'failed' }, { n: s.inProgress, cls: 'busy', label: 'in progress' }, { n: s.offered - s.succeeded - s.failed - s.inProgress, cls: 'idle', label: 'offered' }]),
        s.succeeded + s.alreadyOn, s.inProgress, s.offered, s.failed, pct(s.failureRatio),
      ]), { id: 'stages' }),
    h('h2', {}, 'Downloads left'),
    costSection(cost));
}
