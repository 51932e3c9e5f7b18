/**
 * A Debian archive (mirror + suites) as a package source: signed InRelease per suite, verified
 * Packages indices, resolution, and .deb downloads into a content-addressed cache.
 *
 * Network use and the offline design:
 *  - The index (InRelease + Packages) is loaded lazily, only when resolution needs it.
 *  - A lock that covers the whole closure (every entry has its filename, sha256 and depends)
 *    resolves without any index, and fetch() finds the .debs in `cacheDir('debs', <sha256>.deb)`:
 *    such a build touches no network at all.
 *  - Packages files are cached by their sha256 (`cacheDir('indices')`) and every verified
 *    InRelease is kept (`cacheDir('dists')`). With `offline: true` (or EDGEKIT_OFFLINE=1) the cached
 *    InRelease is used instead of a fresh one: its signature is checked again, its Valid-Until is
 *    not (expiry guards against a mirror replaying old data, which an offline build cannot meet).
 *    Anything missing from the cache in offline mode is an EdgekitError naming it.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { PublicKey } from 'openpgp';
import { cacheDir } from '../util/cache.js';
import { EdgekitError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { parseStanzas } from './control.js';
import { compressionOf, decompressBuffer } from './decompress.js';
import { sha256File } from './deb.js';
import { downloadTo, fetchBuffer, type Progress } from './http.js';
import { debianArchiveKeys, verifyClearsigned } from './keys.js';
import { checkRelease, parseRelease, type ReleaseFile } from './release.js';
import { PackageIndex, resolveFromLock, resolveInIndex } from './resolve.js';
import { securityMirrorFor } from './sources.js';
import type { Archive, PackageRecord, ResolvedPackage, ResolveOptions } from './types.js';

export type DebianArch = 'amd64' | 'arm64' | 'armhf';

export interface ArchiveOptions {
  mirror: string;
  /** Where `<suite>-security` lives; default: see defaultSecurityMirror's fallback rule. */
  securityMirror?: string;
  suite: string;
  /** Default: suite, suite-updates, suite-security. Where one package is in several, the highest version wins. */
  suites?: string[];
  components?: string[];
  arch: DebianArch;
  /** Trusted signing keys; default: the vendored Debian archive keys. */
  keys?: PublicKey[];
  offline?: boolean;
}

const PARSED_VERSION = 1;

const PACKAGE_FIELDS = new Set([
  'Package',
  'Version',
  'Architecture',
  'Filename',
  'Size',
  'SHA256',
  'Source',
  'Depends',
  'Pre-Depends',
  'Provides',
]);

/** 'busybox (1.2)' / 'busybox' + the binary version -> 'busybox 1.2': a package's source, for SBOMs. */
export function sourceOf(fields: Record<string, string>): string {
  const m = /^(\S+)(?:\s+\((\S+)\))?/.exec(fields.Source ?? fields.Package);
  return `${m?.[1] ?? fields.Package} ${m?.[2] ?? fields.Version}`;
}

