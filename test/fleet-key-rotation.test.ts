/**
 * Device keys after the first handshake, against a real `edgekit serve` process on each store
 * (SQLite, and a real PostgreSQL server): a device replaces its key (both keys sign), tokens issued
 * before are refused, the old key no longer authenticates, a retry after a lost answer succeeds,
 * forged and replayed rotations are refused; an operator registers a device by its key
 * (pre-authorised) or sets a device's key. Then the agent's side (FleetLink, device-identity): a
 * power cut between the server's answer and the rename, rotation by key age, the derived device id
 * surviving a rotation, and `edgekit identity`.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetDeviceClient } from '../src/fleet/protocol/client.js';
import { rotateKeyMessage } from '../src/fleet/protocol/messages.js';
import { FleetLink } from '../src/ota/agent/fleet-link.js';
import { deviceIdFromKey, loadDeviceIdentity, prepareKeyRotation } from '../src/ota/agent/device-identity.js';
import { parseAgentConfig, type AgentConfig } from '../src/ota/agent/config.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const run = promisify(execFile);
const key = () => generateKeyPairSync('ed25519').privateKey;
const pem = (k: KeyObject) => createPublicKey(k).export({ type: 'spki', format: 'pem' }) as string;
const check = { board: 'b', version: '1', slot: 'a' } as const;
/** Tokens carry their time to the second: a key change must fall in a later second than the token it voids. */
const nextSecond = () => new Promise((r) => setTimeout(r, 1100 - (Date.now() % 1000)));

