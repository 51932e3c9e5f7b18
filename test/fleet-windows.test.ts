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

describe('maintenance windows in a time zone', () => {
  const utc = (iso: string) => Date.parse(`${iso}Z`);

  it('reads and writes the zone, and refuses a zone that is not an IANA name', () => {
    expect(parseWindow('sat,sun 02:00-05:00 Europe/Berlin')).toEqual({ start: '02:00', end: '05:00', days: ['sun', 'sat'], timeZone: 'Europe/Berlin' });
    expect(formatWindow(parseWindow('mon-fri 22:00-02:00 America/New_York'))).toBe('mon,tue,wed,thu,fri 22:00-02:00 America/New_York');
    expect(parseWindow(formatWindow(parseWindow('01:00-02:00 Asia/Tokyo')))).toEqual(parseWindow('01:00-02:00 Asia/Tokyo'));
    expect(() => parseWindow('01:00-02:00 Mars/Olympus')).toThrow(/time zone "Mars\/Olympus" is not an IANA zone name/);
    expect(windowProblem({ start: '01:00', end: '02:00', days: [], timeZone: '+02:00' })).toMatch(/not an IANA zone name/);
    expect(windowProblem({ start: '1:00', end: '02:00', days: [], timeZone: 'Europe/Berlin' })).toMatch(/not a Europe\/Berlin time/);
  });

  it('follows the zone\'s clock and weekday, summer and winter', () => {
    const w = [parseWindow('mon 01:00-05:00 Europe/Berlin')];
    // June, CEST (UTC+2): Monday 01:00-05:00 in Berlin is Sunday 23:00 to Monday 03:00 UTC.
    expect(inWindow(w, utc('2024-06-02T23:30'))).toBe(true);
    expect(inWindow(w, utc('2024-06-03T02:59'))).toBe(true);
    expect(inWindow(w, utc('2024-06-03T03:00'))).toBe(false);
    expect(inWindow(w, utc('2024-06-02T22:59'))).toBe(false);
    // January, CET (UTC+1): Monday 00:00-04:00 UTC.
    expect(inWindow(w, utc('2024-01-08T00:00'))).toBe(true);
    expect(inWindow(w, utc('2024-01-08T03:30'))).toBe(true);
    expect(inWindow(w, utc('2024-01-07T23:30'))).toBe(false);
    // West of UTC, past midnight: fri 22:00-02:00 in New York (EDT, UTC-4) is Sat 02:00-06:00 UTC.
    const ny = [parseWindow('fri 22:00-02:00 America/New_York')];
    expect(inWindow(ny, utc('2024-06-08T05:30'))).toBe(true);
    expect(inWindow(ny, utc('2024-06-08T06:00'))).toBe(false);
    expect(inWindow(ny, utc('2024-06-07T23:00'))).toBe(false); // Friday 19:00 there
  });

  it('daylight saving time: the skipped hour never opens, the repeated hour is open twice', () => {
    const w = [parseWindow('02:15-02:45 Europe/Berlin')];
    // 2024-03-31: Berlin clocks go from 02:00 to 03:00 (at 01:00 UTC); the night before, 02:30 is 01:30 UTC.
    expect(inWindow(w, utc('2024-03-30T01:30'))).toBe(true);
    const berlinMarch31 = Array.from({ length: 24 * 12 }, (_, i) => utc('2024-03-30T23:00') + i * 5 * 60_000);
    expect(berlinMarch31.filter((t) => inWindow(w, t)).map((t) => new Date(t).toISOString())).toEqual([]);
    // 2024-10-27: 03:00 CEST becomes 02:00 CET (at 01:00 UTC): 02:30 comes at 00:30 and at 01:30 UTC.
    expect(inWindow(w, utc('2024-10-27T00:30'))).toBe(true);
    expect(inWindow(w, utc('2024-10-27T01:30'))).toBe(true);
    expect(inWindow(w, utc('2024-10-27T01:00'))).toBe(false);
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

  it('a window in a time zone opens on that zone\'s clock, and is stored with its zone', async () => {
    let now = Date.parse('2024-06-03T03:30:00Z'); // Monday 05:30 in Berlin, 23:30 Sunday in New York
    const db = await database('zoned_windows');
    const store = await open(db);
    const service = await FleetService.open(store, () => now);
    const d = await device(service, 'zone-a', ['z']);
    await store.insertRelease({ version: '2.0', channel: 'stable', board: null, createdAt: now });
    const windows = [parseWindow('mon 01:00-02:00 America/New_York')];
    const r = await service.createRollout(actor, {
      version: '2.0', channel: 'stable', filter: { tags: ['z'] }, stages: [{ percent: 100, waitSeconds: 0 }], maxFailureRatio: 0.5, minSuccessRatio: 0.9, windows,
    });
    const check = () => service.checkIn(d, { board: 'qemu-x86_64', version: '1.0', slot: 'a' });
    expect(await check()).toEqual({ release: null });
    now = Date.parse('2024-06-03T05:30:00Z'); // Monday 01:30 in New York (EDT)
    await store.close();
    const store2 = await open(db);
    const service2 = await FleetService.open(store2, () => now);
    expect((await service2.rolloutStatus(r.id)).windows).toEqual([{ start: '01:00', end: '02:00', days: ['mon'], timeZone: 'America/New_York' }]);
    expect((await service2.checkIn(d, { board: 'qemu-x86_64', version: '1.0', slot: 'a' })).release).toMatchObject({ version: '2.0' });
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
    await expect(service.createRollout(actor, {
      version: '2.0', channel: 'stable', stages: [{ percent: 100, waitSeconds: 0 }], maxFailureRatio: 0.1, minSuccessRatio: 0.9,
      windows: [{ start: '01:00', end: '02:00', days: [] }, { start: '01:00', end: '02:00', days: [], timeZone: 'Europe/Nowhere' }],
    })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/^windows\.1: time zone "Europe\/Nowhere"/) });
    expect(await store.listRollouts()).toEqual([]);
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
