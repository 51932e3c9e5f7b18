// A new rollout, for operators: which release to which devices, in which stages, and what it would
// cost before it starts. The server checks everything (stages, ratios, windows) and says what is
// wrong; this page only gathers the fields.
import { get, post } from './api.js';
import { h } from './dom.js';
import { costSection } from './rollouts.js';

const field = (label, input, hint) => h('label', { class: 'field' }, h('span', {}, label), input, hint && h('small', { class: 'muted' }, hint));
const list = (text) => text.split(/[,\s]+/).map((s) => s.trim()).filter(Boolean);

export async function newRolloutView(ctx) {
  const [channels, releases] = await Promise.all([get('/v1/admin/channels'), get('/v1/admin/releases')]);
  const channel = h('select', { id: 'channel', name: 'channel' }, channels.map((c) => h('option', { value: c.name }, c.name)));
  const version = h('select', { id: 'version', name: 'version', required: true });
  const showVersions = () => {
    const here = releases.filter((r) => r.channel === channel.value).reverse();
    version.replaceChildren(...here.map((r) => h('option', { value: r.version }, r.board ? `${r.version} (${r.board})` : r.version)));
  };
  channel.addEventListener('change', showVersions);
  showVersions();
  const stages = h('input', { id: 'stages', name: 'stages', value: '1,10,50,100', required: true, size: 24 });
  const wait = h('input', { id: 'wait', name: 'wait', type: 'number', min: 0, value: 60, size: 6 });
  const tags = h('input', { id: 'tags', name: 'tags', placeholder: 'field, eu', size: 24 });
  const board = h('input', { id: 'board', name: 'board', placeholder: 'any', size: 16 });
  const maxFailure = h('input', { id: 'max-failure', name: 'max-failure', type: 'number', min: 0, max: 100, step: 'any', value: 5, size: 6 });
  const windows = h('input', { id: 'windows', name: 'windows', placeholder: 'mon-fri 01:00-05:00 Europe/Berlin', size: 40 });
  const costBox = h('div', { id: 'new-cost' });

  const filter = () => {
    const f = {};
    if (list(tags.value).length) f.tags = list(tags.value);
    if (board.value.trim()) f.board = board.value.trim();
    return f;
  };
  const body = () => ({
    version: version.value,
    channel: channel.value,
    filter: filter(),
    stages: stages.value.split(',').map((p, i) => ({ percent: Number(p.trim()), waitSeconds: i === 0 ? 0 : Math.round(Number(wait.value) * 60) })),
    maxFailureRatio: Number(maxFailure.value) / 100,
    windows: windows.value.split(';').map((w) => w.trim()).filter(Boolean),
  });
  const busy = async (button, work) => {
    button.disabled = true;
    try {
      ctx.error(null);
      await work();
    } catch (err) {
      ctx.error(err);
    } finally {
      button.disabled = false;
    }
  };
  const price = h('button', { id: 'price', type: 'button' }, 'What it costs');
  price.addEventListener('click', () => busy(price, async () => {
    costBox.replaceChildren(costSection(await post('/v1/admin/rollouts/cost', { version: version.value, channel: channel.value, filter: filter() }).catch((e) => e)));
  }));
  const create = h('button', { id: 'create', type: 'submit' }, 'Start rollout');
  const form = h('form', { id: 'new-rollout', class: 'card' },
    h('h1', {}, 'New rollout'),
    field('Channel', channel),
    field('Release', version, releases.length ? undefined : 'No releases yet (edgekit release --fleet).'),
    field('Stages (% of devices)', stages, 'Each stage opens after the wait, once the one before succeeds.'),
    field('Wait between stages (minutes)', wait),
    field('Tags (all of)', tags),
    field('Board', board),
    field('Pause above failure ratio (%)', maxFailure),
    field('Maintenance windows', windows, '[DAYS ]HH:MM-HH:MM[ ZONE], several separated by ";"; empty: any time. Without a zone: UTC.'),
    h('div', { class: 'actions' }, price, ' ', create),
    costBox);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void busy(create, async () => {
      const r = await post('/v1/admin/rollouts', body());
      location.hash = `#/rollouts/${encodeURIComponent(r.id)}`;
    });
  });
  return form;
}
