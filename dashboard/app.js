// The dashboard: sign-in with an admin token, then hash routes over the admin API.
//   #/                 fleet overview     #/rollouts/<id>   one rollout, stage by stage
//   #/rollouts         all rollouts       #/devices[/<id>]  inventory, one device's history
//   #/rollouts/new     start a rollout (operators)
import { api, ApiError, token } from './api.js';
import { h } from './dom.js';
import { overviewView } from './overview.js';
import { newRolloutView } from './new-rollout.js';
import { rolloutsView, rolloutView } from './rollouts.js';
import { devicesView, deviceView } from './devices.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const errorBox = document.getElementById('error');

let me = null;

export function showError(err) {
  errorBox.hidden = !err;
  errorBox.textContent = err ? (err instanceof ApiError ? `The server refused: ${err.reason} (HTTP ${err.status})` : String(err.message || err)) : '';
}

function signIn(reason) {
  me = null;
  nav.hidden = true;
  who.replaceChildren();
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', placeholder: 'adm_…', required: true, size: 48 });
  const message = h('p', { class: 'muted', id: 'signin-message' }, reason || 'Paste an admin token (read, operator or admin scope). It is kept in this tab only.');
  const form = h('form', { id: 'signin', class: 'card' },
    h('h1', {}, 'Sign in'),
    message,
    h('label', { for: 'token' }, 'Admin token'), ' ', input, ' ',
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const w = await api('GET', '/v1/admin/whoami', undefined, input.value.trim());
      token.set(input.value.trim());
      signedIn(w);
    } catch (err) {
      message.textContent = err instanceof ApiError ? `Not signed in: ${err.reason}` : `Not signed in: ${err.message}`;
      message.className = 'bad';
    }
  });
  showError(null);
  main.replaceChildren(form);
  input.focus();
}

function signedIn(w) {
  me = w;
  nav.hidden = false;
  who.replaceChildren(
    h('span', { id: 'whoami' }, `${w.name} · `, h('span', { class: 'scope', 'data-scope': w.scope }, w.scope)), ' ',
    h('button', { class: 'link', onclick: () => { token.clear(); signIn('Signed out.'); } }, 'Sign out'));
  route();
}

let renderSeq = 0;

async function route() {
  if (!me) return;
  const seq = ++renderSeq;
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const ctx = { me, refresh: route, error: showError };
  let view;
  if (parts[0] === 'rollouts' && parts[1] === 'new') view = () => newRolloutView(ctx);
  else if (parts[0] === 'rollouts' && parts[1]) view = () => rolloutView(parts[1], ctx);
  else if (parts[0] === 'rollouts') view = () => rolloutsView(ctx);
  else if (parts[0] === 'devices' && parts[1]) view = () => deviceView(parts[1], ctx);
  else if (parts[0] === 'devices') view = () => devicesView(ctx);
  else view = () => overviewView(ctx);
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('current', a.getAttribute('href') === `#/${parts[0] ?? ''}`);
  try {
    const el = await view();
    if (seq !== renderSeq) return; // a newer navigation won
    showError(null);
    main.replaceChildren(el);
  } catch (err) {
    if (seq !== renderSeq) return;
    if (err instanceof ApiError && err.status === 401) {
      token.clear();
      return signIn(`Signed out: ${err.reason}`);
    }
    showError(err);
  }
}

window.addEventListener('hashchange', route);
// Keep the figures fresh on a wall screen; not while someone is typing in a filter, nor on the
// new-rollout form, whose fields a refresh would clear.
setInterval(() => {
  if (me && document.visibilityState === 'visible' && !(document.activeElement instanceof HTMLInputElement) && location.hash !== '#/rollouts/new') route();
}, 30_000);

async function start() {
  const t = token.get();
  if (!t) return signIn();
  try {
    signedIn(await api('GET', '/v1/admin/whoami'));
  } catch (err) {
    token.clear();
    signIn(err instanceof ApiError ? `Signed out: ${err.reason}` : undefined);
  }
}

start();
