/**
 * Two `edgekit serve` processes sharing one PostgreSQL database (a real server started for the
 * test), behind a round-robin balancer: they start at the same time on an empty database, a device
 * can handshake on one and check in on the other, and together they run one staged rollout whose
 * stages advance once and which pauses itself once, with no device offered twice or outside its stage.
 */
import { createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { Agent } from 'node:http';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetDeviceClient } from '../src/fleet/protocol/client.js';
import { authMessage, type ReportRequest } from '../src/fleet/protocol/messages.js';
import { deviceBucket, stageOfBucket } from '../src/fleet/rollout.js';
import { MIGRATIONS } from '../src/fleet/store/migrations.js';
import { fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';
import { startBalancer, type Balancer } from './helpers/tcp-balancer.js';

const DEVICES = 1000;
const STAGES = [{ percent: 5, waitSeconds: 0 }, { percent: 20, waitSeconds: 0 }, { percent: 60, waitSeconds: 0 }, { percent: 100, waitSeconds: 0 }];

let fixture: FleetDatabase;
let servers: ServerProcess[] = [];
let balancer: Balancer | undefined;
let admin: string;
beforeAll(async () => {
  fixture = await fleetDatabase('postgres');
});
afterAll(async () => {
  await balancer?.close();
  await Promise.all(servers.map((s) => s.stop()));
  await fixture?.close();
});

async function pool<T>(items: T[], f: (x: T) => Promise<void>, width = 32): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await f(items[next++]);
  }));
}

const pem = (k: KeyObject) => createPublicKey(k).export({ type: 'spki', format: 'pem' }) as string;

/** `edgekit_fleet_http_requests_total` samples of one server, as route+code -> count. */
async function requestCounts(url: string): Promise<Map<string, number>> {
  const text = (await api(url, admin, 'GET', '/metrics')).body as string;
  const m = new Map<string, number>();
  for (const [, labels, n] of text.matchAll(/^edgekit_fleet_http_requests_total\{(.*)\} (\d+)$/gm)) m.set(labels, Number(n));
  return m;
}

