/**
 * The archive client against a local archive: real .debs (fetched once from the host's Debian
 * mirror into the shared cache) plus two built here with dpkg-deb, indexed by dpkg-scanpackages,
 * signed with a key generated here and served on 127.0.0.1. Every other cache is a temp dir.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { PublicKey, PrivateKey } from 'openpgp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openArchive, openDebFolder } from '../src/packages/archive.js';
import { readDebControl } from '../src/packages/deb.js';
import { defaultMirror, defaultSecurityMirror } from '../src/packages/sources.js';
import type { ArchiveOptions } from '../src/packages/archive.js';
import type { ResolvedPackage } from '../src/packages/types.js';
import { closedPort, generateSigningKey, serveDir, signRelease, writeArchive, type ArchiveLayout, type ServedDir } from './helpers/archive-server.js';

const SUITE = 'edgetest';
const savedCache = process.env.EDGEKIT_CACHE;
let debs: string[] = [];
let key: { privateKey: PrivateKey; publicKey: PublicKey };
let stranger: { privateKey: PrivateKey; publicKey: PublicKey };
const servers: ServedDir[] = [];

const sha256 = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
const tmp = (prefix: string) => mkdtempSync(join(tmpdir(), `edgekit-${prefix}-`));
const names = (pkgs: ResolvedPackage[]) => pkgs.map((p) => `${p.name}=${p.version}`);

/** A tiny package built by dpkg-deb itself. */
function buildDeb(out: string, fields: Record<string, string>): string {
  const dir = tmp('debsrc');
  mkdirSync(join(dir, 'DEBIAN'));
  mkdirSync(join(dir, 'usr/share/doc', fields.Package), { recursive: true });
  writeFileSync(join(dir, 'usr/share/doc', fields.Package, 'README'), `${fields.Package} ${fields.Version}\n`);
  const control = { Architecture: 'amd64', Maintainer: 'Edgekit Tests <tests@localhost>', Description: 'test package', ...fields };
  writeFileSync(join(dir, 'DEBIAN/control'), Object.entries(control).map(([k, v]) => `${k}: ${v}\n`).join(''));
  const deb = join(out, `${fields.Package}_${fields.Version}_amd64.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', dir, deb], {
    env: { ...process.env, SOURCE_DATE_EPOCH: '1700000000' },
    stdio: 'ignore',
  });
  return deb;
}

async function serveArchive(overrides: Partial<ArchiveLayout> = {}): Promise<{ server: ServedDir; layout: ArchiveLayout; top: string }> {
  const layout: ArchiveLayout = { root: tmp('archive'), suite: SUITE, arch: 'amd64', debs, key: key.privateKey, ...overrides };
  const top = await writeArchive(layout);
  const server = await serveDir(layout.root);
  servers.push(server);
  return { server, layout, top };
}

function options(mirror: string, extra: Partial<ArchiveOptions> = {}): ArchiveOptions {
  return { mirror, suite: SUITE, suites: [SUITE], components: ['main'], arch: 'amd64', keys: [key.publicKey], ...extra };
}

async function errorOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    expect((err as Error).name).toBe('EdgekitError');
    expect((err as Error).message).not.toContain('\n');
    return err as Error;
  }
  throw new Error('expected an EdgekitError');
}

beforeAll(async () => {
  // Real packages, from the host's Debian mirror, through the shared cache.
  const mirror = await defaultMirror();
  const real = openArchive({ mirror, securityMirror: await defaultSecurityMirror(mirror), suite: 'trixie', arch: 'amd64' });
  const out = tmp('debs');
  for (const pkg of await real.resolve(['zlib1g', 'busybox-static'])) {
    const file = join(out, `${pkg.name}_${pkg.version.replace(/^\d+:/, '')}_${pkg.arch}.deb`); // pool names omit the epoch
    copyFileSync(await real.fetch(pkg), file);
    debs.push(file);
  }
  debs.push(
    buildDeb(out, { Package: 'edgekit-demo', Version: '1.0', Depends: 'zlib1g (>= 1:1.2), edgekit-virtual' }),
    buildDeb(out, { Package: 'edgekit-demo', Version: '1.1', Depends: 'zlib1g (>= 1:1.2), edgekit-virtual, busybox-static' }),
    buildDeb(out, { Package: 'edgekit-provider', Version: '2~rc1', Provides: 'edgekit-virtual' }),
  );
  key = await generateSigningKey('edgekit test archive');
  stranger = await generateSigningKey('someone else');
});

afterEach(() => {
  process.env.EDGEKIT_CACHE = tmp('cache'); // every test starts cold unless it says otherwise
});

afterAll(async () => {
  for (const s of servers) await s.close();
  if (savedCache === undefined) delete process.env.EDGEKIT_CACHE;
  else process.env.EDGEKIT_CACHE = savedCache;
});

describe('local signed archive', () => {
  it('resolves the highest version, virtual packages and dependencies, and fetches verified .debs', async () => {
    process.env.EDGEKIT_CACHE = tmp('cache');
    const { server } = await serveArchive();
    const archive = openArchive(options(server.url));
    const got = await archive.resolve(['edgekit-demo']);
    expect(names(got)).toContain('edgekit-demo=1.1');
    expect(names(got)).toContain('edgekit-provider=2~rc1');
    const demo = got.find((p) => p.name === 'edgekit-demo')!;
    expect(demo.depends).toEqual(['busybox-static', 'edgekit-provider', 'zlib1g']);
    // The closure is what dpkg would need: every Depends of every package is in the set.
    const chosen = new Set(got.map((p) => p.name));
    for (const p of got) {
      const deb = await archive.fetch(p);
      expect(sha256(deb)).toBe(p.sha256);
      const fields = await readDebControl(deb);
      expect(execFileSync('dpkg-deb', ['--field', deb, 'Package']).toString().trim()).toBe(fields.Package);
      expect(execFileSync('dpkg-deb', ['--field', deb, 'Version']).toString().trim()).toBe(p.version);
      for (const d of p.depends) expect(chosen.has(d)).toBe(true);
    }
    expect(got.map((p) => p.name)).toEqual([...got.map((p) => p.name)].sort());
  });

  it('rejects an archive signed by a key that is not trusted, and a tampered InRelease', async () => {
    const { server, layout, top } = await serveArchive();
    await signRelease(layout, stranger.privateKey);
    const url = `${server.url}/dists/${SUITE}/InRelease`;
    expect((await errorOf(openArchive(options(server.url)).resolve(['zlib1g']))).message).toBe(`${url}: no signature by a trusted key`);
    await signRelease(layout);
    const file = join(top, 'dists', SUITE, 'InRelease');
    writeFileSync(file, readFileSync(file, 'utf8').replace('Suite: edgetest', 'Suite: edgetesT'));
    expect((await errorOf(openArchive(options(server.url)).resolve(['zlib1g']))).message).toBe(`${url}: bad signature`);
  });

  it('rejects a Packages index that does not match the signed InRelease', async () => {
    const { server, top } = await serveArchive();
    const file = join(top, 'dists', SUITE, 'main/binary-amd64/Packages.xz');
    writeFileSync(file, Buffer.concat([readFileSync(file), Buffer.from([0])]));
    const err = await errorOf(openArchive(options(server.url)).resolve(['zlib1g']));
    expect(err.message).toBe(`${server.url}/dists/${SUITE}/main/binary-amd64/Packages.xz: sha256 does not match the signed InRelease`);
  });

  it('rejects a tampered .deb and keeps nothing of it in the cache', async () => {
    const { server, top } = await serveArchive();
    const archive = openArchive(options(server.url));
    const [pkg] = await archive.resolve(['edgekit-provider']);
    const file = join(top, pkg.filename);
    const data = readFileSync(file);
    data[data.length - 1] ^= 1;
    writeFileSync(file, data);
    const err = await errorOf(archive.fetch(pkg));
    expect(err.message).toMatch(new RegExp(`^${server.url}/${pkg.filename}: sha256 mismatch for edgekit-provider 2~rc1`));
    expect(execFileSync('sh', ['-c', `ls -A "${process.env.EDGEKIT_CACHE}/debs"`]).toString()).toBe('');
  });

  it('names the URL of an unreachable mirror, and an unknown package with the suites searched', async () => {
    const mirror = `http://127.0.0.1:${await closedPort()}/debian`;
    const err = await errorOf(openArchive(options(mirror)).resolve(['zlib1g']));
    expect(err.message).toBe(`cannot reach ${mirror}/dists/${SUITE}/InRelease: ECONNREFUSED`);
    const { server } = await serveArchive();
    const unknown = await errorOf(openArchive(options(server.url)).resolve(['no-such-package']));
    expect(unknown.message).toBe(`unknown package no-such-package (searched ${SUITE} (main, amd64) at ${server.url})`);
  });

  it('rejects an expired InRelease and one dated in the future', async () => {
    const { server } = await serveArchive({ date: new Date(Date.now() - 10 * 86400e3), validUntil: new Date(Date.now() - 3 * 86400e3) });
    const err = await errorOf(openArchive(options(server.url)).resolve(['zlib1g']));
    expect(err.message).toMatch(/InRelease: expired \(Valid-Until /);
    const future = await serveArchive({ date: new Date(Date.now() + 5 * 86400e3) });
    const ahead = await errorOf(openArchive(options(future.server.url)).resolve(['zlib1g']));
    expect(ahead.message).toMatch(/InRelease: Date .* is in the future/);
  });

  it('uses locked versions exactly, and fails when a locked version or hash is not in the archive', async () => {
    const { server } = await serveArchive();
    const archive = openArchive(options(server.url));
    const latest = await archive.resolve(['edgekit-demo']);
    const older = (await archive.records()).find((r) => r.name === 'edgekit-demo' && r.version === '1.0')!;
    const lock = { packages: [{ ...latest.find((p) => p.name === 'edgekit-demo')!, version: older.version, sha256: older.sha256 }] };
    const pinned = await archive.resolve(['edgekit-demo'], { lock });
    expect(names(pinned)).toContain('edgekit-demo=1.0');
    expect(names(pinned)).not.toContain('busybox-static=' + latest.find((p) => p.name === 'busybox-static')!.version);
    const gone = { packages: [{ ...lock.packages[0], version: '0.9' }] };
    expect((await errorOf(archive.resolve(['edgekit-demo'], { lock: gone }))).message).toBe(
      `locked package edgekit-demo 0.9 is not available in ${archive.where}`,
    );
    const wrongHash = { packages: [{ ...lock.packages[0], sha256: 'e'.repeat(64) }] };
    expect((await errorOf(archive.resolve(['edgekit-demo'], { lock: wrongHash }))).message).toMatch(/sha256 in the lock differs/);
  });

  it('builds offline from a complete lock and a warm cache, with the mirror gone', async () => {
    process.env.EDGEKIT_CACHE = tmp('cache');
    const { server } = await serveArchive();
    const first = openArchive(options(server.url));
    const lock = { packages: await first.resolve(['edgekit-demo']) };
    for (const p of lock.packages) await first.fetch(p);
    await server.close();

    // 1. A complete lock needs no index: not even InRelease is asked for.
    const again = openArchive(options(server.url));
    const fromLock = await again.resolve(['edgekit-demo'], { lock });
    expect(fromLock).toEqual(lock.packages);
    for (const p of fromLock) expect(sha256(await again.fetch(p))).toBe(p.sha256);

    // 2. offline mode resolves new names from the cached, re-verified InRelease and Packages.
    const offline = openArchive(options(server.url, { offline: true }));
    expect(names(await offline.resolve(['edgekit-demo']))).toEqual(names(lock.packages));
    // ...and says what is missing rather than reaching for the network.
    process.env.EDGEKIT_CACHE = tmp('cache');
    const cold = await errorOf(openArchive(options(server.url, { offline: true })).resolve(['edgekit-demo']));
    expect(cold.message).toMatch(/^offline: no cached InRelease for /);
  });

  it('serves a folder of .debs through the same interface', async () => {
    const dir = tmp('folder');
    for (const d of debs) copyFileSync(d, join(dir, basename(d)));
    const folder = openDebFolder(dir);
    const got = await folder.resolve(['edgekit-demo']);
    expect(names(got)).toContain('edgekit-demo=1.1');
    for (const p of got) {
      expect(p.suite).toBe('local');
      expect(sha256(await folder.fetch(p))).toBe(sha256(join(dir, p.filename)));
    }
  });
});
