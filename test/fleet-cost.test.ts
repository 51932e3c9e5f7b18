/**
 * What a rollout costs before it starts, against a real release repository: two real gateway
 * builds published with edgekit release as 1.0 and 1.1, 1.1 with a root delta from 1.0. Devices report through the
 * agent's protocol client; the server (started with --repo) answers per cohort of current
 * versions: a delta for devices on 1.0, the full payloads for the rest, and says which cohorts it
 * cannot price. The figures are checked against the repository's files on disk; the CLI and the
 * dashboard (in Chromium) show the same numbers. The repository is built once; the server runs
 * against each store (SQLite, and a real PostgreSQL server started for the test).
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Release } from '../src/ota/repo/index.js';
import { targetFilePath } from '../src/ota/repo/layout.js';
import { edgekit, testDir } from './helpers/built-images.js';
import { launchChromium, signIn } from './helpers/browser.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { provisioningToken, simDevices, type SimDevice } from './helpers/fleet-devices.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';
import { gatewayImages } from './helpers/ota-repo-fixtures.js';

let repo: string;
/** Bytes of each file in the repository, found by its target path (the content-named file on disk). */
let size: (target: string) => number;
let files: { kernel: string; initrd: string; root: string; delta: string };

beforeAll(async () => {
  const dir = join(testDir(), 'fleet-cost');
  mkdirSync(dir, { recursive: true });
  const { v1, v2 } = await gatewayImages();
  repo = join(dir, 'repo');
  const keys = join(dir, 'keys');
  expect((await edgekit(['repo', 'init', repo, '--keys', keys])).code).toBe(0);
  expect((await edgekit(['release', v1.image, '--repo', repo, '--keys', keys, '--version', '1.0'])).code).toBe(0);
  const published = await edgekit(['release', v2.image, '--repo', repo, '--keys', keys, '--version', '1.1', '--delta-from', '1.0', '--json']);
  expect(published.stderr).toBe('');
  const r = JSON.parse(published.stdout) as Release;
  const byPath = new Map(r.files.map((f) => [f.path, f]));
  size = (target) => statSync(targetFilePath(repo, target, byPath.get(target)!.sha256)).size;
  expect(r.custom.deltas.map((d) => d.fromVersion)).toEqual(['1.0']);
  files = { kernel: r.custom.slot.kernel, initrd: r.custom.slot.initrd, root: r.custom.slot.rootPayload!, delta: r.custom.deltas[0].target };
}, 900_000);

const body = { version: '1.1', channel: 'stable', filter: { tags: ['field'] } };

/** Tables in a PostgreSQL database's public schema (0: nothing was migrated into it). */
async function tableCount(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return Number((await c.query(`SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'`)).rows[0].n);
  } finally {
    await c.end();
  }
}

