/**
 * The fleet server's edges against a real `edgekit serve` process: missing or wrong credentials get
 * 401/403, a device cannot act as another, malformed requests get a 4xx with a reason and the server
 * keeps serving, unknown devices wait for an operator, admin actions are audited. Against each store
 * (SQLite, and a real PostgreSQL server started for the test).
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetDeviceClient, FleetProtocolError } from '../src/fleet/protocol/client.js';
import { authMessage } from '../src/fleet/protocol/messages.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const key = () => generateKeyPairSync('ed25519').privateKey;

describe.each(FLEET_BACKENDS)('fleet server API (%s)', (backend) => {
  let fixture: FleetDatabase;
  let server: ServerProcess;
  let admin: string;
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    server = await startServerProcess(fixture.db, ['--admin-token-file', fixture.adminTokenFile]);
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
  });
  afterAll(async () => {
    await server?.stop();
    await fixture?.close();
  });

  it('makes an unknown device wait for acceptance, then serves it', async () => {
    const c = new FleetDeviceClient({ server: server.url, deviceId: 'walk-in', privateKey: key() });
    expect(await c.authenticate()).toBe('pending');
    await expect(c.checkIn({ board: 'b', version: '1', slot: 'a' })).rejects.toMatchObject({ status: 403 });
    expect((await api(server.url, admin, 'GET', '/v1/admin/devices?status=pending')).body.map((d: { id: string }) => d.id)).toEqual(['walk-in']);
    expect((await api(server.url, admin, 'POST', '/v1/admin/devices/walk-in/accept')).body.status).toBe('accepted');
    expect(await c.authenticate()).toBe('accepted');
    expect(await c.checkIn({ board: 'b', version: '1', slot: 'a' })).toEqual({ release: null });
  });

  it('refuses another key for a known device id, forged tokens and used nonces', async () => {
    const owner = key();
    const prov = (await api(server.url, admin, 'POST', '/v1/admin/provisioning-tokens', {})).body.token as string;
    expect(await new FleetDeviceClient({ server: server.url, deviceId: 'dev-1', privateKey: owner, provisioningToken: prov }).authenticate()).toBe('accepted');
    const impostor = new FleetDeviceClient({ server: server.url, deviceId: 'dev-1', privateKey: key(), provisioningToken: prov });
    await expect(impostor.authenticate()).rejects.toMatchObject({ status: 403 });

    // A signature by another key over a real nonce, and a nonce used twice.
    const { nonce } = (await api(server.url, null, 'POST', '/v1/device/hello', { deviceId: 'dev-1' })).body;
    const publicKey = (await import('node:crypto')).createPublicKey(owner).export({ type: 'spki', format: 'pem' }) as string;
    const wrongSig = sign(null, authMessage('dev-1', nonce), key()).toString('base64');
    expect((await api(server.url, null, 'POST', '/v1/device/auth', { deviceId: 'dev-1', publicKey, nonce, signature: wrongSig })).status).toBe(401);
    const goodSig = sign(null, authMessage('dev-1', nonce), owner).toString('base64');
    expect((await api(server.url, null, 'POST', '/v1/device/auth', { deviceId: 'dev-1', publicKey, nonce, signature: goodSig })).status).toBe(401);

    const check = { board: 'b', version: '1', slot: 'a' };
    expect((await api(server.url, null, 'POST', '/v1/device/check-in', check)).status).toBe(401);
    expect((await api(server.url, 'dev.ZGV2LTE.99999999999.forged', 'POST', '/v1/device/check-in', check)).status).toBe(401);
    expect((await api(server.url, admin, 'POST', '/v1/device/check-in', check)).status).toBe(401);
  });

  it('enforces admin scopes and audits admin actions', async () => {
    expect((await api(server.url, null, 'GET', '/v1/admin/devices')).status).toBe(401);
    expect((await api(server.url, 'adm_nonsense', 'GET', '/v1/admin/devices')).status).toBe(401);
    expect((await api(server.url, null, 'GET', '/metrics')).status).toBe(401);
    const reader = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'dashboard', scope: 'read' })).body.token as string;
    expect((await api(server.url, reader, 'GET', '/v1/admin/devices')).status).toBe(200);
    expect((await api(server.url, reader, 'POST', '/v1/admin/channels', { name: 'beta' })).status).toBe(403);
    expect((await api(server.url, reader, 'GET', '/v1/admin/audit')).status).toBe(403);
    expect((await api(server.url, admin, 'POST', '/v1/admin/channels', { name: 'beta' })).status).toBe(200);
    const audit = (await api(server.url, admin, 'GET', '/v1/admin/audit')).body as Array<{ action: string; actor: string }>;
    expect(audit.map((a) => a.action)).toEqual(expect.arrayContaining(['channel.create', 'token.create', 'device.accept', 'provisioning-token.create']));
    expect(audit.find((a) => a.action === 'channel.create')!.actor).toMatch(/^bootstrap /);
  });

  it('answers malformed requests with a 4xx and a reason, and keeps serving', async () => {
    const u = server.url;
    const bad: Array<[number, Promise<{ status: number; body: any }>]> = [
      [400, api(u, null, 'POST', '/v1/device/hello', undefined, '{not json')],
      [400, api(u, null, 'POST', '/v1/device/hello', { deviceId: 'has space' })],
      [400, api(u, null, 'POST', '/v1/device/hello', { deviceId: 'x', extra: 1 })],
      [400, api(u, null, 'POST', '/v1/device/hello', undefined, 'null')],
      [413, api(u, null, 'POST', '/v1/device/hello', { deviceId: 'x'.repeat(100_000) })],
      [404, api(u, null, 'GET', '/nothing/here')],
      [405, api(u, null, 'GET', '/v1/device/hello')],
      [400, api(u, admin, 'POST', '/v1/admin/rollouts', { version: '9', channel: 'stable', stages: [{ percent: 50 }, { percent: 10 }] })],
      [404, api(u, admin, 'POST', '/v1/admin/rollouts', { version: '9', channel: 'stable', stages: [{ percent: 50 }] })],
      [404, api(u, admin, 'POST', '/v1/admin/rollouts/ro_none/pause')],
      [400, api(u, admin, 'GET', '/v1/admin/devices?status=bogus')],
    ];
    for (const [status, p] of bad) {
      const r = await p;
      expect(r.status).toBe(status);
      expect(r.body.error).toMatch(/\S/);
    }
    const wrongType = await fetch(new URL('/v1/device/hello', u), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' });
    expect(wrongType.status).toBe(415);
    const metrics = await api(u, admin, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toMatch(/^# TYPE edgekit_fleet_devices gauge$/m);
    expect(metrics.body).toMatch(/^edgekit_fleet_devices\{status="accepted"\} 2$/m);
    expect(server.child.exitCode).toBeNull();
  });

  it('a client error is an error the device can read', async () => {
    const c = new FleetDeviceClient({ server: server.url, deviceId: 'walk-in', privateKey: key() });
    const err = await c.authenticate().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetProtocolError);
    expect((err as Error).message).toMatch(/registered with another key/);
  });
});
