/**
 * Publishing to a fleet server over HTTP, in TUF's split of keys, against a real `edgekit serve`
 * process on each store: the operator's keys folder holds the targets key and the root's public
 * key only; `edgekit
 * release --fleet` (no --repo) mirrors the server's metadata, signs targets, uploads the files the
 * server lacks and the targets metadata; the server (holding snapshot and timestamp keys only)
 * checks it and writes snapshot and timestamp. Two real gateway builds go up as 1.0 and 1.1 (1.1
 * with a root delta from 1.0, made from 1.0's root fetched back from the server), and a device's
 * metadata client then verifies the server's repository end to end against the root it was built
 * with. The server refuses uploads whose bytes do not match their name, targets metadata signed by
 * a key the root does not name, a stale version, expired metadata and files it lacks; a read-only
 * token is refused before anything is signed. --republish links the old files under their new
 * names on the server, and `release withdraw --fleet` takes a release out. Re-signing and
 * publishing take turns (one process, and across servers).
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgekit, type BuiltImage } from './helpers/built-images.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';
import { forge, gatewayImages } from './helpers/ota-repo-fixtures.js';
import { createMetadataClient } from '../src/ota/repo/index.js';
import { loadPrivateKey } from '../src/sign/keys.js';
import { RepoSigner } from '../src/fleet/repo-signer.js';
import { openFleetStore } from '../src/fleet/store/open.js';
import { FleetAdminClient } from '../src/fleet/admin-client.js';

const DAY = 86_400_000;
const metadata = (repo: string, file: string) => JSON.parse(readFileSync(join(repo, 'metadata', file), 'utf8'));
/** Every file below a folder, relative, dot-files included (left-over temporary files show up). */
function filesBelow(dir: string, prefix = ''): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesBelow(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`])).sort();
}

let v1: BuiltImage;
let v2: BuiltImage;
beforeAll(async () => {
  ({ v1, v2 } = await gatewayImages());
}, 900_000);

describe.each(FLEET_BACKENDS)('publishing to a fleet server over HTTP (%s)', (backend) => {
  let fixture: FleetDatabase;
  let repo: string;
  let keys: string;
  let trustedRoot: string;
  let server: ServerProcess;
  let url: string;
  let admin: string;
  let operatorFile: string;
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    repo = join(fixture.dir, 'repo');
    keys = join(fixture.dir, 'keys');
    expect((await edgekit(['repo', 'init', repo, '--keys', keys])).code).toBe(0);
    trustedRoot = join(fixture.dir, 'device-root.json');
    copyFileSync(join(repo, 'metadata', '1.root.json'), trustedRoot);
    // The online keys move to the server: the operator keeps root and targets keys only.
    const online = join(fixture.dir, 'online-keys');
    mkdirSync(online);
    for (const f of readdirSync(keys)) if (/^(snapshot|timestamp)-/.test(f)) renameSync(join(keys, f), join(online, f));
    // The root's private key stays offline elsewhere too: publishing needs its public half only.
    mkdirSync(join(fixture.dir, 'offline-root'));
    renameSync(join(keys, 'root-1.key'), join(fixture.dir, 'offline-root', 'root-1.key'));
    server = await startServerProcess(fixture.db, ['--admin-token-file', fixture.adminTokenFile, '--repo', repo, '--online-keys', online]);
    url = server.url;
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
    operatorFile = join(fixture.dir, 'operator-token');
    writeFileSync(operatorFile, (await api(url, admin, 'POST', '/v1/admin/tokens', { name: 'release-bot', scope: 'operator' })).body.token);
  });
  afterAll(async () => {
    await server?.stop();
    await fixture?.close();
  });

  it('a read-only token is refused before anything is signed', async () => {
    const reader = join(fixture.dir, 'reader-token');
    writeFileSync(reader, (await api(url, admin, 'POST', '/v1/admin/tokens', { name: 'ro', scope: 'read' })).body.token);
    const before = filesBelow(repo);
    const r = await edgekit(['release', v1.image, '--fleet', url, '--keys', keys, '--version', '1.0', '--fleet-token-file', reader]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--fleet .*read-only; publishing or adding a release needs an operator token/);
    expect(filesBelow(repo)).toEqual(before);
    // The same token may read the repository, not write it.
    expect((await api(url, readFileSync(reader, 'utf8').trim(), 'GET', '/v1/admin/repo/metadata/timestamp.json')).status).toBe(200);
    const put = await fetch(new URL('/v1/admin/repo/targets/x/0000000000000000000000000000000000000000000000000000000000000000.bin', url), {
      method: 'PUT', headers: { authorization: `Bearer ${readFileSync(reader, 'utf8').trim()}` }, body: 'x',
    });
    expect(put.status).toBe(403);
    expect(filesBelow(repo)).toEqual(before);
  });

  it('builds only on a root the operator\'s root keys signed, and needs one of them (the public half will do)', async () => {
    const before = filesBelow(repo);
    const other = join(fixture.dir, 'other-keys');
    mkdirSync(other);
    for (const f of ['targets-1.key', 'targets-1.key.pub']) copyFileSync(join(keys, f), join(other, f));
    const none = await edgekit(['release', v1.image, '--fleet', url, '--keys', other, '--version', '1.0', '--fleet-token-file', operatorFile]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/other-keys: no root key \(root-<n>\.key or its \.pub\)/);
    expect((await edgekit(['keys', 'generate', '-o', join(other, 'root-1.key')])).code).toBe(0);
    const stranger = await edgekit(['release', v1.image, '--fleet', url, '--keys', other, '--version', '1.0', '--fleet-token-file', operatorFile]);
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toMatch(/the fleet server's root \(version 1\) is signed by none of the root keys in .*other-keys; not publishing on top of it/);
    expect(filesBelow(repo)).toEqual(before);
  });

  it('publishes 1.0, then 1.1 with a delta from 1.0; a device verifies the server\'s repository end to end', async () => {
    expect(readdirSync(keys).sort()).toEqual(['root-1.key.pub', 'targets-1.key', 'targets-1.key.pub']);
    const first = await edgekit(['release', v1.image, '--fleet', url, '--keys', keys, '--version', '1.0', '--fleet-token-file', operatorFile, '--json']);
    expect(first.code, first.stderr).toBe(0);
    const r1 = JSON.parse(first.stdout);
    expect(r1.server).toMatchObject({ targetsVersion: 2, timestampVersion: 2, present: [] });
    expect(r1.server.uploaded.sort()).toEqual(r1.files.map((f: { path: string }) => f.path).sort());
    expect(r1.fleet).toEqual({ server: url, added: true });
    // Progress lines for the big payloads.
    expect(first.stderr).toMatch(/uploading gateway\/qemu-x86_64\/1\.0\/system\.squashfs: 100% /);

    const second = await edgekit(['release', v2.image, '--fleet', url, '--keys', keys, '--version', '1.1', '--delta-from', '1.0', '--fleet-token-file', operatorFile, '--json']);
    expect(second.code, second.stderr).toBe(0);
    const r2 = JSON.parse(second.stdout);
    expect(r2.custom.deltas.map((d: { fromVersion: string }) => d.fromVersion)).toEqual(['1.0']);
    expect(r2.server).toMatchObject({ targetsVersion: 3, timestampVersion: 3 });
    expect(second.stderr).toMatch(/downloading gateway\/qemu-x86_64\/1\.0\/system\.squashfs: 100% /);
    expect(((await api(url, admin, 'GET', '/v1/admin/releases?channel=stable')).body as Array<{ version: string }>).map((x) => x.version).sort()).toEqual(['1.0', '1.1']);
    // Only the server signed snapshot and timestamp; nothing temporary is left in its repository.
    expect(filesBelow(join(repo, 'targets')).filter((f) => f.split('/').some((s) => s.startsWith('.')))).toEqual([]);
    const audit = (await api(url, admin, 'GET', '/v1/admin/audit')).body as Array<{ action: string; actor: string; detail: any }>;
    const publishes = audit.filter((e) => e.action === 'repo.publish');
    expect(publishes.map((e) => e.detail.targetsVersion).sort()).toEqual([2, 3]);
    expect(publishes.every((e) => e.actor.startsWith('release-bot '))).toBe(true);

    // A device on 1.0, built with the first root, fetching over HTTP from the server.
    const client = createMetadataClient({
      repoUrl: `${url}/v1/admin/repo/`, headers: async () => ({ authorization: `Bearer ${admin}` }),
      trustedRoot, stateDir: mkdtempSync(join(fixture.dir, 'device-')), board: 'qemu-x86_64', name: 'gateway', installedVersion: '1.0',
    });
    const update = await client.refresh();
    expect(update?.version).toBe('1.1');
    expect(update!.metadata).toMatchObject({ targets: 3, timestamp: 3 });
    expect(update!.deltas).toEqual([expect.objectContaining({ fromVersion: '1.0', path: r2.custom.deltas[0].target })]);
    const delta = join(fixture.dir, 'delta');
    await client.download(update!.deltas[0], delta);
    expect(readFileSync(delta).length).toBe(update!.deltas[0].length);
    await client.download(update!.rootPayload!, join(fixture.dir, 'root'));
  });

  it('refuses a target upload whose bytes do not match its name, leaving nothing behind', async () => {
    const before = filesBelow(repo);
    const sha = 'ab'.repeat(32);
    const r = await fetch(new URL(`/v1/admin/repo/targets/gateway/qemu-x86_64/9.9/${sha}.vmlinuz`, url), {
      method: 'PUT', headers: { authorization: `Bearer ${readFileSync(operatorFile, 'utf8').trim()}` }, body: Buffer.alloc(3 << 20, 7),
    });
    expect(r.status).toBe(400);
    expect((await r.json()).error).toMatch(/the 3145728 bytes sent hash to sha256 [0-9a-f]{64}, not the abab.* in the name; nothing stored/);
    const notNamed = await api(url, readFileSync(operatorFile, 'utf8').trim(), 'PUT', '/v1/admin/repo/targets/gateway/vmlinuz', undefined, 'x');
    expect(notNamed.status).toBe(400);
    expect(notNamed.body.error).toMatch(/not a content-named target file/);
    expect(filesBelow(repo)).toEqual(before);

    // A file the server has: HEAD says its size, and sending it again stores nothing.
    const client = new FleetAdminClient(url, readFileSync(operatorFile, 'utf8').trim());
    const kernel = filesBelow(join(repo, 'targets')).find((f) => f.startsWith('gateway/qemu-x86_64/1.0/') && f.endsWith('.vmlinuz'))!;
    const bytes = readFileSync(join(repo, 'targets', kernel));
    expect(await client.repoFileSize(`targets/${kernel}`)).toBe(bytes.length);
    expect(await client.repoFileSize(`targets/gateway/qemu-x86_64/1.0/${'ab'.repeat(32)}.vmlinuz`)).toBeNull();
    const again = await client.uploadTarget(`targets/${kernel}`, new Blob([bytes]).stream());
    expect(again).toMatchObject({ path: kernel, length: bytes.length, stored: false });
    expect(filesBelow(repo)).toEqual(before);
  });

  it('refuses targets metadata signed by a key the root does not name, a stale version, and files it lacks; the repository stays as it was', async () => {
    const operator = readFileSync(operatorFile, 'utf8').trim();
    const current = readFileSync(join(repo, 'metadata', '3.targets.json'));
    const before = filesBelow(repo);
    const timestamp = metadata(repo, 'timestamp.json').signed.version;
    const next = (s: Record<string, any>) => {
      s.version = 4;
      s.expires = new Date(Date.now() + 30 * DAY).toISOString().replace(/\.\d{3}Z$/, 'Z');
    };
    const stranger = generateKeyPairSync('ed25519').privateKey;
    const bySomeone = await api(url, operator, 'POST', '/v1/admin/repo/targets', JSON.parse(forge(current, next, [stranger]).toString()));
    expect(bySomeone.status).toBe(400);
    expect(bySomeone.body.error).toMatch(/not signed by 1 of the targets keys of root version 1/);

    const targetsKey = await loadPrivateKey(join(keys, 'targets-1.key'));
    const stale = await api(url, operator, 'POST', '/v1/admin/repo/targets', JSON.parse(forge(current, (s) => {
      next(s);
      s.version = 3;
    }, [targetsKey]).toString()));
    expect(stale.status).toBe(409);
    expect(stale.body.error).toMatch(/targets version 3: the repository is at version 3, so only 4 is taken/);

    const missing = await api(url, operator, 'POST', '/v1/admin/repo/targets', JSON.parse(forge(current, (s) => {
      next(s);
      s.targets['gateway/qemu-x86_64/1.2/vmlinuz'] = { length: 5, hashes: { sha256: 'cd'.repeat(32) } };
    }, [targetsKey]).toString()));
    expect(missing.status).toBe(400);
    expect(missing.body.error).toMatch(/target gateway\/qemu-x86_64\/1\.2\/vmlinuz: not on the server \(upload it first: PUT \/v1\/admin\/repo\/targets\/gateway\/qemu-x86_64\/1\.2\/cdcd.*\.vmlinuz\)/);

    const expired = await api(url, operator, 'POST', '/v1/admin/repo/targets', JSON.parse(forge(current, (s) => {
      next(s);
      s.expires = '2020-01-01T00:00:00Z';
    }, [targetsKey]).toString()));
    expect(expired.status).toBe(400);
    expect(expired.body.error).toMatch(/expired/);

    expect(filesBelow(repo)).toEqual(before);
    expect(metadata(repo, 'timestamp.json').signed.version).toBe(timestamp);

    // The same metadata signed properly is taken (the checks above refused for their reason only).
    const good = await api(url, operator, 'POST', '/v1/admin/repo/targets', JSON.parse(forge(current, next, [targetsKey]).toString()));
    expect(good).toEqual({ status: 200, body: { targetsVersion: 4, timestampVersion: timestamp + 1 } });
  });

  it('--republish rolls back on the server: the old files get their new names there, no payload is sent', async () => {
    const r = await edgekit(['release', '--republish', '1.0', '--fleet', url, '--keys', keys, '--version', '1.2', '--fleet-token-file', operatorFile, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.custom).toMatchObject({ version: '1.2', republishedFrom: '1.0', deltas: [] });
    expect(out.server).toMatchObject({ targetsVersion: 5, present: [] });
    expect(out.server.uploaded.sort()).toEqual(out.files.map((f: { path: string }) => f.path).sort());
    expect(r.stderr).not.toMatch(/uploading/);
    const audit = (await api(url, admin, 'GET', '/v1/admin/audit?limit=20')).body as Array<{ action: string; target: string; detail: any }>;
    const copies = audit.filter((e) => e.action === 'repo.upload' && e.target.includes('/1.2/'));
    expect(copies).toHaveLength(out.files.length);
    expect(copies.every((e) => /^targets\/gateway\/qemu-x86_64\/1\.0\//.test(e.detail.copyOf))).toBe(true);
    // A device on 1.1 is offered 1.2 and gets 1.0's root under its new name.
    const client = createMetadataClient({
      repoUrl: `${url}/v1/admin/repo/`, headers: async () => ({ authorization: `Bearer ${admin}` }),
      trustedRoot, stateDir: mkdtempSync(join(fixture.dir, 'device-')), board: 'qemu-x86_64', name: 'gateway', installedVersion: '1.1',
    });
    const update = await client.refresh();
    expect(update?.version).toBe('1.2');
    expect(update!.rootPayload!.path).toBe('gateway/qemu-x86_64/1.2/system.squashfs');
    await client.download(update!.rootPayload!, join(fixture.dir, 'root-1.2'));
    // A copy is only of a file with the same content name.
    const operator = readFileSync(operatorFile, 'utf8').trim();
    const sha = update!.rootPayload!.sha256;
    const bad = await fetch(new URL(`/v1/admin/repo/targets/gateway/qemu-x86_64/1.3/${'ef'.repeat(32)}.system.squashfs`, url), {
      method: 'PUT', headers: { authorization: `Bearer ${operator}`, 'x-edgekit-copy-of': `targets/gateway/qemu-x86_64/1.0/${sha}.system.squashfs` }, body: '',
    });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toMatch(/has another sha256 in its name/);
    expect(existsSync(join(repo, 'targets', 'gateway', 'qemu-x86_64', '1.3'))).toBe(false);
  });

  it('release withdraw --fleet takes a release out of the server\'s targets metadata', async () => {
    const r = await edgekit(['release', 'withdraw', '1.2', '--fleet', url, '--keys', keys, '--fleet-token-file', operatorFile, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.withdrawn.map((x: { custom: { version: string } }) => x.custom.version)).toEqual(['1.2']);
    expect(out.server).toMatchObject({ targetsVersion: 6, uploaded: [], present: [] });
    const client = createMetadataClient({
      repoUrl: `${url}/v1/admin/repo/`, headers: async () => ({ authorization: `Bearer ${admin}` }),
      trustedRoot, stateDir: mkdtempSync(join(fixture.dir, 'device-')), board: 'qemu-x86_64', name: 'gateway', installedVersion: '1.1',
    });
    expect(await client.refresh()).toBeNull();
    expect(Object.keys(metadata(repo, '6.targets.json').signed.targets).filter((p) => p.includes('/1.2/'))).toEqual([]);
    // Off the server's channel list too.
    const listed = (await api(url, admin, 'GET', '/v1/admin/releases')).body.map((x: { version: string }) => x.version);
    expect(listed).toContain('1.1');
    expect(listed).not.toContain('1.2');
  });

  it('re-signing and publishing take turns: one job at a time in a server, and across servers through the store lease', async () => {
    const db = fixture.cluster ? await fixture.cluster.createDatabase('lease') : join(fixture.dir, 'lease.db');
    const { store } = await openFleetStore(db);
    try {
      await store.migrate();
      const signer = () => new RepoSigner({ repo, keys: join(fixture.dir, 'online-keys'), store, log: () => {}, audit: async () => {} });
      const [a, b] = [signer(), signer()];
      const order: string[] = [];
      let finish!: () => void;
      const held = new Promise<void>((r) => (finish = r));
      const first = a.exclusive(async () => {
        order.push('a1 start');
        await held;
        order.push('a1 end');
      }, 0);
      // Same server: waits for its turn, whatever the lease says.
      const second = a.exclusive(async () => void order.push('a2'), 0);
      await new Promise((r) => setTimeout(r, 100));
      // Another server: the lease is taken; without waiting it gives up, waiting it gets the lease once a lets go.
      expect(await b.exclusive(async () => order.push('b refused'), 0)).toBe('busy');
      const third = b.exclusive(async () => void order.push('b'), 10_000);
      await new Promise((r) => setTimeout(r, 300));
      finish();
      await Promise.all([first, second, third]);
      expect(order.slice(0, 2)).toEqual(['a1 start', 'a1 end']);
      expect(order.slice(2).sort()).toEqual(['a2', 'b']);
    } finally {
      await store.close();
    }
  });

  it('a server without --online-keys answers 501 with a reason', async () => {
    const plain = await startServerProcess(join(fixture.dir, 'plain.db'), ['--repo', repo]);
    try {
      const token = await adminToken(join(fixture.dir, 'plain.db'));
      const r = await api(plain.url, token, 'GET', '/v1/admin/repo/metadata/timestamp.json');
      expect(r.status).toBe(501);
      expect(r.body.error).toMatch(/started without --repo and --online-keys/);
      const cli = await edgekit(['release', v1.image, '--fleet', plain.url, '--keys', keys, '--version', '2.0'], { env: { EDGEKIT_FLEET_TOKEN: token } });
      expect(cli.code).toBe(1);
      expect(cli.stderr).toMatch(/501 .*started without --repo and --online-keys/);
    } finally {
      await plain.stop();
    }
  });
});