describe('two fleet servers sharing one PostgreSQL database', () => {
  it('start at the same time on an empty database: one migration run, one first admin token', async () => {
    const files = [join(fixture.dir, 'a.admin-token'), join(fixture.dir, 'b.admin-token')];
    servers = await Promise.all(files.map((adminTokenFile) => startServerProcess(fixture.db, ['--admin-token-file', adminTokenFile])));
    const written = files.filter((f) => existsSync(f));
    expect(written).toHaveLength(1);
    admin = await adminToken(fixture.db, written[0]);
    for (const s of servers) expect((await api(s.url, admin, 'GET', '/v1/admin/tokens')).body).toHaveLength(1);

    const c = new pg.Client({ connectionString: fixture.db });
    await c.connect();
    try {
      const versions = (await c.query('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => Number(r.version));
      expect(versions).toEqual(MIGRATIONS.map((_, i) => i + 1));
    } finally {
      await c.end();
    }
  });

  it('a handshake started on one server finishes on the other; a nonce is single-use across both', async () => {
    const [a, b] = servers;
    const owner = generateKeyPairSync('ed25519').privateKey;
    const prov = (await api(a.url, admin, 'POST', '/v1/admin/provisioning-tokens', { channel: 'stable', tags: ['lab'] })).body.token as string;
    const { nonce } = (await api(a.url, null, 'POST', '/v1/device/hello', { deviceId: 'cross-1' })).body;
    const signature = sign(null, authMessage('cross-1', nonce), owner).toString('base64');
    const auth = { deviceId: 'cross-1', publicKey: pem(owner), nonce, signature, provisioningToken: prov };
    const accepted = await api(b.url, null, 'POST', '/v1/device/auth', auth);
    expect(accepted).toMatchObject({ status: 200, body: { status: 'accepted' } });
    // The same signed nonce again, on either server: refused.
    expect((await api(a.url, null, 'POST', '/v1/device/auth', auth)).status).toBe(401);
    expect((await api(b.url, null, 'POST', '/v1/device/auth', auth)).status).toBe(401);

    const token = accepted.body.token as string;
    expect(await api(a.url, token, 'POST', '/v1/device/check-in', { board: 'qemu-x86_64', version: '1.0.0', slot: 'a' })).toEqual({ status: 200, body: { release: null } });
    const report = { id: 'r1', state: 'checking', running: '1.0.0', slot: 'a' };
    expect((await api(b.url, token, 'POST', '/v1/device/reports', report)).body).toEqual({ duplicate: false });
    expect((await api(a.url, token, 'POST', '/v1/device/reports', report)).body).toEqual({ duplicate: true });
    const device = (await api(b.url, admin, 'GET', '/v1/admin/devices/cross-1')).body;
    expect(device).toMatchObject({ status: 'accepted', board: 'qemu-x86_64', version: '1.0.0', tags: ['lab'], lastReport: { id: 'r1' } });
  });

  it('run one staged rollout together: stages advance once, it pauses itself once, nobody is offered twice or early', async () => {
    balancer = await startBalancer(servers.map((s) => s.url));
    const before = await Promise.all(servers.map((s) => requestCounts(s.url)));
    const prov = (await api(servers[0].url, admin, 'POST', '/v1/admin/provisioning-tokens', { channel: 'stable', tags: ['field'] })).body.token as string;
    // A connection per request: the balancer sends a device's consecutive requests to alternating servers.
    const agent = new Agent({ keepAlive: false, maxSockets: 32 });
    const devices = Array.from({ length: DEVICES }, (_, i) => {
      const id = `pair-${String(i).padStart(4, '0')}`;
      const client = new FleetDeviceClient({ server: balancer!.url, deviceId: id, privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken: prov, agent });
      return { id, client, version: '1.0.0', slot: 'a' as 'a' | 'b' };
    });
    await pool(devices, async (d) => void expect(await d.client.authenticate()).toBe('accepted'));

    expect((await api(servers[1].url, admin, 'POST', '/v1/admin/releases', { version: '2.0.0', channel: 'stable' })).status).toBe(200);
    const created = await api(servers[0].url, admin, 'POST', '/v1/admin/rollouts', {
      version: '2.0.0', channel: 'stable', filter: { tags: ['field'] }, stages: STAGES, maxFailureRatio: 0.1, minSuccessRatio: 0.9,
    });
    expect(created.status).toBe(200);
    const id = created.body.id as string;
    const stageOf = (deviceId: string) => stageOfBucket(STAGES, deviceBucket(id, deviceId));

    // Each round: every device checks in once; an offered device installs at once and reports
    // (through whichever server the balancer picks), so reports of one stage are judged on both
    // servers at the same time as other devices check in.
    const offers = new Map<string, number[]>();
    const stage1Devices = new Set(devices.filter((d) => stageOf(d.id) === 1).map((d) => d.id));
    let failing = 0;
    const round = async () => {
      await pool(devices, async (d) => {
        const r = await d.client.checkIn({ board: 'qemu-x86_64', version: d.version, slot: d.slot });
        if (!r.release) return;
        expect(r.release).toEqual({ version: '2.0.0', channel: 'stable', rolloutId: id });
        offers.set(d.id, [...(offers.get(d.id) ?? []), Date.now()]);
        // A fifth of the second stage fails health after reboot and falls back.
        const healthy = !(stage1Devices.has(d.id) && failing++ % 5 === 0);
        const steps: ReportRequest['state'][] = ['downloading', 'installing', 'rebooting', healthy ? 'committed' : 'rolled-back'];
        for (const [n, state] of steps.entries()) {
          const committed = state === 'committed';
          expect((await d.client.report({ id: `${d.id}-2.0.0-${n}`, state, version: '2.0.0', running: committed ? '2.0.0' : '1.0.0', slot: committed ? 'b' : 'a' })).duplicate).toBe(false);
        }
        if (healthy) (d.version = '2.0.0'), (d.slot = 'b');
      });
    };
    for (let i = 0; i < 6; i++) await round();

    const rollout = (await api(servers[1].url, admin, 'GET', `/v1/admin/rollouts/${id}`)).body;
    expect(rollout).toMatchObject({ state: 'paused', stage: 1 });
    expect(rollout.reason).toMatch(/failure ratio/);

    // Both servers took part in everything.
    const after = await Promise.all(servers.map((s) => requestCounts(s.url)));
    for (const route of ['POST /v1/device/hello', 'POST /v1/device/auth', 'POST /v1/device/check-in', 'POST /v1/device/reports']) {
      for (let s = 0; s < servers.length; s++) {
        const key = `route="${route}",code="200"`;
        expect((after[s].get(key) ?? 0) - (before[s].get(key) ?? 0), `${route} on server ${s + 1}`).toBeGreaterThan(50);
      }
    }

    // The audit log: consecutive numbers, one advance to stage 2, one automatic pause, no completion.
    const audit = ((await api(servers[0].url, admin, 'GET', '/v1/admin/audit?limit=10000')).body as Array<{ seq: number; at: number; action: string; actor: string; target: string; detail: any }>)
      .reverse();
    expect(audit.map((a) => a.seq)).toEqual(audit.map((_, i) => i + 1));
    const ofRollout = audit.filter((a) => a.target === id);
    expect(ofRollout.map((a) => [a.action, a.actor === 'server' ? 'server' : 'operator'])).toEqual([
      ['rollout.create', 'operator'], ['rollout.advance', 'server'], ['rollout.auto-pause', 'server'],
    ]);
    expect(ofRollout[1].detail).toEqual({ stage: 1 });
    expect(ofRollout[2].detail).toMatchObject({ stage: 1 });
    const advancedAt = ofRollout[1].at;

    // Offers: each device once, only in stages 1-2, stage-2 devices only after stage 2 opened.
    for (const [deviceId, times] of offers) {
      expect(times, deviceId).toHaveLength(1);
      expect(stageOf(deviceId), deviceId).toBeLessThanOrEqual(1);
      if (stageOf(deviceId) === 1) expect(times[0], deviceId).toBeGreaterThanOrEqual(advancedAt);
    }
    const members = (await api(servers[0].url, admin, 'GET', `/v1/admin/rollouts/${id}/devices`)).body as Array<{ deviceId: string; stage: number; state: string }>;
    expect(members.map((m) => m.deviceId).sort()).toEqual([...offers.keys()].sort());
    for (const m of members) expect(m.stage, m.deviceId).toBe(stageOf(m.deviceId));
    expect(members.filter((m) => m.stage === 0).length).toBe(devices.filter((d) => stageOf(d.id) === 0).length);
    expect(members.filter((m) => m.state === 'failed').length).toBe(Math.ceil(members.filter((m) => m.stage === 1).length / 5));
    expect(members.every((m) => m.state === 'succeeded' || m.state === 'failed')).toBe(true);

    // Paused: nothing more is offered, whichever server answers.
    const offered = offers.size;
    await round();
    expect(offers.size).toBe(offered);
    expect(balancer.counts.every((n) => n > DEVICES)).toBe(true);
    agent.destroy();
  }, 600_000);
});