export function recordFromStanza(s: Record<string, string>, suite: string, where: string): PackageRecord {
  for (const f of ['Package', 'Version', 'Architecture', 'Filename', 'Size', 'SHA256']) {
    if (!s[f]) throw new EdgekitError(`${where}: package ${s.Package ?? '?'} has no ${f}`);
  }
  const r: PackageRecord = {
    name: s.Package,
    version: s.Version,
    arch: s.Architecture,
    filename: s.Filename,
    size: Number(s.Size),
    sha256: s.SHA256.toLowerCase(),
    suite,
    source: sourceOf(s),
  };
  if (s.Depends) r.depends = s.Depends;
  if (s['Pre-Depends']) r.preDepends = s['Pre-Depends'];
  if (s.Provides) r.provides = s.Provides;
  return r;
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function isOffline(opt?: boolean): boolean {
  return opt ?? process.env.EDGEKIT_OFFLINE === '1';
}

/**
 * The index-independent part of an archive: lock-first resolution and the .deb cache. Subclasses
 * say how to load records and where a package's bytes come from.
 */
export abstract class CachedArchive implements Archive {
  private index?: Promise<PackageIndex>;
  abstract readonly where: string;
  protected abstract loadRecords(): Promise<PackageRecord[]>;
  /** Puts the package's bytes at `tmpPath` and returns their sha256 and size. */
  protected abstract download(pkg: ResolvedPackage, tmpPath: string, onProgress?: Progress): Promise<{ sha256: string; size: number; from: string }>;
  protected abstract readonly offline: boolean;

  protected loadIndex(): Promise<PackageIndex> {
    this.index ??= this.loadRecords().then((r) => new PackageIndex(r));
    return this.index;
  }

  async records(): Promise<PackageRecord[]> {
    return (await this.loadIndex()).all();
  }

  async resolve(names: string[], opts: ResolveOptions = {}): Promise<ResolvedPackage[]> {
    if (opts.lock) {
      const fromLock = resolveFromLock(opts.lock, names, opts.excludes);
      if (fromLock) return fromLock;
    }
    return resolveInIndex(await this.loadIndex(), names, this.where, opts);
  }

  async fetch(pkg: ResolvedPackage, onProgress?: Progress): Promise<string> {
    if (!/^[0-9a-f]{64}$/.test(pkg.sha256)) throw new EdgekitError(`package ${pkg.name}: malformed sha256 ${pkg.sha256}`);
    const dir = cacheDir('debs');
    const path = join(dir, `${pkg.sha256}.deb`);
    if (existsSync(path)) return path; // written only after verification, under its own hash
    if (this.offline) throw new EdgekitError(`offline: ${pkg.name} ${pkg.version} is not in the cache (${path})`);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${pkg.sha256}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`);
    try {
      const got = await this.download(pkg, tmp, onProgress);
      if (got.sha256 !== pkg.sha256 || got.size !== pkg.size) {
        throw new EdgekitError(`${got.from}: sha256 mismatch for ${pkg.name} ${pkg.version} (expected ${pkg.sha256}, got ${got.sha256})`);
      }
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
    return path;
  }
}

class DebianArchive extends CachedArchive {
  readonly where: string;
  protected readonly offline: boolean;
  private readonly suites: string[];
  private readonly components: string[];
  private readonly securityMirror: string;
  private readonly mirror: string;

  constructor(private readonly opts: ArchiveOptions) {
    super();
    this.mirror = opts.mirror.replace(/\/+$/, '');
    this.securityMirror = (opts.securityMirror ?? securityMirrorFor(this.mirror)).replace(/\/+$/, '');
    this.suites = opts.suites ?? [opts.suite, `${opts.suite}-updates`, `${opts.suite}-security`];
    this.components = opts.components ?? ['main'];
    this.offline = isOffline(opts.offline);
    this.where = `${this.suites.join(', ')} (${this.components.join(', ')}, ${opts.arch}) at ${this.mirror}`;
  }

  private baseFor(suite: string): string {
    return suite.endsWith('-security') ? this.securityMirror : this.mirror;
  }

  private inReleaseCachePath(base: string, suite: string): string {
    return cacheDir('dists', base.replace(/^[a-z]+:\/\//i, '').replace(/[^A-Za-z0-9.-]+/g, '_'), suite, 'InRelease');
  }

  private async loadRelease(suite: string): Promise<ReleaseFile> {
    const base = this.baseFor(suite);
    const url = `${base}/dists/${suite}/InRelease`;
    const cached = this.inReleaseCachePath(base, suite);
    let text: string;
    if (this.offline) {
      if (!existsSync(cached)) throw new EdgekitError(`offline: no cached InRelease for ${url} (${cached})`);
      text = await readFile(cached, 'utf8');
    } else {
      text = (await fetchBuffer(url)).toString('utf8');
    }
    const signed = await verifyClearsigned(text, this.opts.keys ?? (await debianArchiveKeys()), url);
    const rel = parseRelease(signed);
    checkRelease(rel, suite, url, { now: new Date(), ignoreValidUntil: this.offline });
    if (!this.offline) {
      await mkdir(join(cached, '..'), { recursive: true });
      await writeFileAtomic(cached, text);
    }
    return rel;
  }

  /** A Packages index's bytes, verified against the signed Release, from the cache when possible. */
  private async loadPackagesFile(suite: string, rel: ReleaseFile, component: string): Promise<PackageRecord[] | undefined> {
    const base = this.baseFor(suite);
    const dirPath = `${component}/binary-${this.opts.arch}`;
    const name = ['Packages.xz', 'Packages.gz', 'Packages'].find((n) => rel.sha256.has(`${dirPath}/${n}`));
    if (!name) return undefined;
    const want = rel.sha256.get(`${dirPath}/${name}`)!;
    const cached = cacheDir('indices', `${want.sha256}-${name}`);
    // Decompressing and parsing a 10 MB Packages.xz costs seconds; its parsed records are cached
    // under the same signed hash, so an unchanged index is read back as JSON.
    const parsedPath = cacheDir('indices', `${want.sha256}-${suite}-${this.opts.arch}.records.json`);
    if (existsSync(parsedPath)) {
      const parsed = JSON.parse(await readFile(parsedPath, 'utf8'));
      if (parsed.version === PARSED_VERSION) return parsed.records as PackageRecord[];
    }
    const url = rel.acquireByHash
      ? `${base}/dists/${suite}/${dirPath}/by-hash/SHA256/${want.sha256}`
      : `${base}/dists/${suite}/${dirPath}/${name}`;
    let data: Buffer;
    if (existsSync(cached)) {
      data = await readFile(cached);
    } else {
      if (this.offline) throw new EdgekitError(`offline: ${url} is not in the cache`);
      data = await fetchBuffer(url);
      if (sha256(data) !== want.sha256) throw new EdgekitError(`${url}: sha256 does not match the signed InRelease`);
      await mkdir(cacheDir('indices'), { recursive: true });
      await writeFileAtomic(cached, data);
    }
    const text = (await decompressBuffer(data, compressionOf(name))).toString('utf8');
    const where = `${base}/dists/${suite}/${component}/binary-${this.opts.arch}/Packages`;
    const records: PackageRecord[] = [];
    for (const st of parseStanzas(text, PACKAGE_FIELDS)) {
      if (st.Architecture !== this.opts.arch && st.Architecture !== 'all') continue;
      records.push(recordFromStanza(st, suite, where));
    }
    await writeFileAtomic(parsedPath, JSON.stringify({ version: PARSED_VERSION, records }));
    return records;
  }

  protected async loadRecords(): Promise<PackageRecord[]> {
    const records: PackageRecord[] = [];
    for (const suite of this.suites) {
      const rel = await this.loadRelease(suite);
      let found = 0;
      for (const component of this.components) {
        const parsed = await this.loadPackagesFile(suite, rel, component);
        if (parsed === undefined) continue;
        found++;
        for (const r of parsed) records.push(r);
      }
      if (found === 0) {
        throw new EdgekitError(`${this.baseFor(suite)}/dists/${suite}: no Packages index for ${this.components.join(', ')} on ${this.opts.arch}`);
      }
    }
    return records;
  }

  protected async download(pkg: ResolvedPackage, tmpPath: string, onProgress?: Progress) {
    const from = `${this.baseFor(pkg.suite)}/${encodeURI(pkg.filename)}`;
    return { ...(await downloadTo(from, tmpPath, onProgress)), from };
  }
}

export function openArchive(opts: ArchiveOptions): Archive {
  return new DebianArchive(opts);
}

/** A folder of .debs as an archive: records come from each .deb's control file (suite 'local'). */
class DebFolder extends CachedArchive {
  readonly where: string;
  protected readonly offline = false;

  constructor(private readonly dir: string) {
    super();
    this.where = dir;
  }

  protected async loadRecords(): Promise<PackageRecord[]> {
    const { readdir } = await import('node:fs/promises');
    const { readDebControl } = await import('./deb.js');
    const names = (await readdir(this.dir)).filter((n) => n.endsWith('.deb')).sort();
    const records: PackageRecord[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      const control = await readDebControl(path);
      const stanza = { ...control, Filename: name, Size: String((await stat(path)).size), SHA256: await sha256File(path) };
      records.push(recordFromStanza(stanza, 'local', path));
    }
    return records;
  }

  protected async download(pkg: ResolvedPackage, tmpPath: string) {
    const from = join(this.dir, pkg.filename);
    if (!existsSync(from)) throw new EdgekitError(`${from}: no such .deb`);
    await copyFile(from, tmpPath);
    return { sha256: await sha256File(tmpPath), size: (await stat(tmpPath)).size, from };
  }
}

export function openDebFolder(dir: string): Archive {
  if (!existsSync(dir)) throw new EdgekitError(`${dir}: no such folder of .debs`);
  return new DebFolder(dir);
}
