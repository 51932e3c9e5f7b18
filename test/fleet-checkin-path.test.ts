/**
 * The shortcuts of the fleet server's check-in path change no answer: check-ins committed together
 * are each stored before they are answered and never overtake a later write; the SQLite store's
 * kept rollout lists follow writes from this store and from another connection to the same file;
 * a remembered device token still expires; remembered rollout buckets are the hashed ones; the
 * narrow device read of every request says what the whole row says, on both stores; WAL
 * checkpoints happen in the store's worker thread, which closing the store ends.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceTokens } from '../src/fleet/auth.js';
import { deviceBucket } from '../src/fleet/rollout.js';
import { openFleetStore } from '../src/fleet/store/open.js';
import { openSqliteStore } from '../src/fleet/store/sqlite.js';
import type { FleetStore, RolloutRow } from '../src/fleet/store/store.js';
import { FLEET_BACKENDS, fleetDatabase } from './helpers/fleet-db.js';

const dir = mkdtempSync(join(tmpdir(), 'fleet-checkin-path-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
async function freshStore(): Promise<{ store: FleetStore; file: string }> {
  const file = join(dir, `fleet-${n++}.db`);
  const store = openSqliteStore(file);
  await store.migrate();
  for (const id of ['d1', 'd2', 'd3']) {
    await store.insertDevice({ id, publicKey: 'pem', status: 'accepted', channel: 'stable', tags: [], createdAt: 1 });
  }
  return { store, file };
}

const checkIn = (version: string, at: number) => ({ board: 'b', version, previousVersion: null, slot: 'a', slotState: null, at });

function rollout(id: string, createdAt: number): RolloutRow {
  return {
    id, version: '2.0.0', channel: 'stable', filter: { tags: [], board: null }, stages: [{ percent: 100, waitSeconds: 0 }],
    maxFailureRatio: 0.1, minSuccessRatio: 0.9, windows: [], state: 'running', stage: 0, stageStartedAt: createdAt, reason: null, createdAt,
  };
}

describe('check-ins committed together', () => {
  it('answers each check-in only once it is in the file, and several of one turn share a commit', async () => {
    const { store, file } = await freshStore();
    const reader = new Database(file, { readonly: true });
    const lastSeen = (id: string) => (reader.prepare('SELECT last_seen FROM devices WHERE id = ?').get(id) as { last_seen: number | null }).last_seen;
    const pending = ['d1', 'd2', 'd3'].map((id, i) => store.recordCheckIn(id, checkIn('1.0.0', 100 + i)));
    // Not yet committed: another connection sees nothing of them.
    expect(['d1', 'd2', 'd3'].map(lastSeen)).toEqual([null, null, null]);
    await pending[0];
    // The first one answered means all three are committed, in one transaction.
    expect(['d1', 'd2', 'd3'].map(lastSeen)).toEqual([100, 101, 102]);
    await Promise.all(pending);
    reader.close();
    await store.close();
  });

  it('commits a waiting check-in before a later write to the device, so the later write stands', async () => {
    const { store } = await freshStore();
    const pending = store.recordCheckIn('d1', checkIn('1.0.0', 100));
    // A report arriving after the check-in says the device now runs 2.0.0 on slot b.
    await store.recordReport({ id: 'r1', deviceId: 'd1', state: 'committed', version: '2.0.0', running: '2.0.0', slot: 'b', reason: null, receivedAt: 200 }, null);
    await pending;
    const d = await store.getDevice('d1');
    expect(d).toMatchObject({ version: '2.0.0', previousVersion: '1.0.0', slot: 'b', lastSeen: 200 });
    await store.close();
  });

  it('commits waiting check-ins when the store closes', async () => {
    const { store, file } = await freshStore();
    const pending = store.recordCheckIn('d3', checkIn('1.5.0', 300));
    await store.close();
    await pending;
    const again = openSqliteStore(file);
    expect(await again.getDevice('d3')).toMatchObject({ version: '1.5.0', lastSeen: 300 });
    await again.close();
  });
});

describe('checkpoints in a worker thread', () => {
  it('copies committed pages into the database file without the server connection doing it, and ends on close', async () => {
    const { store, file } = await freshStore();
    const marker = `marker-${'x'.repeat(40)}`;
    await store.insertDevice({ id: marker, publicKey: 'pem', status: 'accepted', channel: 'stable', tags: [], createdAt: 1 });
    // The server connection checkpoints only at a WAL of thousands of pages; this is a few.
    const inDbFile = () => readFileSync(file).includes(marker);
    for (let i = 0; i < 50 && !inDbFile(); i++) await new Promise((r) => setTimeout(r, 100));
    expect(inDbFile()).toBe(true);
    await store.close();
    // The last connection to close removes the WAL: the worker's had closed before the store's.
    expect(existsSync(`${file}-wal`)).toBe(false);
  });
});

describe('kept rollout lists', () => {
  it('follow this store\'s writes and another connection\'s, and cannot be changed by a caller', async () => {
    const { store, file } = await freshStore();
    const live = { channel: 'stable', states: ['running', 'completed'] as RolloutRow['state'][] };
    expect(await store.listRollouts(live)).toEqual([]);
    await store.insertRollout(rollout('ro_a', 10));
    expect((await store.listRollouts(live)).map((r) => r.id)).toEqual(['ro_a']);
    expect(await store.transitionRollout('ro_a', { state: 'running', stage: 0 }, { state: 'paused' }, null)).toBe(true);
    expect(await store.listRollouts(live)).toEqual([]);
    expect((await store.listRollouts()).map((r) => [r.id, r.state])).toEqual([['ro_a', 'paused']]);

    // A second server process on the same file resumes it and adds another.
    const other = openSqliteStore(file);
    expect(await other.transitionRollout('ro_a', { state: 'paused', stage: 0 }, { state: 'running' }, null)).toBe(true);
    await other.insertRollout(rollout('ro_b', 20));
    await other.close();
    expect((await store.listRollouts(live)).map((r) => [r.id, r.state])).toEqual([['ro_a', 'running'], ['ro_b', 'running']]);

    // Callers get their own array (checkIn reverses it) and rows they cannot change.
    const list = await store.listRollouts(live);
    list.reverse();
    expect((await store.listRollouts(live)).map((r) => r.id)).toEqual(['ro_a', 'ro_b']);
    expect(() => {
      list[0].stage = 5;
    }).toThrow(TypeError);
    expect(() => list[0].stages.push({ percent: 50, waitSeconds: 0 })).toThrow(TypeError);
    await store.close();
  });
});

describe('remembered credentials and buckets', () => {
  it('refuses a remembered device token once it has expired', () => {
    let now = 1_000_000;
    const tokens = new DeviceTokens(Buffer.alloc(32, 7), () => now);
    const t = tokens.issueToken('dev-1');
    // Issued at `now`, to the second; the second call answers from memory, the same.
    expect(tokens.checkToken(t)).toEqual({ deviceId: 'dev-1', issuedAt: 1_000_000 });
    expect(tokens.checkToken(t)).toEqual({ deviceId: 'dev-1', issuedAt: 1_000_000 });
    now += 15 * 60 * 1000;
    expect(tokens.checkToken(t)).toBeNull();
    // A forged MAC on a remembered token's body is still refused.
    expect(tokens.checkToken(t.replace(/\.[^.]+$/, '.AAAA'))).toBeNull();
  });

  it('gives every (rollout, device) the bucket its hash gives, asked once or many times', () => {
    const hashed = (r: string, d: string) => createHash('sha256').update(`${r}\n${d}`, 'utf8').digest().readUInt32BE(0) % 10_000;
    for (let pass = 0; pass < 2; pass++) {
      for (const r of ['ro_1', 'ro_2']) {
        for (const d of ['a', 'b', 'c', 'dev-42']) expect(deviceBucket(r, d)).toBe(hashed(r, d));
      }
    }
  });
});

describe.each(FLEET_BACKENDS)('the device read of every request (%s)', (backend) => {
  it('gives the id, status, channel, tags and key change the whole row has, and null for an unknown id', async () => {
    const fixture = await fleetDatabase(backend);
    const { store } = await openFleetStore(fixture.db);
    try {
      await store.migrate();
      await store.insertDevice({ id: 'dev-a', publicKey: 'pem', status: 'pending', channel: 'beta', tags: ['z', 'a'], createdAt: 1 });
      await store.setDeviceStatus('dev-a', 'accepted');
      await store.recordCheckIn('dev-a', checkIn('1.0.0', 5));
      const whole = (await store.getDevice('dev-a'))!;
      expect(await store.getDeviceAccess('dev-a')).toEqual({ id: whole.id, status: 'accepted', channel: 'beta', tags: ['a', 'z'], keyChangedAt: null });
      expect(await store.getDeviceAccess('nobody')).toBeNull();
      // Key replacement: compare-and-set on the stored key (PEM whitespace aside), or unconditional.
      expect(await store.replaceDeviceKey('dev-a', 'other', 'pem-2', 7)).toBe(false);
      expect(await store.replaceDeviceKey('dev-a', ' pem\n', 'pem-2', 7)).toBe(true);
      expect(await store.replaceDeviceKey('dev-a', 'pem', 'pem-3', 8)).toBe(false);
      expect(await store.replaceDeviceKey('nobody', null, 'pem-3', 8)).toBe(false);
      expect(await store.getDeviceAccess('dev-a')).toMatchObject({ keyChangedAt: 7 });
      expect(await store.replaceDeviceKey('dev-a', null, 'pem-3', 9)).toBe(true);
      expect(await store.getDevice('dev-a')).toMatchObject({ publicKey: 'pem-3', keyChangedAt: 9 });
      expect(await store.insertDevice({ id: 'dev-a', publicKey: 'x', status: 'accepted', channel: 'beta', tags: [], createdAt: 2 })).toBe(false);
      // Leases: free, held by another, renewed by its holder, taken over once expired.
      expect(await store.takeLease('job', 'srv-a', 100, 0)).toBe(true);
      expect(await store.takeLease('job', 'srv-b', 200, 50)).toBe(false);
      expect(await store.takeLease('job', 'srv-a', 300, 60)).toBe(true);
      expect(await store.takeLease('job', 'srv-b', 400, 299)).toBe(false);
      expect(await store.takeLease('job', 'srv-b', 400, 301)).toBe(true);
      expect(await store.takeLease('other', 'srv-a', 400, 301)).toBe(true);
      // Given up: only by its holder, and then free for another at once.
      await store.releaseLease('job', 'srv-a');
      expect(await store.takeLease('job', 'srv-a', 500, 302)).toBe(false);
      await store.releaseLease('job', 'srv-b');
      expect(await store.takeLease('job', 'srv-a', 500, 302)).toBe(true);
    } finally {
      await store.close();
      await fixture.close();
    }
  });
});