describe.each(FLEET_BACKENDS)('rollout cost (%s)', (backend) => {
  let fixture: FleetDatabase;
  let server: ServerProcess;
  let admin: string;
  let browser: Browser | undefined;
  let fleet: SimDevice[];

  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    server = await startServerProcess(fixture.db, ['--repo', repo, '--admin-token-file', fixture.adminTokenFile]);
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
    expect((await api(server.url, admin, 'POST', '/v1/admin/releases', { version: '1.1', channel: 'stable' })).status).toBe(200);

    // The fleet: 5 on 1.0, 3 on 0.9 (no delta from it), 2 rpi4 boards (no 1.1 for them), 1 already
    // on 1.1, 1 that never checked in, and 2 untagged devices the rollout does not target.
    const prov = await provisioningToken(server.url, admin, { tags: ['field'] });
    fleet = [
      ...(await simDevices(server.url, ['a1', 'a2', 'a3', 'a4', 'a5'], { provisioningToken: prov, version: '1.0' })),
      ...(await simDevices(server.url, ['b1', 'b2', 'b3'], { provisioningToken: prov, version: '0.9' })),
      ...(await simDevices(server.url, ['c1', 'c2'], { provisioningToken: prov, version: '1.0', board: 'rpi4' })),
      ...(await simDevices(server.url, ['d1'], { provisioningToken: prov, version: '1.1' })),
    ];
    for (const d of fleet) expect(await d.checkIn()).toEqual({ release: null });
    await simDevices(server.url, ['silent'], { provisioningToken: prov });
    const untagged = await simDevices(server.url, ['u1', 'u2'], { provisioningToken: await provisioningToken(server.url, admin, {}), version: '1.0' });
    for (const d of untagged) await d.checkIn();
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await fixture?.close();
  });

  it('prices each cohort from the repository: a delta from 1.0, full payloads from 0.9', async () => {
    const r = await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', body);
    expect(r.status).toBe(200);
    const delta = size(files.kernel) + size(files.initrd) + size(files.delta);
    const full = size(files.kernel) + size(files.initrd) + size(files.root);
    // A delta is worth having: far smaller than the payload it rebuilds.
    expect(size(files.delta)).toBeLessThan(size(files.root) / 4);
    expect(r.body.cohorts).toEqual([
      { fromVersion: null, board: null, devices: 1, method: null, bytesPerDevice: null, bytes: null, files: [], problem: 'board unknown: the devices have not checked in yet' },
      { fromVersion: '0.9', board: 'qemu-x86_64', devices: 3, method: 'full', bytesPerDevice: full, bytes: 3 * full,
        files: [{ path: files.kernel, length: size(files.kernel) }, { path: files.initrd, length: size(files.initrd) }, { path: files.root, length: size(files.root) }] },
      { fromVersion: '1.0', board: 'qemu-x86_64', devices: 5, method: 'delta', bytesPerDevice: delta, bytes: 5 * delta,
        files: [{ path: files.kernel, length: size(files.kernel) }, { path: files.initrd, length: size(files.initrd) }, { path: files.delta, length: size(files.delta) }] },
      { fromVersion: '1.0', board: 'rpi4', devices: 2, method: null, bytesPerDevice: null, bytes: null, files: [], problem: 'the release repository has no release 1.1 for board rpi4' },
    ]);
    expect(r.body).toMatchObject({ version: '1.1', channel: 'stable', devices: 11, upToDate: 1, unknownDevices: 3, bytes: 3 * full + 5 * delta });

    // Without a filter the untagged devices on 1.0 join the delta cohort.
    const all = await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', { version: '1.1', channel: 'stable' });
    expect(all.body.cohorts.find((c: { fromVersion: string; board: string }) => c.fromVersion === '1.0' && c.board === 'qemu-x86_64').devices).toBe(7);
  });

  it('answers bad requests with the reason', async () => {
    const reader = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'viewer', scope: 'read' })).body.token;
    expect((await api(server.url, reader, 'POST', '/v1/admin/rollouts/cost', body)).status).toBe(200);
    expect((await api(server.url, null, 'POST', '/v1/admin/rollouts/cost', body)).status).toBe(401);
    const missing = await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', { version: '9.9', channel: 'stable' });
    expect([missing.status, missing.body.error]).toEqual([404, 'no release 9.9 in channel stable']);
    const bad = await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', { version: '1.1', channel: 'stable', stages: [] });
    expect(bad.status).toBe(400);
    expect((await api(server.url, admin, 'GET', '/v1/admin/rollouts/ro_none/cost')).status).toBe(404);
    // A --repo that is not a repository stops a server at start, saying so, before it touches the database.
    const other = { db: backend === 'sqlite' ? join(fixture.dir, 'other.db') : await fixture.cluster!.createDatabase('other'), token: join(fixture.dir, 'other.admin-token') };
    const r = await edgekit(['serve', '--db', other.db, '--admin-token-file', other.token, '--port', '0', '--repo', join(fixture.dir, 'no-such-repo')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`edgekit: --repo ${join(fixture.dir, 'no-such-repo')}: not a release repository (no metadata/timestamp.json; make one with edgekit repo init)\n`);
    expect(existsSync(other.token)).toBe(false);
    if (backend === 'sqlite') expect(existsSync(other.db)).toBe(false);
    else expect(await tableCount(other.db)).toBe(0);
  });

  it('edgekit fleet rollouts cost prints the same figures', async () => {
    const env = { EDGEKIT_FLEET_SERVER: server.url, EDGEKIT_FLEET_TOKEN: admin };
    const api1 = (await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', body)).body;
    const j = await edgekit(['fleet', 'rollouts', 'cost', '--version', '1.1', '--tag', 'field', '--json'], { env });
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual(api1);
    const t = await edgekit(['fleet', 'rollouts', 'cost', '--version', '1.1', '--tag', 'field'], { env });
    expect(t.code).toBe(0);
    const delta = api1.cohorts[2];
    expect(t.stdout).toMatch(/^1\.1 to channel stable \(tags field\): 11 devices to update, [\d.]+ MiB in all \(\+ 3 of unknown size\); 1 already run 1\.1$/m);
    expect(t.stdout).toMatch(/^FROM VERSION\s+BOARD\s+DEVICES\s+DOWNLOAD\s+PER DEVICE\s+COHORT$/m);
    expect(t.stdout).toMatch(new RegExp(`^1\\.0\\s+qemu-x86_64\\s+5\\s+delta\\s+\\S+ [KM]iB\\s+\\S+ [KM]iB$`, 'm'));
    expect(t.stdout).toMatch(/^0\.9\s+qemu-x86_64\s+3\s+full\s+/m);
    expect(t.stdout).toMatch(/^unknown size for 1\.0 on rpi4: the release repository has no release 1\.1 for board rpi4$/m);
    expect(delta.method).toBe('delta');
    const none = await edgekit(['fleet', 'rollouts', 'cost'], { env });
    expect(none.stderr).toBe('edgekit: rollouts cost: give a rollout id, or --version (and --channel, --tag, --board) for one not created yet\n');
  });

  it('an existing rollout costs what it has left; the dashboard shows it', async () => {
    const created = await api(server.url, admin, 'POST', '/v1/admin/rollouts', { ...body, stages: [{ percent: 100 }], maxFailureRatio: 0.5 });
    expect(created.status).toBe(200);
    const id = created.body.id as string;
    const cost = async () => (await api(server.url, admin, 'GET', `/v1/admin/rollouts/${id}/cost`)).body;
    const before = await cost();
    expect(before).toMatchObject({ rolloutId: id, devices: 11, upToDate: 1 });
    expect(before.cohorts).toEqual((await api(server.url, admin, 'POST', '/v1/admin/rollouts/cost', body)).body.cohorts);

    // Two devices on 1.0 update and one on 0.9 falls back (it is not offered the release again):
    // none of them downloads anything more.
    const pick = (id: string) => fleet.find((d) => d.id === id)!;
    for (const [d, healthy] of [[pick('a1'), true], [pick('a2'), true], [pick('b1'), false]] as const) {
      expect((await d.checkIn()).release).toMatchObject({ version: '1.1', rolloutId: id });
      await d.update('1.1', healthy);
    }
    const after = await cost();
    expect(after).toMatchObject({ devices: 8, upToDate: 3, unknownDevices: 3 });
    const cohort = (c: { cohorts: Array<{ fromVersion: string; board: string; devices: number; bytes: number }> }, v: string) =>
      c.cohorts.find((k) => k.fromVersion === v && k.board === 'qemu-x86_64')!;
    expect([cohort(after, '1.0').devices, cohort(after, '0.9').devices]).toEqual([3, 2]);
    expect(after.bytes).toBe(before.bytes - 2 * before.cohorts[2].bytesPerDevice - before.cohorts[1].bytesPerDevice);

    // The dashboard's rollout page shows the same figures.
    browser = await launchChromium();
    const page = await (await browser.newContext()).newPage();
    await signIn(page, server.url, admin);
    await page.goto(`${server.url}/dashboard/#/rollouts/${id}`);
    await page.locator('#cost').waitFor();
    expect(await page.locator('#cost-total').textContent()).toMatch(/^8 devices still to update: [\d.]+ MiB \(\+ 3 of unknown size\); 3 already run 1\.1\.$/);
    const rows = await page.locator('#cost tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)));
    expect(rows.map((r) => r.slice(0, 4))).toEqual([
      ['(none)', '(unknown)', '1', 'unknown: board unknown: the devices have not checked in yet'],
      ['0.9', 'qemu-x86_64', '2', 'full'],
      ['1.0', 'qemu-x86_64', '3', 'delta'],
      ['1.0', 'rpi4', '2', 'unknown: the release repository has no release 1.1 for board rpi4'],
    ]);
  });
});
