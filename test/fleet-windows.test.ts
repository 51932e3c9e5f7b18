/**
 * Maintenance windows: the UTC time rules (days, ranges past midnight, the CLI's window syntax),
 * and check-ins against each real store (SQLite, and a real PostgreSQL server started for the test)
 * at chosen times: devices are offered the release only inside a window, a device that already
 * started finishes outside it, and the schema migration adds the column to a database made before it.
 */
import { generateKeyPairSync, sign, createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authMessage } from '../src/fleet/protocol/messages.js';
import { FleetService, type Actor } from '../src/fleet/service.js';
import { MIGRATIONS } from '../src/fleet/store/migrations.js';
import { openFleetStore } from '../src/fleet/store/open.js';
import type { FleetStore } from '../src/fleet/store/store.js';
import { formatWindow, inWindow, parseWindow, windowProblem } from '../src/fleet/windows.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';

/** 2024-06-03 is a Monday. */
const at = (day: number, hhmm: string) => Date.parse(`2024-06-${String(3 + day).padStart(2, '0')}T${hhmm}:00Z`);
const MON = 0, FRI = 4, SAT = 5, SUN = 6;

describe('maintenance window rules', () => {
  it('reads the command-line syntax and refuses nonsense with the reason', () => {
    expect(parseWindow('01:00-05:00')).toEqual({ start: '01:00', end: '05:00', days: [] });
    expect(parseWindow('mon-fri 22:00-02:00')).toEqual({ start: '22:00', end: '02:00', days: ['mon', 'tue', 'wed', 'thu', 'fri'] });
    expect(parseWindow('Sat,sun 00:00-24:00').days).toEqual(['sun', 'sat']);
    expect(parseWindow('fri-mon 03:00-04:00').days).toEqual(['sun', 'mon', 'fri', 'sat']);
    expect(formatWindow(parseWindow('mon,wed 01:30-02:00'))).toBe('mon,wed 01:30-02:00');
    expect(() => parseWindow('01:00')).toThrow(/HH:MM-HH:MM/);
    expect(() => parseWindow('mon-fry 01:00-02:00')).toThrow(/"mon-fry" is not a day/);
    expect(() => parseWindow('25:00-02:00')).toThrow(/start "25:00"/);
    expect(() => parseWindow('03:00-03:00')).toThrow(/empty window/);
    expect(windowProblem({ start: '24:00', end: '01:00', days: [] })).toMatch(/start/);
    expect(windowProblem({ start: '01:00', end: '02:00', days: ['xyz' as never] })).toMatch(/day "xyz"/);
  });

  it('no windows: any time; a daily range includes its start and excludes its end', () => {
    expect(inWindow([], at(MON, '12:00'))).toBe(true);
    const w = [parseWindow('01:00-05:00')];
    expect(inWindow(w, at(MON, '00:59'))).toBe(false);
    expect(inWindow(w, at(MON, '01:00'))).toBe(true);
    expect(inWindow(w, at(SUN, '04:59'))).toBe(true);
    expect(inWindow(w, at(MON, '05:00'))).toBe(false);
  });

  it('weekdays, and a window past midnight belongs to the day it starts', () => {
    const w = [parseWindow('fri 22:00-02:00')];
    expect(inWindow(w, at(FRI, '23:30'))).toBe(true);
    expect(inWindow(w, at(SAT, '01:30'))).toBe(true);
    expect(inWindow(w, at(FRI, '01:30'))).toBe(false); // that night began on Thursday
    expect(inWindow(w, at(SAT, '23:30'))).toBe(false);
    const weekend = [parseWindow('sat,sun 00:00-24:00'), parseWindow('mon-fri 02:00-03:00')];
    expect(inWindow(weekend, at(SUN, '13:00'))).toBe(true);
    expect(inWindow(weekend, at(MON, '02:30'))).toBe(true);
    expect(inWindow(weekend, at(MON, '13:00'))).toBe(false);
  });
});