describe.each(FLEET_BACKENDS)('device keys (%s)', (backend) => {
  let fixture: FleetDatabase;
  let server: ServerProcess;
  let admin: string;
  let prov: string;
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    server = await startServerProcess(fixture.db, ['--admin-token-file', fixture.adminTokenFile]);
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
    prov = (await api(server.url, admin, 'POST', '/v1/admin/provisioning-tokens', {})).body.token;
  });
  afterAll(async () => {
    await server?.stop();
    await fixture?.close();
  });

  const audit = async () => (await api(server.url, admin, 'GET', '/v1/admin/audit?limit=1000')).body as Array<{ action: string; actor: string; target: string; detail: any }>;
  const rotateBody = async (deviceId: string, oldKey: KeyObject, newKey: KeyObject, o: { signNewWith?: KeyObject; nonce?: string } = {}) => {
    const nonce = o.nonce ?? (await api(server.url, null, 'POST', '/v1/device/hello', { deviceId })).body.nonce;
    const m = rotateKeyMessage(deviceId, nonce, pem(newKey));
    return {
      deviceId, nonce, publicKey: pem(oldKey), signature: sign(null, m, oldKey).toString('base64'),
      newPublicKey: pem(newKey), newSignature: sign(null, m, o.signNewWith ?? newKey).toString('base64'),
    };
  };

  it('lets a device replace its key: old tokens and the old key stop working, the new key works, a retry is answered', async () => {
    const a = key();
    const b = key();
    const device = new FleetDeviceClient({ server: server.url, deviceId: 'rot-1', privateKey: a, provisioningToken: prov });
    expect(await device.checkIn(check)).toEqual({ release: null });
    const oldToken = await device.bearer();
    await nextSecond();

    await device.rotateKey(b);
    // The token the old key earned is void; the client itself authenticates again with the new key.
    expect((await api(server.url, oldToken, 'POST', '/v1/device/check-in', check)).status).toBe(401);
    expect(await device.checkIn(check)).toEqual({ release: null });
    await expect(new FleetDeviceClient({ server: server.url, deviceId: 'rot-1', privateKey: a }).authenticate()).rejects.toMatchObject({ status: 403 });
    expect(await new FleetDeviceClient({ server: server.url, deviceId: 'rot-1', privateKey: b }).authenticate()).toBe('accepted');
    const stored = (await api(server.url, admin, 'GET', '/v1/admin/devices/rot-1')).body;
    expect(stored.publicKey.replace(/\s+/g, '')).toBe(pem(b).replace(/\s+/g, ''));
    expect(stored.keyChangedAt).toBeGreaterThan(0);

    // The device did not hear the answer and asks again, still holding the old key: answered, nothing changes.
    await new FleetDeviceClient({ server: server.url, deviceId: 'rot-1', privateKey: a }).rotateKey(b);
    expect(await new FleetDeviceClient({ server: server.url, deviceId: 'rot-1', privateKey: b }).authenticate()).toBe('accepted');

    const rotations = (await audit()).filter((e) => e.action === 'device.key-rotate' && e.target === 'rot-1');
    expect(rotations).toHaveLength(1);
    expect(rotations[0].actor).toBe('device rot-1');
    expect(rotations[0].detail.from).toMatch(/^sha256:[0-9a-f]{16}$/);
    expect(rotations[0].detail.to).not.toBe(rotations[0].detail.from);
  });

  it('refuses rotations not signed by the registered key, without proof of the new key, replayed, or for unknown devices', async () => {
    const a = key();
    await new FleetDeviceClient({ server: server.url, deviceId: 'rot-2', privateKey: a, provisioningToken: prov }).authenticate();
    const post = (body: unknown) => api(server.url, null, 'POST', '/v1/device/rotate-key', body);

    // Someone else's key asks to replace rot-2's key by theirs.
    const thief = key();
    const stolen = await post(await rotateBody('rot-2', thief, key()));
    expect(stolen.status).toBe(403);
    expect(stolen.body.error).toMatch(/registered with another key/);
    // The registered key's public part, but a signature by another key.
    const forged = await rotateBody('rot-2', a, key());
    forged.signature = sign(null, Buffer.from('something else'), a).toString('base64');
    expect((await post(forged)).status).toBe(401);
    // The new key's signature is by a third key: no proof the device holds the new key.
    const unproven = await post(await rotateBody('rot-2', a, key(), { signNewWith: key() }));
    expect(unproven.status).toBe(401);
    expect(unproven.body.error).toMatch(/newSignature/);
    // A good request, replayed with its nonce: the nonce is spent.
    const b = key();
    const good = await rotateBody('rot-2', a, b);
    expect((await post(good)).status).toBe(200);
    const c = key();
    expect((await post({ ...(await rotateBody('rot-2', b, c, { nonce: good.nonce })) })).status).toBe(401);
    // A nonce issued to another device id, and an unknown device.
    const other = (await api(server.url, null, 'POST', '/v1/device/hello', { deviceId: 'rot-x' })).body.nonce;
    expect((await post(await rotateBody('rot-2', b, c, { nonce: other }))).status).toBe(401);
    expect((await post(await rotateBody('nobody', key(), key()))).status).toBe(404);
    // Malformed: a 4xx with a reason.
    const bad = await post({ ...(await rotateBody('rot-2', b, c)), newPublicKey: 'not a key' });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/newPublicKey/);
    expect(await new FleetDeviceClient({ server: server.url, deviceId: 'rot-2', privateKey: b }).authenticate()).toBe('accepted');

    // A revoked device cannot rotate its way back in.
    await api(server.url, admin, 'POST', '/v1/admin/devices/rot-2/reject');
    expect((await post(await rotateBody('rot-2', b, c))).status).toBe(403);
  });

  it('lets an operator register a device by its key, and set a device\'s key', async () => {
    const e = key();
    const added = await api(server.url, admin, 'POST', '/v1/admin/devices', { id: 'pre-1', publicKey: pem(e), channel: 'stable', tags: ['site-b', 'site-a'] });
    expect(added.status).toBe(200);
    expect(added.body).toMatchObject({ id: 'pre-1', status: 'accepted', tags: ['site-a', 'site-b'], keyChangedAt: null });
    // Pre-authorised: no provisioning token, no acceptance step.
    const device = new FleetDeviceClient({ server: server.url, deviceId: 'pre-1', privateKey: e });
    expect(await device.checkIn(check)).toEqual({ release: null });
    expect((await api(server.url, admin, 'POST', '/v1/admin/devices', { id: 'pre-1', publicKey: pem(key()) })).status).toBe(409);
    const wrong = await api(server.url, admin, 'POST', '/v1/admin/devices', { id: 'pre-2', publicKey: pem(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey) });
    expect(wrong.status).toBe(400);
    expect(wrong.body.error).toMatch(/publicKey: a ec key/);
    expect((await api(server.url, admin, 'POST', '/v1/admin/devices', { id: 'pre-3', publicKey: pem(key()), channel: 'nope' })).status).toBe(404);
    const reader = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'ro', scope: 'read' })).body.token;
    expect((await api(server.url, reader, 'POST', '/v1/admin/devices', { id: 'pre-4', publicKey: pem(key()) })).status).toBe(403);

    // The board was replaced: the operator sets the new board's key.
    const oldToken = await device.bearer();
    await nextSecond();
    const f = key();
    const set = await api(server.url, admin, 'PUT', '/v1/admin/devices/pre-1/key', { publicKey: pem(f) });
    expect(set.status).toBe(200);
    expect(set.body.status).toBe('accepted');
    expect((await api(server.url, oldToken, 'POST', '/v1/device/check-in', check)).status).toBe(401);
    await expect(new FleetDeviceClient({ server: server.url, deviceId: 'pre-1', privateKey: e }).authenticate()).rejects.toMatchObject({ status: 403 });
    expect(await new FleetDeviceClient({ server: server.url, deviceId: 'pre-1', privateKey: f }).checkIn(check)).toEqual({ release: null });
    expect((await api(server.url, admin, 'PUT', '/v1/admin/devices/nobody/key', { publicKey: pem(f) })).status).toBe(404);
    expect((await api(server.url, reader, 'PUT', '/v1/admin/devices/pre-1/key', { publicKey: pem(e) })).status).toBe(403);

    const entries = await audit();
    expect(entries.find((x) => x.action === 'device.register' && x.target === 'pre-1')).toMatchObject({ actor: expect.stringMatching(/^bootstrap /), detail: { channel: 'stable' } });
    expect(entries.find((x) => x.action === 'device.key-set' && x.target === 'pre-1')!.detail.to).toMatch(/^sha256:/);
  });

  it('the CLI registers a device by the key `edgekit identity` prints, and sets a key', async () => {
    const home = join(fixture.dir, 'cli');
    mkdirSync(join(home, 'config'), { recursive: true });
    const config = join(home, 'update.json');
    writeFileSync(config, JSON.stringify({
      name: 'gw', board: 'qemu-x86_64', version: '1', stateDir: join(home, 'state'),
      fleet: { server: server.url, keyFile: join(home, 'data', 'device-key.pem'), configDir: join(home, 'config') },
    }));
    const identity = JSON.parse((await run('node', ['bin/edgekit.js', 'identity', '--config', config, '--json'])).stdout);
    expect(identity.idSource).toBe('key');
    expect(identity.deviceId).toBe(deviceIdFromKey(createPrivateKey(readFileSync(join(home, 'data', 'device-key.pem'), 'utf8'))));
    writeFileSync(join(home, 'device.pub'), identity.publicKey);

    const conn = ['--server', server.url, '--token', admin];
    const added = JSON.parse((await run('node', ['bin/edgekit.js', 'fleet', 'devices', 'add', identity.deviceId, '--public-key', join(home, 'device.pub'), '--tag', 'bench', ...conn, '--json'])).stdout);
    expect(added).toMatchObject({ id: identity.deviceId, status: 'accepted', tags: ['bench'] });
    const link = await FleetLink.open(parseAgentConfig(JSON.parse(readFileSync(config, 'utf8')), config), () => {});
    expect(await link.metadataClient(idleChooser).refresh()).toBeNull();
    expect(link.status).toBe('accepted');

    const fresh = key();
    writeFileSync(join(home, 'new.pub'), pem(fresh));
    const text = (await run('node', ['bin/edgekit.js', 'fleet', 'devices', 'set-key', identity.deviceId, '--public-key', join(home, 'new.pub'), ...conn])).stdout;
    expect(text).toMatch(/key replaced \(status accepted\)/);
    await expect(run('node', ['bin/edgekit.js', 'fleet', 'devices', 'set-key', identity.deviceId, '--public-key', join(home, 'missing.pub'), ...conn]))
      .rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/--public-key .*missing\.pub: cannot read it \(ENOENT\)/) });
    expect(await new FleetDeviceClient({ server: server.url, deviceId: identity.deviceId, privateKey: fresh }).authenticate()).toBe('accepted');
  });

  describe('on the device', () => {
    const device = (name: string, extra: { keyRotationDays?: number } = {}): AgentConfig => {
      const home = join(fixture.dir, name);
      mkdirSync(join(home, 'config'), { recursive: true });
      return parseAgentConfig({
        name: 'gw', board: 'qemu-x86_64', version: '1', stateDir: join(home, 'state'),
        fleet: { server: server.url, keyFile: join(home, 'data', 'device-key.pem'), configDir: join(home, 'config'), ...extra },
      }, name);
    };
    const keyIn = (c: AgentConfig) => createPrivateKey(readFileSync(c.fleet!.keyFile, 'utf8'));
    const accepted = (c: AgentConfig, id: string, k: KeyObject) => new FleetDeviceClient({ server: server.url, deviceId: id, privateKey: k }).authenticate();

    it('finishes a rotation cut off between the server\'s answer and the rename, keeping the derived device id', async () => {
      const c = device('cut');
      writeFileSync(join(c.fleet!.configDir, 'provisioning-token'), `${prov}\n`);
      const first = await FleetLink.open(c, () => {});
      expect(await first.metadataClient(idleChooser).refresh()).toBeNull();
      expect(first.status).toBe('accepted');
      const id = first.deviceId;
      const oldKey = keyIn(c);

      // `edgekit identity --rotate`, then the server takes the new key and the power goes before the rename.
      const { stdout } = await run('node', ['bin/edgekit.js', 'identity', '--rotate', '--config', writeConfig(c)]);
      expect(stdout).toMatch(/new key sha256:[0-9a-f]{16} waits for the next check-in/);
      const next = createPrivateKey(readFileSync(`${c.fleet!.keyFile}.next`, 'utf8'));
      await new FleetDeviceClient({ server: server.url, deviceId: id, privateKey: oldKey }).rotateKey(next);
      await expect(accepted(c, id, oldKey)).rejects.toMatchObject({ status: 403 });

      // After the reboot: the agent asks again, is answered, renames, and checks in with the new key.
      const lines: string[] = [];
      const link = await FleetLink.open(c, (l) => lines.push(l));
      expect(link.deviceId).toBe(id);
      expect(await link.metadataClient(idleChooser).refresh()).toBeNull();
      expect(link.status, lines.join('\n')).toBe('accepted');
      expect(existsSync(`${c.fleet!.keyFile}.next`)).toBe(false);
      expect(pem(keyIn(c))).toBe(pem(next));
      expect(lines.join('\n')).toMatch(/device key replaced/);
      // The id was derived from the first key and stays.
      expect((await loadDeviceIdentity(c.fleet!)).deviceId).toBe(id);
      expect(deviceIdFromKey(next)).not.toBe(id);
    });

    it('replaces a key older than fleet.keyRotationDays, and keeps the old one when the server refuses', async () => {
      const c = device('aged', { keyRotationDays: 30 });
      writeFileSync(join(c.fleet!.configDir, 'device-id'), 'gw-aged\n');
      writeFileSync(join(c.fleet!.configDir, 'provisioning-token'), `${prov}\n`);
      const link = await FleetLink.open(c, () => {});
      expect(await link.metadataClient(idleChooser).refresh()).toBeNull();
      const young = keyIn(c);
      expect(await link.rotateKeyIfDue()).toBe(false);
      expect(pem(keyIn(c))).toBe(pem(young));

      const old = new Date(Date.now() - 31 * 86_400_000);
      utimesSync(c.fleet!.keyFile, old, old);
      expect(await link.rotateKeyIfDue()).toBe(true);
      const replaced = keyIn(c);
      expect(pem(replaced)).not.toBe(pem(young));
      expect(await accepted(c, 'gw-aged', replaced)).toBe('accepted');
      // The link uses the new key from now on.
      expect(await link.metadataClient(idleChooser).refresh()).toBeNull();
      expect(link.status).toBe('accepted');

      // An operator set another key meanwhile: the device's rotation is refused, its key file stays.
      await api(server.url, admin, 'PUT', '/v1/admin/devices/gw-aged/key', { publicKey: pem(key()) });
      await prepareKeyRotation(c.fleet!.keyFile);
      const lines: string[] = [];
      const again = await FleetLink.open(c, (l) => lines.push(l));
      expect(await again.rotateKeyIfDue()).toBe(false);
      expect(lines.join('\n')).toMatch(/refused the new device key, keeping the old one: .*registered with another key/);
      expect(pem(keyIn(c))).toBe(pem(replaced));
    });
  });
});

/** The boot chain's view for a check-in: slot A, good. */
const idleChooser = {
  activeSlot: async () => 'a' as const,
  state: async () => [{ slot: 'a' as const, bootable: true, good: true, failed: false }],
} as unknown as Parameters<FleetLink['metadataClient']>[0];

function writeConfig(c: AgentConfig): string {
  const file = join(c.stateDir, '..', 'update.json');
  mkdirSync(c.stateDir, { recursive: true });
  writeFileSync(file, JSON.stringify(c));
  return file;
}
