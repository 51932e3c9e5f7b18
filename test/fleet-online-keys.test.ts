/**
 * The fleet server and the release repository's keys, against a real `edgekit serve` process on
 * each store: it refuses a key folder holding offline (root, targets) keys; with the online keys
 * (snapshot, timestamp) it re-signs metadata that is about to expire, and the result verifies
 * against the repository's root; two servers on one database re-sign once (the lease). And
 * `edgekit release --fleet` publishes a built image and adds it to the server's channel, checking
 * the token before it signs anything.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Metadata, type Root, type Timestamp } from '@tufjs/models';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtImage, edgekit } from './helpers/built-images.js';
import { RepoSigner } from '../src/fleet/repo-signer.js';
import { openFleetStore } from '../src/fleet/store/open.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const HOUR = 3_600_000;
const metadata = (repo: string, file: string) => JSON.parse(readFileSync(join(repo, 'metadata', file), 'utf8'));

describe.each(FLEET_BACKENDS)('repository keys on the fleet server (%s)', (backend) => {
  let fixture: FleetDatabase;
  let repo: string;
  let keys: string;
  let online: string;
  const servers: ServerProcess[] = [];
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    repo = join(fixture.dir, 'repo');
    keys = join(fixture.dir, 'keys');
    // Signed 20 hours ago: the one-day timestamp has 4 hours left, less than half its period.
    expect((await edgekit(['repo', 'init', repo, '--keys', keys, '--now', new Date(Date.now() - 20 * HOUR).toISOString()])).code).toBe(0);
    online = join(fixture.dir, 'online-keys');
    mkdirSync(online);
    for (const f of readdirSync(keys)) if (/^(snapshot|timestamp)-/.test(f)) copyFileSync(join(keys, f), join(online, f));
  });
  afterAll(async () => {
    for (const s of servers) await s.stop();
    await fixture?.close();
  });

  it('refuses root or targets keys, and --online-keys without --repo, before touching the database', async () => {
    const withAll = await edgekit(['serve', '--db', fixture.db, '--port', '0', '--repo', repo, '--online-keys', keys]);
    expect(withAll.code).toBe(1);
    expect(withAll.stderr).toMatch(/--online-keys .*keys: holds root-1\.key, targets-1\.key: root and targets keys stay offline/);
    const noRepo = await edgekit(['serve', '--db', fixture.db, '--port', '0', '--online-keys', online]);
    expect(noRepo.stderr).toMatch(/--online-keys needs --repo/);
    const empty = join(fixture.dir, 'empty-keys');
    mkdirSync(empty);
    expect((await edgekit(['serve', '--db', fixture.db, '--port', '0', '--repo', repo, '--online-keys', empty])).stderr).toMatch(/no snapshot key/);
    if (backend === 'sqlite') expect(readdirSync(fixture.dir)).not.toContain('fleet.db');
  });

  it('re-signs snapshot and timestamp that are about to expire, once (on PostgreSQL: across two servers), verifiably', async () => {
    const before = metadata(repo, 'timestamp.json');
    const tokenFile = fixture.adminTokenFile;
    // A SQLite file has one server; servers share a PostgreSQL database.
    const count = backend === 'postgres' ? 2 : 1;
    // Started at the same moment on an empty database with one token file: one writes the first admin token.
    const started = Array.from({ length: count }, () => startServerProcess(fixture.db, ['--admin-token-file', tokenFile, '--repo', repo, '--online-keys', online]));
    servers.push(...(await Promise.all(started)));
    const admin = await adminToken(fixture.db, tokenFile);
    let entries: Array<{ action: string; actor: string; detail: any }> = [];
    for (let i = 0; i < 100 && !entries.length; i++) {
      await new Promise((r) => setTimeout(r, 100));
      entries = ((await api(servers[0].url, admin, 'GET', '/v1/admin/audit')).body as typeof entries).filter((e) => e.action === 'repo.sign');
    }
    // Every server checked at start; one held the lease and signed, another then found it busy or fresh.
    await new Promise((r) => setTimeout(r, 500));
    entries = ((await api(servers[0].url, admin, 'GET', '/v1/admin/audit')).body as typeof entries).filter((e) => e.action === 'repo.sign');
    expect(entries).toHaveLength(1);
    expect(entries[0].actor).toBe('server');

    const after = metadata(repo, 'timestamp.json');
    expect(after.signed.version).toBe(before.signed.version + 1);
    expect(Date.parse(after.signed.expires) - Date.now()).toBeGreaterThan(23 * HOUR);
    expect(entries[0].detail).toEqual({ timestampVersion: after.signed.version, expires: after.signed.expires });
    // Signed by the timestamp key the root names, over the new snapshot.
    const root = Metadata.fromJSON('root', metadata(repo, 'root.json')) as Metadata<Root>;
    const ts = Metadata.fromJSON('timestamp', after) as Metadata<Timestamp>;
    expect(() => root.verifyDelegate('timestamp', ts)).not.toThrow();
    const snapshot = Metadata.fromJSON('snapshot', metadata(repo, `${ts.signed.snapshotMeta.version}.snapshot.json`));
    expect(() => root.verifyDelegate('snapshot', snapshot)).not.toThrow();
    // The online folder holds no key that could sign targets: nothing else changed.
    expect(snapshot.signed).toMatchObject({ meta: { 'targets.json': { version: 1 } } });
  });

  it('two signers racing on one database: one signs, the other finds the lease taken or the work done', async () => {
    const own = join(fixture.dir, 'race-repo');
    expect((await edgekit(['repo', 'init', own, '--keys', join(fixture.dir, 'race-keys'), '--now', new Date(Date.now() - 20 * HOUR).toISOString()])).code).toBe(0);
    const raceKeys = join(fixture.dir, 'race-keys');
    // A database of its own: the servers above hold the lease on theirs.
    const db = fixture.cluster ? await fixture.cluster.createDatabase('race') : join(fixture.dir, 'race.db');
    const { store } = await openFleetStore(db);
    try {
      await store.migrate();
      const signer = () => new RepoSigner({ repo: own, keys: raceKeys, store, log: () => {}, audit: async () => {} });
      const outcomes = await Promise.all([signer().check(), signer().check()]);
      // The winner gives the lease up when done: the other found it taken, or (came after) found the metadata fresh.
      expect(outcomes.filter((x) => x === 'signed')).toHaveLength(1);
      expect(outcomes.filter((x) => x !== 'signed')).toEqual([expect.stringMatching(/^(busy|fresh)$/)]);
      expect(metadata(own, 'timestamp.json').signed.version).toBe(2);
      expect(await signer().check()).toBe('fresh');
    } finally {
      await store.close();
    }
  });

  it('edgekit release --fleet publishes and adds the release to the channel; a read-only token is refused before anything is signed', async () => {
    const image = await builtImage('minimal', 'qemu-x86_64');
    const url = servers[0].url;
    const admin = await adminToken(fixture.db, fixture.adminTokenFile);
    const reader = (await api(url, admin, 'POST', '/v1/admin/tokens', { name: 'ro', scope: 'read' })).body.token as string;
    const readerFile = join(fixture.dir, 'reader-token');
    writeFileSync(readerFile, reader);
    const targetsBefore = metadata(repo, 'timestamp.json').signed.version;
    const refused = await edgekit(['release', image.image, '--repo', repo, '--keys', keys, '--version', '2.0', '--fleet', url, '--fleet-token-file', readerFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/--fleet .*read-only; publishing or adding a release needs an operator token/);
    expect(metadata(repo, 'timestamp.json').signed.version).toBe(targetsBefore);

    const r = await edgekit(['release', image.image, '--repo', repo, '--keys', keys, '--version', '2.0', '--channel', 'stable', '--fleet', url, '--fleet-token-file', fixture.adminTokenFile, '--json']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout).fleet).toEqual({ server: url, added: true });
    const releases = (await api(url, admin, 'GET', '/v1/admin/releases?channel=stable')).body;
    expect(releases).toEqual([expect.objectContaining({ version: '2.0', channel: 'stable', board: 'qemu-x86_64' })]);
    const again = await edgekit(['release', '--republish', '2.0', '--repo', repo, '--keys', keys, '--version', '2.1', '--fleet', url, '--fleet-token-file', fixture.adminTokenFile]);
    expect(again.stderr).toBe('');
    expect(again.stdout).toMatch(/added to channel stable on /);
    // Already in the channel on the server: the release is published, and the error says what to do.
    expect((await api(url, admin, 'POST', '/v1/admin/releases', { version: '2.2', channel: 'stable' })).status).toBe(200);
    const taken = await edgekit(['release', '--republish', '2.0', '--repo', repo, '--keys', keys, '--version', '2.2', '--fleet', url, '--fleet-token-file', fixture.adminTokenFile]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/published 2\.2 in .*, but .* did not take it into channel stable: .*release 2\.2 is already in channel stable; add it with: edgekit fleet releases add 2\.2 --channel stable --board qemu-x86_64/);
  });
});