describe.each(FLEET_BACKENDS)('check-ins and maintenance windows (%s store)', (backend) => {
  const actor: Actor = { tokenId: 'tok_test', name: 'test', scope: 'admin' };
  let fixture: FleetDatabase;
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
  });
  afterAll(async () => {
    await fixture?.close();
  });

  /** A new empty database of this backend (what `--db` takes), one per test. */
  const database = async (name: string) => (fixture.cluster ? fixture.cluster.createDatabase(name) : join(fixture.dir, `${name}.db`));
  const open = async (db: string): Promise<FleetStore> => (await openFleetStore(db)).store;

  async function device(service: FleetService, id: string, tags: string[]) {
    const key = generateKeyPairSync('ed25519').privateKey;
    const prov = await service.createProvisioningToken(actor, { channel: 'stable', tags, expiresInSeconds: null });
    const nonce = service.hello(id);
    const r = await service.authenticate({
      deviceId: id, publicKey: createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string, nonce,
      signature: sign(null, authMessage(id, nonce), key).toString('base64'), provisioningToken: prov.token,
    });
    expect(r.status).toBe('accepted');
    return (await service.store.getDevice(id))!;
  }

  it('offers the release only inside a window; a device that started finishes outside it', async () => {
    let now = at(MON, '12:00');
    const db = await database('windows');
    const store = await open(db);
    const service = await FleetService.open(store, () => now);
    const [a, b, c] = [await device(service, 'win-a', ['w']), await device(service, 'win-b', ['w']), await device(service, 'win-c', ['w'])];
    await store.insertRelease({ version: '2.0', channel: 'stable', board: null, createdAt: now });
    const r = await service.createRollout(actor, {
      version: '2.0', channel: 'stable', filter: { tags: ['w'] }, stages: [{ percent: 100, waitSeconds: 0 }], maxFailureRatio: 0.5, minSuccessRatio: 0.9,
      windows: [parseWindow('mon-fri 01:00-05:00')],
    });
    expect(r.windows).toEqual([{ start: '01:00', end: '05:00', days: ['mon', 'tue', 'wed', 'thu', 'fri'] }]);
    const check = (d: typeof a, version = '1.0') => service.checkIn(d, { board: 'qemu-x86_64', version, slot: 'a' });

    // Monday noon and Saturday 02:00 are outside: nothing offered, nobody becomes a member.
    expect(await check(a)).toEqual({ release: null });
    now = at(SAT, '02:00');
    expect(await check(a)).toEqual({ release: null });
    expect(await store.listMembers(r.id)).toEqual([]);

    // Tuesday 02:00 is inside: a and b are offered it; a starts downloading, b does not.
    now = at(MON + 1, '02:00');
    expect((await check(a)).release).toMatchObject({ version: '2.0', rolloutId: r.id });
    expect((await check(b)).release).toMatchObject({ version: '2.0' });
    await service.report(a, { id: 'a-1', state: 'downloading', version: '2.0', running: '1.0', slot: 'a' });

    // After the window: a (started) still gets it to finish; b (only offered) and c wait.
    now = at(MON + 1, '05:00');
    expect((await check(a)).release).toMatchObject({ version: '2.0' });
    expect(await check(b)).toEqual({ release: null });
    expect(await check(c)).toEqual({ release: null });
    expect((await store.listMembers(r.id)).map((m) => [m.deviceId, m.state])).toEqual([['win-a', 'downloading'], ['win-b', 'offered']]);

    // The window survives a restart (it is stored), and opens again the next night.
    await store.close();
    const store2 = await open(db);
    const service2 = await FleetService.open(store2, () => now);
    expect((await service2.rolloutStatus(r.id)).windows).toEqual(r.windows);
    now = at(MON + 2, '04:59');
    expect((await service2.checkIn(c, { board: 'qemu-x86_64', version: '1.0', slot: 'a' })).release).toMatchObject({ version: '2.0' });
    await store2.close();
  });

  it('refuses a malformed window with the reason', async () => {
    const store = await open(await database('bad_window'));
    const service = await FleetService.open(store);
    await store.insertRelease({ version: '2.0', channel: 'stable', board: null, createdAt: 0 });
    await expect(service.createRollout(actor, {
      version: '2.0', channel: 'stable', stages: [{ percent: 100, waitSeconds: 0 }], maxFailureRatio: 0.1, minSuccessRatio: 0.9,
      windows: [{ start: '9:00', end: '10:00', days: [] }],
    })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/^windows\.0: start "9:00"/) });
    await store.close();
  });

  // Schema 1: the first fleet server's; schema 2: with used_nonces, the last one before windows.
  it.each([1, 2])('migrates a database at schema %i, made before windows existed, keeping its rollouts', async (version) => {
    const db = await database(`old_${version}`);
    const statements = [
      `CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)`,
      ...MIGRATIONS.slice(0, version).flat(),
      `INSERT INTO schema_migrations (version) VALUES ${Array.from({ length: version }, (_, i) => `(${i + 1})`).join(', ')}`,
      `INSERT INTO rollouts (id, version, channel, filter, stages, max_failure_ratio, min_success_ratio, state, stage, stage_started_at, reason, created_at)
        VALUES ('ro_old', '2.0', 'stable', '{"tags":[],"board":null}', '[{"percent":100,"waitSeconds":0}]', 0.1, 0.9, 'running', 0, 1, NULL, 1)`,
    ];
    if (backend === 'sqlite') {
      const sqlite = new Database(db);
      for (const sql of statements) sqlite.exec(sql);
      sqlite.close();
    } else {
      const client = new pg.Client({ connectionString: db });
      await client.connect();
      try {
        for (const sql of statements) await client.query(sql);
      } finally {
        await client.end();
      }
    }
    const store = await open(db);
    try {
      expect(await store.migrate()).toBe(MIGRATIONS.length);
      expect(await store.getRollout('ro_old')).toMatchObject({ id: 'ro_old', state: 'running', windows: [] });
      // The index step 3 adds serves a device's history.
      expect(await store.listDeviceReports('nobody', 10)).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
