// The fleet at a glance: device counts, versions across the fleet, online and failing devices,
// and the rollouts under way.
import { get } from './api.js';
import { ago, bar, h, table } from './dom.js';
import { rolloutRows } from './rollouts.js';

function stat(name, value, label, cls = '') {
  return h('div', { class: `stat ${cls}`, 'data-stat': name }, h('div', { class: 'value' }, value), h('div', { class: 'label' }, label));
}

export async function overviewView() {
  const [o, rollouts] = await Promise.all([get('/v1/admin/overview'), get('/v1/admin/rollouts')]);
  const active = rollouts.filter((r) => r.state === 'running' || r.state === 'paused');
  const accepted = o.devices.accepted;
  return h('section', { id: 'overview' },
    h('h1', {}, 'Fleet'),
    h('div', { class: 'stats' },
      stat('devices', accepted, 'devices'),
      stat('online', o.online, `online (seen in the last ${Math.round(o.onlineWithinSeconds / 60)} min)`),
      stat('failing', o.failing, 'failing (last report: failed or rolled back)', o.failing ? 'bad' : ''),
      stat('pending', o.devices.pending, 'waiting for acceptance', o.devices.pending ? 'warn' : ''),
      stat('rollouts', active.length, 'rollouts running or paused')),
    h('h2', {}, 'Versions'),
    o.versions.length
      ? table(['Version', 'Devices', '', 'Online', 'Failing'], o.versions.map((v) => [
        v.version ?? '(not checked in)', v.devices,
        bar(accepted, [{ n: v.devices, cls: 'ok', label: 'devices' }]), v.online, v.failing]), { id: 'versions' })
      : h('p', { class: 'muted' }, 'No accepted devices yet.'),
    h('h2', {}, 'Rollouts under way'),
    active.length ? table(['Rollout', 'Version', 'Channel', 'State', 'Stage', 'Progress', 'Failed'], rolloutRows(active), { id: 'active-rollouts' })
      : h('p', { class: 'muted' }, 'None. ', h('a', { href: '#/rollouts' }, 'All rollouts')),
    h('h2', {}, 'Failing devices'),
    o.failingDevices.length
      ? table(['Device', 'Version', 'Report', 'Reason', 'When'], o.failingDevices.map((d) => [
        h('a', { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id), d.version ?? '-', d.state, d.reason ?? '', ago(d.at)]), { id: 'failing-devices' })
      : h('p', { class: 'muted' }, 'None.'),
    h('h2', {}, 'Channels'),
    table(['Channel', 'Devices'], o.channels.map((c) => [c.channel, c.devices])),
  );
}
