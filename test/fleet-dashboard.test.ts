/**
 * The fleet dashboard in a real headless Chromium against a real `edgekit serve`: devices report
 * through the agent's protocol client, an operator signs in with a token, sees the fleet's counts,
 * opens a rollout, pauses and resumes it, starts a new one from the form (checked through the
 * API); a read-only token gets no pause button or form; nothing but the static files is served without a token. Against each store
 * (SQLite, and a real PostgreSQL server started for the test).
 */
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, signIn } from './helpers/browser.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { provisioningToken, simDevices, type SimDevice } from './helpers/fleet-devices.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

describe.each(FLEET_BACKENDS)('fleet dashboard (%s)', (backend) => {
  let fixture: FleetDatabase;
  let server: ServerProcess;
  let browser: Browser;
  let admin: string;
  let operator: string;
  let reader: string;
  let rolloutId: string;
  let updated: SimDevice[];
  let failed: SimDevice;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    browser = await launchChromium();
    fixture = await fleetDatabase(backend);
    server = await startServerProcess(fixture.db, ['--admin-token-file', fixture.adminTokenFile]);
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
    operator = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'night-shift', scope: 'operator' })).body.token;
    reader = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'wallboard', scope: 'read' })).body.token;

    // 20 field devices on 1.0, two walk-ins waiting for acceptance.
    const prov = await provisioningToken(server.url, admin, { tags: ['field'] });
    const devices = await simDevices(server.url, Array.from({ length: 20 }, (_, i) => `gw-${String(i).padStart(2, '0')}`), { provisioningToken: prov });
    await simDevices(server.url, ['walk-in-1', 'walk-in-2'], {});
    for (const d of devices) await d.checkIn();

    // Rollout of 2.0 in two stages; stage 1 updates, one of its devices falls back to its old slot.
    expect((await api(server.url, admin, 'POST', '/v1/admin/releases', { version: '2.0', channel: 'stable' })).status).toBe(200);
    const r = await api(server.url, admin, 'POST', '/v1/admin/rollouts', {
      version: '2.0', channel: 'stable', filter: { tags: ['field'] }, stages: [{ percent: 50 }, { percent: 100 }], maxFailureRatio: 0.5, minSuccessRatio: 1,
    });
    expect(r.status).toBe(200);
    rolloutId = r.body.id;
    const offered: SimDevice[] = [];
    for (const d of devices) if ((await d.checkIn()).release) offered.push(d);
    expect(offered.length).toBeGreaterThan(1);
    [failed, ...updated] = offered;
    await failed.update('2.0', false);
    for (const d of updated) await d.update('2.0', true);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await fixture?.close();
  });

  async function newPage(): Promise<Page> {
    const page = await (await browser.newContext()).newPage();
    page.on('pageerror', (e) => pageErrors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of (400|401|403|501) /.test(m.text())) pageErrors.push(`console: ${m.text()}`);
    });
    return page;
  }

  const stat = (page: Page, name: string) => page.locator(`[data-stat="${name}"] .value`);

  it('serves only its static files without a token', async () => {
    const index = await fetch(`${server.url}/dashboard/`);
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(index.headers.get('content-security-policy')).toMatch(/default-src 'none'; script-src 'self'/);
    expect(await index.text()).toMatch(/<script type="module" src="\/dashboard\/app\.js">/);
    expect((await fetch(`${server.url}/dashboard/app.js`)).headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect((await fetch(`${server.url}/`, { redirect: 'manual' })).headers.get('location')).toBe('/dashboard/');
    expect((await fetch(`${server.url}/dashboard/..%2fpackage.json`)).status).toBe(404);
    expect((await fetch(`${server.url}/dashboard/nothing.js`)).status).toBe(404);
    for (const path of ['/v1/admin/overview', '/v1/admin/whoami', `/v1/admin/rollouts/${rolloutId}/progress`, `/v1/admin/devices/gw-00/reports`]) {
      const r = await api(server.url, null, 'GET', path);
      expect(r.status, path).toBe(401);
    }
  });

  it('refuses a wrong token with the reason', async () => {
    const page = await newPage();
    await page.goto(`${server.url}/dashboard/`);
    await page.getByLabel('Admin token').fill('adm_not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.locator('#signin-message').textContent()).toBe('Not signed in: invalid admin token');
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    await page.context().close();
  });

  it('shows the fleet, and lets an operator pause and resume a rollout', async () => {
    const page = await newPage();
    await signIn(page, server.url, operator);
    expect(await page.locator('#whoami').textContent()).toBe('night-shift · operator');

    // The overview's counts.
    await stat(page, 'devices').waitFor();
    expect(await stat(page, 'devices').textContent()).toBe('20');
    expect(await stat(page, 'online').textContent()).toBe('20');
    expect(await stat(page, 'failing').textContent()).toBe('1');
    expect(await stat(page, 'pending').textContent()).toBe('2');
    expect(await stat(page, 'rollouts').textContent()).toBe('1');
    const versions = await page.locator('#versions tbody tr').evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
    expect(versions.map((v) => [v[0], v[1]])).toEqual([['1.0', String(20 - updated.length)], ['2.0', String(updated.length)]].sort((a, b) => Number(b[1]) - Number(a[1]) || (a[0] < b[0] ? -1 : 1)));
    expect(await page.locator('#failing-devices tbody tr td').first().textContent()).toBe(failed.id);

    // The token is in this tab's sessionStorage only: a reload keeps it, another context has none.
    await page.reload();
    await stat(page, 'devices').waitFor();
    expect(await page.evaluate(() => [sessionStorage.length, localStorage.length, document.cookie])).toEqual([1, 0, '']);
    const other = await newPage();
    await other.goto(`${server.url}/dashboard/`);
    await other.locator('#signin').waitFor();
    await other.context().close();

    // The rollout, stage by stage.
    await page.locator('#active-rollouts').getByRole('link', { name: rolloutId }).click();
    await page.locator(`#rollout[data-id="${rolloutId}"]`).waitFor();
    expect(await page.locator('#rollout h1 .badge').textContent()).toBe('running');
    expect(await page.locator('#stage').textContent()).toMatch(/^1 of 2, opened /);
    const offered = updated.length + 1;
    const progress = (await api(server.url, reader, 'GET', `/v1/admin/rollouts/${rolloutId}/progress`)).body;
    const ratio = `${((100 * 1) / progress.stages[0].devices).toFixed(1)}%`;
    expect(await page.locator('#failure-ratio').textContent()).toBe(`${ratio} of stages 1-1 (pauses above 50.0%)`);
    const stage1 = await page.locator('#stages tbody tr').first().locator('td').allTextContents();
    expect([stage1[0], stage1[1], stage1[3], stage1[6], stage1[8], stage1[9], stage1[10]]).toEqual(['1', '50%', 'yes', String(updated.length), String(offered), '1', ratio]);
    // Without --repo the server cannot say what the rollout costs, and the page says why.
    expect(await page.locator('#cost-unavailable').textContent()).toMatch(/started without --repo/);

    // Pause: the server has it paused, by this token.
    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.locator('#rollout h1 .badge').textContent()).toBe('paused');
    expect((await api(server.url, reader, 'GET', `/v1/admin/rollouts/${rolloutId}`)).body).toMatchObject({ state: 'paused', reason: 'paused by night-shift' });
    expect(await page.locator('#reason').textContent()).toBe('paused by night-shift');
    expect((await failed.checkIn()).release).toBeNull();

    // Resume.
    await page.getByRole('button', { name: 'Resume' }).click();
    await expect.poll(() => page.locator('#rollout h1 .badge').textContent()).toBe('running');
    expect((await api(server.url, reader, 'GET', `/v1/admin/rollouts/${rolloutId}`)).body.state).toBe('running');
    const audit = (await api(server.url, admin, 'GET', '/v1/admin/audit')).body as Array<{ action: string; actor: string; target: string }>;
    expect(audit.filter((a) => a.target === rolloutId && a.action !== 'rollout.create').map((a) => [a.action, a.actor.split(' ')[0]])).toEqual([['rollout.resume', 'night-shift'], ['rollout.pause', 'night-shift']]);

    // A device's history, from the failing list.
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('#failing-devices').getByRole('link', { name: failed.id }).click();
    await page.locator(`#device[data-id="${failed.id}"]`).waitFor();
    const history = await page.locator('#history tbody tr').evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
    expect(history.map((h) => h[1])).toEqual(['rolled-back', 'rebooting', 'installing', 'downloading']);
    expect(history[0][5]).toBe('health check failed after reboot');
    expect(await page.locator('#version').textContent()).toBe('1.0');
    await page.context().close();
  });

  it('lets an operator start a rollout: priced first, a bad window refused with the reason, then created', async () => {
    expect((await api(server.url, admin, 'POST', '/v1/admin/channels', { name: 'beta' })).status).toBe(200);
    expect((await api(server.url, admin, 'POST', '/v1/admin/releases', { version: '2.1', channel: 'beta' })).status).toBe(200);
    const page = await newPage();
    await signIn(page, server.url, operator);
    await page.locator('nav').getByRole('link', { name: 'Rollouts' }).click();
    await page.locator('#new-rollout-link').click();
    await page.locator('#new-rollout').waitFor();
    await page.locator('#channel').selectOption('beta');
    expect(await page.locator('#version option').allTextContents()).toEqual(['2.1']);
    await page.locator('#stages').fill('20,100');
    await page.locator('#wait').fill('30');
    await page.locator('#tags').fill('field');
    await page.locator('#max-failure').fill('10');
    // Priced before it starts; this server has no repository, and the page says so.
    await page.locator('#price').click();
    await expect.poll(() => page.locator('#new-cost #cost-unavailable').textContent()).toMatch(/started without --repo/);

    // A window the server cannot read: refused with its reason, nothing created.
    await page.locator('#windows').fill('mon-fri 01:00-05:00 Mars/Olympus');
    await page.locator('#create').click();
    await expect.poll(() => page.locator('#error').textContent()).toMatch(/^The server refused: windows\.0: .*time zone "Mars\/Olympus" is not an IANA zone name .*\(HTTP 400\)$/);
    const beta = async () => ((await api(server.url, reader, 'GET', '/v1/admin/rollouts')).body as Array<{ id: string; channel: string }>).filter((r) => r.channel === 'beta');
    expect(await beta()).toEqual([]);

    await page.locator('#windows').fill('sat,sun 02:00-05:00 Europe/Berlin; 22:00-23:00');
    await page.locator('#create').click();
    await page.locator('#rollout').waitFor();
    const [created] = await beta();
    expect(await page.locator('#rollout').getAttribute('data-id')).toBe(created.id);
    expect((await api(server.url, reader, 'GET', `/v1/admin/rollouts/${created.id}`)).body).toMatchObject({
      version: '2.1', channel: 'beta', state: 'running', filter: { tags: ['field'], board: null },
      stages: [{ percent: 20, waitSeconds: 0 }, { percent: 100, waitSeconds: 1800 }], maxFailureRatio: 0.1,
      windows: [{ start: '02:00', end: '05:00', days: ['sun', 'sat'], timeZone: 'Europe/Berlin' }, { start: '22:00', end: '23:00', days: [] }],
    });
    expect(await page.locator('#windows').textContent()).toBe('sun,sat 02:00-05:00 Europe/Berlin; 22:00-23:00 UTC');
    const audit = (await api(server.url, admin, 'GET', '/v1/admin/audit')).body as Array<{ action: string; actor: string; target: string }>;
    expect(audit.filter((a) => a.target === created.id).map((a) => [a.action, a.actor.split(' ')[0]])).toEqual([['rollout.create', 'night-shift']]);
    await page.context().close();
  });

  it('gives a read-only token no pause button; the API refuses it with the reason', async () => {
    const page = await newPage();
    await signIn(page, server.url, reader);
    await page.goto(`${server.url}/dashboard/#/rollouts/${rolloutId}`);
    await page.locator(`#rollout[data-id="${rolloutId}"]`).waitFor();
    expect(await page.locator('#read-only').textContent()).toMatch(/^Your token \(read\) can watch this rollout; pausing and resuming need an operator token\.$/);
    expect(await page.getByRole('button', { name: 'Pause' }).count()).toBe(0);
    await page.goto(`${server.url}/dashboard/#/rollouts`);
    await page.locator('#rollouts').waitFor();
    expect(await page.locator('#new-rollout-link').count()).toBe(0);
    // The same request the button would send, from the page with its token: refused, with the reason.
    const refused = await page.evaluate(async (id) => {
      const res = await fetch(`/v1/admin/rollouts/${id}/pause`, { method: 'POST', headers: { authorization: `Bearer ${sessionStorage.getItem('edgekit.fleet.token')}`, 'content-type': 'application/json' }, body: '{}' });
      return [res.status, (await res.json()).error];
    }, rolloutId);
    expect(refused).toEqual([403, expect.stringMatching(/has scope read; this needs operator$/)]);
    expect((await api(server.url, reader, 'GET', `/v1/admin/rollouts/${rolloutId}`)).body.state).toBe('running');

    // Signing out forgets the token.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#signin').waitFor();
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    await page.context().close();
  });

  it('logged no script or policy errors in the pages', () => {
    expect(pageErrors).toEqual([]);
  });
});
