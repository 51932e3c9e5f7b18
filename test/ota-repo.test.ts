/**
 * Release repositories end to end: `edgekit repo init` / `edgekit release` through the real CLI
 * on real gateway images, read back by a device client over a real HTTP server, with the
 * published files checked by the tools that read them (mtools, veritysetup, unsquashfs).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { edgekit, type BuiltImage } from './helpers/built-images.js';
import { gatewayImages } from './helpers/ota-repo-fixtures.js';
import { startRepoServer, type RepoServer } from './helpers/ota-repo-server.js';
import { sh } from './helpers/image-bytes.js';
import { createMetadataClient, type UpdateInfo } from '../src/ota/repo/index.js';
import { applyDelta } from '../src/ota/delta/index.js';
import type { ImageManifest } from '../src/image/manifest.js';

const T0 = '2030-01-01T00:00:00Z';
const at = (hours: number) => new Date(Date.parse(T0) + hours * 3600_000);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let work: string;
let repo: string;
let keys: string;
let server: RepoServer;
let v1: BuiltImage;
let v2: BuiltImage;

async function ok(args: string[]): Promise<string> {
  const r = await edgekit(args);
  if (r.code !== 0) throw new Error(`edgekit ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function manifestOf(img: BuiltImage): ImageManifest {
  return JSON.parse(readFileSync(img.manifest, 'utf8')).signed;
}

function device(hours: number, extra: Partial<Parameters<typeof createMetadataClient>[0]> = {}) {
  const stateDir = extra.stateDir ?? mkdtempSync(join(work, 'device-'));
  return createMetadataClient({ repoUrl: server.url, trustedRoot: join(repo, 'metadata', '1.root.json'), stateDir, board: 'qemu-x86_64', clock: () => at(hours), ...extra });
}

async function fetchAll(client: ReturnType<typeof device>, info: UpdateInfo, dir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const [k, t] of Object.entries({ kernel: info.kernel, initrd: info.initrd, root: info.rootPayload! })) {
    const file = join(dir, k);
    await client.download(t, file);
    out[k] = readFileSync(file);
  }
  return out;
}

beforeAll(async () => {
  ({ v1, v2 } = await gatewayImages());
  work = mkdtempSync(join(tmpdir(), 'edgekit-ota-repo-'));
  repo = join(work, 'repo');
  keys = join(work, 'keys');
  server = await startRepoServer(repo);
});

afterAll(async () => {
  await server?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('edgekit repo init', () => {
  it('makes role keys (root 2 of 3) and signed metadata for an empty repository', async () => {
    const out = JSON.parse(await ok(['repo', 'init', repo, '--keys', keys, '--root-keys', '3', '--root-threshold', '2', '--now', T0, '--json']));
    expect(out.roles.root.threshold).toBe(2);
    expect(out.roles.root.keyIds).toHaveLength(3);
    expect(readdirSync(keys).filter((f) => f.endsWith('.key')).sort()).toEqual(['root-1.key', 'root-2.key', 'root-3.key', 'snapshot-1.key', 'targets-1.key', 'timestamp-1.key']);
    for (const f of readdirSync(keys).filter((f) => f.endsWith('.key'))) expect(statSync(join(keys, f)).mode & 0o777).toBe(0o600);
    const root = JSON.parse(readFileSync(join(repo, 'metadata', '1.root.json'), 'utf8'));
    expect(root.signed.consistent_snapshot).toBe(true);
    expect(root.signatures).toHaveLength(3);
    expect(root.signed.expires).toBe('2031-01-01T00:00:00Z');
    // No release yet: a device finds nothing to install.
    expect(await device(1).refresh()).toBeNull();
  });

  it('refuses to initialise a folder twice', async () => {
    const r = await edgekit(['repo', 'init', repo, '--keys', keys]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/root\.json: already exists/);
  });
});

describe('edgekit release', () => {
  let info1: UpdateInfo;

  it('publishes the slot files of a built image as content-named targets', async () => {
    const out = JSON.parse(await ok(['release', v1.image, '--repo', repo, '--version', '1.0', '--keys', keys, '--now', new Date(at(1)).toISOString(), '--json']));
    expect(out.custom.version).toBe('1.0');
    expect(out.custom.channel).toBe('stable');
    for (const f of out.files) {
      const slash = f.path.lastIndexOf('/');
      const file = join(repo, 'targets', f.path.slice(0, slash), `${f.sha256}.${f.path.slice(slash + 1)}`);
      const bytes = readFileSync(file);
      expect(bytes.length).toBe(f.length);
      expect(sha(bytes)).toBe(f.sha256);
    }
    // Consistent snapshots: versioned metadata next to the previous versions.
    expect(readdirSync(join(repo, 'metadata')).sort()).toEqual(['1.root.json', '1.snapshot.json', '1.targets.json', '2.snapshot.json', '2.targets.json', 'root.json', 'timestamp.json']);
  });

  it('gives a device verified boot files and root payload that match the image, read by mtools and veritysetup', async () => {
    const client = device(2);
    const info = await client.refresh();
    expect(info).not.toBeNull();
    info1 = info!;
    expect(info1.version).toBe('1.0');
    expect(info1.metadata).toEqual({ root: 1, timestamp: 2, snapshot: 2, targets: 2 });
    const m = manifestOf(v1);
    const got = await fetchAll(client, info1, mkdtempSync(join(work, 'dl-')));
    const boot = m.payloads.find((p) => p.partition === 'boot')!;
    const esp = `${v1.image}@@${boot.offset}`;
    const mcopy = (path: string) => execFileSync('mcopy', ['-n', '-i', esp, `::${path}`, '-'], { maxBuffer: 256 << 20 });
    expect(sha(got.kernel)).toBe(sha(mcopy(m.slots.a.kernel)));
    expect(sha(got.initrd)).toBe(sha(mcopy(m.slots.a.initrd)));
    const rootFile = join(work, 'root-1.squashfs');
    await client.download(info1.rootPayload!, rootFile);
    const v = info1.release.verity!;
    sh('veritysetup', ['verify', '--no-superblock', `--hash-offset=${v.hashOffset}`, `--data-blocks=${v.dataBlocks}`, `--salt=${v.salt}`, rootFile, rootFile, v.rootHash]);
    expect(sh('unsquashfs', ['-l', rootFile])).toMatch(/squashfs-root\/etc\/hostname/);
    expect(info1.release.slot.cmdline).toContain(`edgekit.verity=${v.rootHash}`);
    expect(info1.release.deltas).toEqual([]);
  });

  it('moves devices to a newer build, with a root delta from the release before (--delta-from), and refuses to publish a lower version', async () => {
    await ok(['release', v2.image, '--repo', repo, '--version', '1.1', '--delta-from', '1.0', '--keys', keys, '--now', at(3).toISOString()]);
    const client = device(4);
    const info = await client.refresh();
    expect(info!.version).toBe('1.1');
    expect(info!.rootPayload!.sha256).toBe(manifestOf(v2).payloads.find((p) => p.name === 'system-a')!.sha256);
    expect(info!.rootPayload!.sha256).not.toBe(info1.rootPayload!.sha256);
    // The delta is a signed target; applied to 1.0's root it gives 1.1's, byte for byte.
    expect(info!.deltas.map((d) => [d.fromVersion, d.fromSha256])).toEqual([['1.0', info1.rootPayload!.sha256]]);
    expect(info!.deltas[0].length).toBeLessThan(info!.rootPayload!.length / 4);
    const deltaFile = join(work, 'from-1.0.delta');
    await client.download(info!.deltas[0], deltaFile);
    const rebuilt = join(work, 'root-1.1-from-delta.squashfs');
    await applyDelta({ delta: deltaFile, activePayload: join(work, 'root-1.squashfs'), out: rebuilt, expectedSha256: info!.rootPayload!.sha256, expectedSize: info!.rootPayload!.length });
    expect(sha(readFileSync(rebuilt))).toBe(info!.rootPayload!.sha256);
    const lower = await edgekit(['release', v1.image, '--repo', repo, '--version', '1.0.9', '--keys', keys, '--now', at(4).toISOString()]);
    expect(lower.code).not.toBe(0);
    expect(lower.stderr).toMatch(/channel stable already has 1\.1.*--republish/);
    expect(await device(4, { installedVersion: '1.1' }).refresh()).toBeNull();
  });

  it('rolls a fleet back by republishing the old payloads under a higher version', async () => {
    const out = JSON.parse(await ok(['release', '--republish', '1.0', '--version', '1.2', '--repo', repo, '--keys', keys, '--now', at(5).toISOString(), '--json']));
    expect(out.custom.republishedFrom).toBe('1.0');
    const info = await device(6, { installedVersion: '1.1' }).refresh();
    expect(info!.version).toBe('1.2');
    expect(info!.rootPayload!.sha256).toBe(info1.rootPayload!.sha256);
    expect(info!.kernel.sha256).toBe(info1.kernel.sha256);
    // The same bytes, not a second copy: the new target file is a hard link to the old one.
    const f = (p: string, s: string) => statSync(join(repo, 'targets', p.slice(0, p.lastIndexOf('/')), `${s}.${p.slice(p.lastIndexOf('/') + 1)}`));
    expect(f(info!.rootPayload!.path, info!.rootPayload!.sha256).ino).toBe(f(info1.rootPayload!.path, info1.rootPayload!.sha256).ino);
  });

  it('withdraws a release from the channel', async () => {
    const client = device(7);
    expect((await client.refresh())!.version).toBe('1.2');
    await ok(['release', 'withdraw', '1.2', '--repo', repo, '--keys', keys, '--now', at(7).toISOString()]);
    // The same device (same state) now gets 1.1 as newest; one that runs 1.2 stays put.
    expect((await client.refresh())!.version).toBe('1.1');
    expect(await device(8, { installedVersion: '1.2' }).refresh()).toBeNull();
    expect((await ok(['repo', 'list', repo])).trim().split('\n')).toEqual(['gateway 1.0 qemu-x86_64 channel=stable', 'gateway 1.1 qemu-x86_64 channel=stable']);
  });

  it('keeps metadata valid past the timestamp period when the online keys re-sign it', async () => {
    await expect(device(50).refresh()).rejects.toThrow(/expired/);
    await ok(['repo', 'refresh', repo, '--keys', keys, '--now', at(49).toISOString()]);
    expect((await device(50).refresh())!.version).toBe('1.1');
  });
});

describe('edgekit repo rotate-root', () => {
  it('replaces root and timestamp keys; a device holding root 1 walks to root 2', async () => {
    const client = device(51);
    await client.refresh();
    // Only two of the three root keys at hand: enough for the threshold of 2.
    const offline = join(work, 'root-3-offline');
    cpSync(join(keys, 'root-3.key'), offline);
    rmSync(join(keys, 'root-3.key'));
    const out = JSON.parse(await ok(['repo', 'rotate-root', repo, '--keys', keys, '--replace', 'root,timestamp', '--now', at(52).toISOString(), '--json']));
    expect(out.rootVersion).toBe(2);
    expect(readdirSync(join(keys, 'retired')).filter((f) => f.endsWith('.key')).sort()).toEqual(['root-1.key', 'root-2.key', 'timestamp-1.key']);
    const info = await client.refresh();
    expect(info!.metadata.root).toBe(2);
    expect((await device(53).refresh())!.metadata.root).toBe(2);
    // Root 2 carries the signatures of two old root keys and of the new ones.
    const root2 = JSON.parse(readFileSync(join(repo, 'metadata', '2.root.json'), 'utf8'));
    expect(root2.signatures.length).toBeGreaterThanOrEqual(4);
  });

  it('refuses to rotate with fewer root keys than the threshold', async () => {
    for (const f of readdirSync(keys).filter((f) => /^root-\d+\.key$/.test(f)).slice(1)) rmSync(join(keys, f));
    const r = await edgekit(['repo', 'rotate-root', repo, '--keys', keys, '--now', at(54).toISOString()]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/1 of the 2 old root keys/);
  });
});

describe('repository output', () => {
  it('is the same bytes for the same keys, image and time', async () => {
    const a = join(work, 'det-a');
    const b = join(work, 'det-b');
    const k = join(work, 'det-keys');
    for (const r of [a, b]) {
      await ok(['repo', 'init', r, '--keys', k, '--now', T0]);
      await ok(['release', v1.image, '--repo', r, '--version', '1.0', '--keys', k, '--now', T0]);
    }
    const list = (d: string) => readdirSync(d, { recursive: true }).map(String).sort();
    expect(list(b)).toEqual(list(a));
    for (const f of list(a)) if (statSync(join(a, f)).isFile()) expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f)))).toBe(true);
  });
});
