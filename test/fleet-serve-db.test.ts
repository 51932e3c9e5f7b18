/**
 * `edgekit serve --db`: which store a value selects, and bad values as one-line errors that start
 * nothing and never print a password.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { openFleetStore, parseDatabaseTarget } from '../src/fleet/store/open.js';
import { adminToken, api, startServerProcess } from './helpers/fleet-server.js';

const dir = mkdtempSync(join(tmpdir(), 'fleet-serve-db-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('edgekit serve --db', () => {
  it('reads SQLite paths, sqlite: URLs and PostgreSQL URLs', () => {
    expect(parseDatabaseTarget('fleet.db')).toEqual({ kind: 'sqlite', file: 'fleet.db' });
    expect(parseDatabaseTarget('sqlite:data/fleet.db')).toEqual({ kind: 'sqlite', file: 'data/fleet.db' });
    expect(parseDatabaseTarget('sqlite:///var/lib/fleet.db')).toEqual({ kind: 'sqlite', file: '/var/lib/fleet.db' });
    expect(parseDatabaseTarget('postgres://u:p@db:5432/fleet')).toEqual({ kind: 'postgres', url: 'postgres://u:p@db:5432/fleet' });
    expect(parseDatabaseTarget('postgresql://db/fleet')).toEqual({ kind: 'postgres', url: 'postgresql://db/fleet' });
    expect(() => parseDatabaseTarget('mysql://u:secret@db/fleet')).toThrow(/^--db: mysql:\/\/u:\*\*\*@db\/fleet: not a database this server knows/);
    expect(() => parseDatabaseTarget('sqlite:')).toThrow(/names no file/);
  });

  it('serves from the file a sqlite: URL names', async () => {
    const file = join(dir, 'by-url.db');
    const server = await startServerProcess(`sqlite:${file}`, ['--admin-token-file', join(dir, 'by-url.token')]);
    try {
      expect(existsSync(file)).toBe(true);
      const admin = await adminToken(file, join(dir, 'by-url.token'));
      expect((await api(server.url, admin, 'GET', '/v1/admin/channels')).body).toEqual([{ name: 'stable', createdAt: expect.any(Number) }]);
    } finally {
      await server.stop();
    }
  });

  it('--keep-reports deletes old reports once it runs, each device\'s newest 20 kept', async () => {
    const file = join(dir, 'prune.db');
    const { store } = await openFleetStore(file);
    await store.migrate();
    const day = 86_400_000;
    const now = Date.now();
    // 25 reports 30-55 days old and 5 from today: the 20 newest (5 new, 15 old) stay.
    for (let i = 0; i < 25; i++)
      await store.recordReport({ id: `old-${i}`, deviceId: 'dev-p', state: 'committed', version: '2.0', running: '2.0', slot: 'b', reason: null, receivedAt: now - (30 + i) * day }, null);
    for (let i = 0; i < 5; i++)
      await store.recordReport({ id: `new-${i}`, deviceId: 'dev-p', state: 'committed', version: '2.0', running: '2.0', slot: 'b', reason: null, receivedAt: now - i * 1000 }, null);
    await store.close();
    const count = () => {
      const db = new Database(file, { readonly: true });
      try {
        return (db.prepare(`SELECT COUNT(*) AS n, MAX(received_at) AS newest FROM reports`).get() as { n: number; newest: number });
      } finally {
        db.close();
      }
    };
    const server = await startServerProcess(file, ['--admin-token-file', join(dir, 'prune.token'), '--keep-reports', '7d']);
    try {
      for (let i = 0; i < 100 && count().n > 20; i++) await new Promise((r) => setTimeout(r, 100));
      expect(count()).toEqual({ n: 20, newest: now });
    } finally {
      await server.stop();
    }
    const bad = spawnSync('node', ['bin/edgekit.js', 'serve', '--db', join(dir, 'none.db'), '--keep-reports', 'soon'], { encoding: 'utf8', timeout: 60_000 });
    expect(bad.status).toBe(1);
    expect(bad.stderr.trim()).toBe('edgekit: --keep-reports: a duration like 30s, 10m, 2h or 1d, not "soon"');
    expect(existsSync(join(dir, 'none.db'))).toBe(false);
  });

  it('an unreachable PostgreSQL server is a one-line error without the password', () => {
    const r = spawnSync('node', ['bin/edgekit.js', 'serve', '--db', 'postgres://fleet:hunter2@127.0.0.1:1/fleet', '--port', '0'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(/^edgekit: postgres:\/\/fleet:\*\*\*@127\.0\.0\.1:1\/fleet: cannot connect to PostgreSQL: .*ECONNREFUSED/);
    expect(r.stderr).not.toContain('hunter2');
    expect(r.stdout).toBe('');
  });

  it('a token file left from an earlier database is an error naming it, and no admin token is stored', () => {
    const file = join(dir, 'stale.db');
    const tokenFile = join(dir, 'stale.token');
    writeFileSync(tokenFile, 'adm_from_an_earlier_database\n');
    const r = spawnSync('node', ['bin/edgekit.js', 'serve', '--db', file, '--admin-token-file', tokenFile, '--port', '0'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(`edgekit: ${tokenFile}: cannot write the first admin token: EEXIST`);
    expect(readFileSync(tokenFile, 'utf8')).toBe('adm_from_an_earlier_database\n');
    // Started again with a fresh file: it bootstraps then (nothing was stored the first time).
    rmSync(tokenFile);
    const again = spawnSync('node', ['bin/edgekit.js', 'serve', '--db', file, '--admin-token-file', tokenFile, '--port', '0'], { encoding: 'utf8', timeout: 5_000 });
    expect(again.stdout).toContain(`first admin token written to ${tokenFile}`);
  });
});
