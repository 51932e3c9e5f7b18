// The inventory, and one device with its history (its reports, newest first).
import { get } from './api.js';
import { ago, h, iso, table } from './dom.js';

export async function devicesView() {
  const devices = await get('/v1/admin/devices');
  const rows = (list) => list.map((d) => [
    h('a', { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id), d.status, d.channel, d.board ?? '-', d.version ?? '-', ago(d.lastSeen),
    d.lastReport ? d.lastReport.state : '-', d.tags.join(', ')]);
  const head = ['Device', 'Status', 'Channel', 'Board', 'Version', 'Last seen', 'Last report', 'Tags'];
  const holder = h('div', {}, table(head, rows(devices), { id: 'devices' }));
  const filter = h('input', { type: 'search', placeholder: 'filter by id, version, tag…', 'aria-label': 'filter devices' });
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    const hit = (d) => [d.id, d.version ?? '', d.board ?? '', d.channel, d.status, ...d.tags].some((x) => x.toLowerCase().includes(q));
    holder.replaceChildren(table(head, rows(q ? devices.filter(hit) : devices), { id: 'devices' }));
  });
  return h('section', {}, h('h1', {}, `Devices (${devices.length})`), filter, holder);
}

export async function deviceView(id) {
  const path = `/v1/admin/devices/${encodeURIComponent(id)}`;
  const [d, reports] = await Promise.all([get(path), get(`${path}/reports?limit=200`)]);
  const slots = d.slotState ? Object.entries(d.slotState).map(([k, v]) => `${k}: ${v}`).join(', ') : '';
  return h('section', { id: 'device', 'data-id': d.id },
    h('h1', {}, `Device ${d.id}`),
    h('dl', {},
      h('dt', {}, 'Status'), h('dd', {}, d.status),
      h('dt', {}, 'Channel'), h('dd', {}, d.channel),
      h('dt', {}, 'Tags'), h('dd', {}, d.tags.join(', ') || '-'),
      h('dt', {}, 'Board'), h('dd', {}, d.board ?? '-'),
      h('dt', {}, 'Version'), h('dd', { id: 'version' }, d.version ?? '-', d.previousVersion ? ` (before: ${d.previousVersion})` : ''),
      h('dt', {}, 'Slot'), h('dd', {}, d.slot ?? '-', slots ? ` (${slots})` : ''),
      h('dt', {}, 'Last seen'), h('dd', {}, d.lastSeen === null ? 'never' : `${iso(d.lastSeen)} (${ago(d.lastSeen)})`),
      h('dt', {}, 'Registered'), h('dd', {}, iso(d.createdAt))),
    h('h2', {}, 'History'),
    reports.length
      ? table(['Received', 'State', 'Release', 'Running', 'Slot', 'Reason'],
        reports.map((r) => [iso(r.receivedAt), h('span', { class: `report ${r.state}` }, r.state), r.version ?? '-', r.running, r.slot, r.reason ?? '']), { id: 'history' })
      : h('p', { class: 'muted' }, 'No reports yet.'));
}
