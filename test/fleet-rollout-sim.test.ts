/**
 * 2,000 simulated devices (through the same protocol module the update agent uses) against a real
 * `edgekit serve` process: a staged rollout where 20% of stage 2 fails health after reboot pauses
 * itself before stage 3; a server killed mid-rollout loses nothing; replayed reports change nothing.
 * Against each store (SQLite, and a real PostgreSQL server started for the test).
 */
import { generateKeyPairSync } from 'node:crypto';
import { Agent } from 'node:http';
import { afterAll, describe, expect, it } from 'vitest';
import { FleetDeviceClient } from '../src/fleet/protocol/client.js';
import type { ReportRequest } from '../src/fleet/protocol/messages.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const DEVICES = 2000;

async function pool<T>(items: T[], f: (x: T) => Promise<void>, width = 16): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await f(items[next++]);
  }));
}

describe.each(FLEET_BACKENDS)('fleet rollout simulation (%s)', (backend) => {
  let fixture: FleetDatabase | undefined;
  let server: ServerProcess | undefined;
  afterAll(async () => {
    await server?.stop();
    await fixture?.close();
  });

  it('pauses itself on stage-2 failures, survives a restart, ignores replays', async () => {
    fixture = await fleetDatabase(backend);
    const { db, adminTokenFile } = fixture;
    server = await startServerProcess(db, ['--admin-token-file', adminTokenFile]);
    const admin = await adminToken(db, adminTokenFile);
    const prov = await api(server.url, admin, 'POST', '/v1/admin/provisioning-tokens', { channel: 'stable', tags: ['field'] });
    expect(prov.status).toBe(200);

    const agent = new Agent({ keepAlive: true, maxSockets: 16 });
    let url = server.url;
    const devices = Array.from({ length: DEVICES }, (_, i) => {
      const id = `sim-${String(i).padStart(4, '0')}`;
      const { privateKey } = generateKeyPairSync('ed25519');
      const state = { version: '1.0.0', slot: 'a' as 'a' | 'b' };
      const client = () => new FleetDeviceClient({ server: url, deviceId: id, privateKey, provisioningToken: prov.body.token, agent });
      return { id, i, state, client: client(), remake() { this.client = client(); } };
    });
    await pool(devices, async (d) => void expect(await d.client.authenticate()).toBe('accepted'));

    const offeredEver = new Set<string>();
    const checkInAll = async () => {
      const offered: typeof devices = [];
      await pool(devices, async (d) => {
        const r = await d.client.checkIn({ board: 'qemu-x86_64', version: d.state.version, slot: d.state.slot });
        if (r.release) {
          expect(r.release.version).toBe('2.0.0');
          offered.push(d);
          offeredEver.add(d.id);
        }
      });
      return offered;
    };
    expect(await checkInAll()).toHaveLength(0);

    expect((await api(url, admin, 'POST', '/v1/admin/releases', { version: '2.0.0', channel: 'stable' })).status).toBe(200);
    const created = await api(url, admin, 'POST', '/v1/admin/rollouts', {
      version: '2.0.0', channel: 'stable', filter: { tags: ['field'] },
      stages: [{ percent: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }], maxFailureRatio: 0.1, minSuccessRatio: 0.95,
    });
    expect(created.status).toBe(200);
    const rollout = () => api(url, admin, 'GET', `/v1/admin/rollouts/${created.body.id}`).then((r) => r.body);

    const sent: Array<{ d: (typeof devices)[number]; r: ReportRequest }> = [];
    const update = async (d: (typeof devices)[number], healthy: boolean) => {
      const steps: ReportRequest['state'][] = ['downloading', 'installing', 'rebooting', healthy ? 'committed' : 'rolled-back'];
      for (const [n, state] of steps.entries()) {
        const running = state === 'committed' ? '2.0.0' : '1.0.0';
        const slot = state === 'committed' ? 'b' : 'a';
        const r: ReportRequest = { id: `${d.id}-2.0.0-${n}`, state, version: '2.0.0', running, slot, ...(healthy ? {} : { reason: 'health check failed after reboot' }) };
        expect((await d.client.report(r)).duplicate).toBe(false);
        sent.push({ d, r });
      }
      if (healthy) d.state.version = '2.0.0', d.state.slot = 'b';
    };

    // Stage 1 (1%): all healthy; the rollout opens stage 2.
    const stage1 = await checkInAll();
    expect(stage1.length).toBeGreaterThan(5);
    expect(stage1.length).toBeLessThan(50);
    await pool(stage1, (d) => update(d, true));
    expect(await rollout()).toMatchObject({ state: 'running', stage: 1 });

    // Stage 2 (10%): offered, then the server is killed before any of them reports.
    const stage2 = await checkInAll();
    expect(stage2.length).toBeGreaterThan(120);
    expect(stage2.length).toBeLessThan(300);
    const before = await rollout();
    await server.kill();
    server = await startServerProcess(db, ['--admin-token-file', adminTokenFile]);
    url = server.url;
    for (const d of devices) d.remake(); // fresh clients: only the new URL and the device's key carry over
    expect(await rollout()).toEqual(before);

    // 20% of stage 2 falls back to the old slot, interleaved with the healthy ones.
    await pool(stage2, (d) => update(d, stage2.indexOf(d) % 5 !== 0));
    const paused = await rollout();
    expect(paused).toMatchObject({ state: 'paused', stage: 1 });
    expect(paused.reason).toMatch(/failure ratio/);

    // Paused: nobody new is offered; nobody outside stages 1-2 ever was.
    expect(await checkInAll()).toHaveLength(0);
    const members = (await api(url, admin, 'GET', `/v1/admin/rollouts/${created.body.id}/devices`)).body as Array<{ deviceId: string; stage: number; state: string }>;
    expect(new Set(members.map((m) => m.deviceId))).toEqual(offeredEver);
    expect(offeredEver.size).toBe(stage1.length + stage2.length);
    expect(members.every((m) => m.stage <= 1)).toBe(true);
    expect(members.filter((m) => m.state === 'failed')).toHaveLength(stage2.filter((_, i) => i % 5 === 0).length);

    // Replays (the same report ids, again) change nothing.
    const metricsBefore = (await api(url, admin, 'GET', '/metrics')).body as string;
    const statusBefore = await rollout();
    await pool(sent, async ({ d, r }) => void expect((await d.client.report(r)).duplicate).toBe(true));
    expect(await rollout()).toEqual(statusBefore);
    const reportLines = (m: string) => m.split('\n').filter((l) => l.startsWith('edgekit_fleet_reports_total'));
    expect(reportLines((await api(url, admin, 'GET', '/metrics')).body)).toEqual(reportLines(metricsBefore));

    // Resuming re-judges the rollout: the failures still exceed the limit, so it pauses again.
    expect((await api(url, admin, 'POST', `/v1/admin/rollouts/${created.body.id}/resume`)).body.state).toBe('paused');
    const inventory = (await api(url, admin, 'GET', '/v1/admin/devices/sim-0000')).body;
    expect(inventory).toMatchObject({ id: 'sim-0000', status: 'accepted', board: 'qemu-x86_64', tags: ['field'] });
    agent.destroy();
  }, 600_000);
});
