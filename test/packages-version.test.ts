import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDepends, parseStanzas } from '../src/packages/control.js';
import { PackageIndex, resolveInIndex, resolveFromLock } from '../src/packages/resolve.js';
import { defaultMirror, defaultSecurityMirror, hostAptSources } from '../src/packages/sources.js';
import type { PackageRecord } from '../src/packages/types.js';
import { compareVersions } from '../src/packages/version.js';

// Pairs chosen to hit every rule: epochs, revisions, '~', letters vs. other characters, leading zeros.
const PAIRS: Array<[string, string]> = [
  ['1.0', '1.0'], ['1.0', '1.0-0'], ['1.0', '1.1'], ['1.0~rc1', '1.0'], ['1.0~rc1', '1.0~rc2'], ['1.0~~', '1.0~'],
  ['1.0~', '1.0'], ['1.0a', '1.0'], ['1.0a', '1.0+'], ['1.0+', '1.0.'], ['1.0-1', '1.0-1.1'], ['1:0.1', '2.0'],
  ['2:1.0', '1:9.9'], ['1.01', '1.1'], ['1.001', '1.0'], ['1.10', '1.9'], ['1.0-1+b1', '1.0-1'], ['1.0-1~bpo1', '1.0-1'],
  ['1.37.0-6+b9', '1:1.37.0-6+b9'], ['2.41-12', '2.41-12+deb13u1'], ['6.12.107-1', '6.12.99-1'],
  ['1.0-a', '1.0-1'], ['0', '00'], ['1.2.3-4', '1.2.3-04'], ['1.0+dfsg', '1.0~dfsg'], ['1.0.0', '1.0'], ['9', '10'],
  ['1-2-3', '1-2'], ['3.0~b1-1', '3.0-0'], ['1.0-1', '1.0-1ubuntu1'], ['0.9.z', '0.9.Z'], ['1a', '1B'],
];

function dpkgSays(a: string, op: 'lt' | 'eq' | 'gt', b: string): boolean {
  try {
    execFileSync('dpkg', ['--compare-versions', a, op, b]);
    return true;
  } catch {
    return false;
  }
}

describe('Debian version comparison', () => {
  it('agrees with dpkg --compare-versions', () => {
    for (const [a, b] of PAIRS) {
      for (const [x, y] of [[a, b], [b, a]]) {
        const ours = Math.sign(compareVersions(x, y));
        const dpkg = dpkgSays(x, 'lt', y) ? -1 : dpkgSays(x, 'eq', y) ? 0 : 1;
        expect(`${x} vs ${y}: ${ours}`).toBe(`${x} vs ${y}: ${dpkg}`);
      }
    }
  });
});

describe('control data', () => {
  it('parses stanzas with continuation lines and dependency fields', () => {
    const [a, b] = parseStanzas('Package: a\nDescription: x\n y\n .\n z\n\n\nPackage: b\nDepends: c (>= 1:2~), d:any | e\n');
    expect(a.Description).toBe('x\ny\n.\nz');
    expect(b.Package).toBe('b');
    expect(parseDepends(b.Depends)).toEqual([[{ name: 'c', relation: '>=', version: '1:2~' }], [{ name: 'd' }, { name: 'e' }]]);
  });
});

const rec = (name: string, version: string, extra: Partial<PackageRecord> = {}): PackageRecord => ({
  name, version, arch: 'amd64', filename: `pool/${name}_${version}.deb`, size: 1, suite: extra.suite ?? 's',
  sha256: (name + version).padEnd(64, '0').replace(/[^0-9a-f]/g, 'a').slice(0, 64), ...extra,
});

describe('resolution', () => {
  const index = new PackageIndex([
    rec('app', '1.0', { depends: 'libfoo (>= 2), awk, mail-transport-agent | nothing-real' }),
    rec('libfoo', '1.5'), rec('libfoo', '2.1', { suite: 'updates' }), rec('libfoo', '2.0', { preDepends: 'base' }),
    rec('base', '1'), rec('mawk', '1.3', { provides: 'awk' }), rec('gawk', '5', { provides: 'awk' }),
    rec('postfix', '3', { provides: 'mail-transport-agent' }),
  ]);

  it('takes the highest version, alternatives in order and virtual packages, deterministically', () => {
    const got = resolveInIndex(index, ['app'], 'test');
    expect(got.map((p) => `${p.name}=${p.version}`)).toEqual(['app=1.0', 'gawk=5', 'libfoo=2.1', 'postfix=3']);
    expect(got[0].depends).toEqual(['gawk', 'libfoo', 'postfix']);
  });

  it('honours a lock, pinning versions, and fails when the pinned version is gone', () => {
    const first = resolveInIndex(index, ['app'], 'test');
    const lock = { packages: first.map((p) => (p.name === 'libfoo' ? { ...p, version: '2.0', sha256: rec('libfoo', '2.0').sha256 } : p)) };
    const pinned = resolveInIndex(index, ['app'], 'test', { lock });
    expect(pinned.map((p) => `${p.name}=${p.version}`)).toEqual(['app=1.0', 'base=1', 'gawk=5', 'libfoo=2.0', 'postfix=3']);
    const gone = { packages: [{ ...first[2], version: '2.2' }] };
    expect(() => resolveInIndex(index, ['app'], 'test', { lock: gone })).toThrow(/locked package libfoo 2.2 is not available in test/);
    const tampered = { packages: [{ ...first[2], sha256: 'f'.repeat(64) }] };
    expect(() => resolveInIndex(index, ['app'], 'test', { lock: tampered })).toThrow(/sha256 in the lock differs/);
    // A lock that covers the closure resolves with no index at all.
    expect(resolveFromLock({ packages: first }, ['app'])).toEqual(first);
    expect(resolveFromLock({ packages: first }, ['app', 'other'])).toBeUndefined();
  });

  it('names the unknown package and where it looked; excludes count as satisfied', () => {
    expect(() => resolveInIndex(index, ['nope'], 'trixie at m')).toThrow('unknown package nope (searched trixie at m)');
    const got = resolveInIndex(index, ['app'], 'test', { excludes: ['postfix', 'mail-transport-agent'] });
    expect(got.map((p) => p.name)).toEqual(['app', 'gawk', 'libfoo']);
  });
});

describe('mirror detection from apt sources', () => {
  const fakeRoot = (sources: Record<string, string>, lists: Record<string, string>) => {
    const root = mkdtempSync(join(tmpdir(), 'edgekit-apt-'));
    mkdirSync(join(root, 'etc/apt/sources.list.d'), { recursive: true });
    mkdirSync(join(root, 'var/lib/apt/lists'), { recursive: true });
    for (const [n, t] of Object.entries(sources)) writeFileSync(join(root, 'etc/apt', n), t);
    for (const [n, t] of Object.entries(lists)) writeFileSync(join(root, 'var/lib/apt/lists', n), t);
    return root;
  };

  it('picks the first source whose local Release says Origin: Debian, and its security source', async () => {
    const root = fakeRoot(
      {
        'sources.list': 'deb [arch=amd64] http://other.invalid/repo stable main\n',
        'sources.list.d/debian.sources':
          'Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: trixie trixie-updates\nComponents: main\n\n' +
          'Types: deb\nURIs: http://mirror.invalid/debian-sec\nSuites: trixie-security\nComponents: main\n',
      },
      {
        'other.invalid_repo_dists_stable_InRelease': 'Origin: Someone\n',
        'mirror.invalid_debian_dists_trixie_InRelease': 'Origin: Debian\nSuite: stable\n',
        'mirror.invalid_debian-sec_dists_trixie-security_InRelease': 'Origin: Debian\n',
      },
    );
    expect(hostAptSources({ root }).map((s) => s.uri)).toEqual([
      'http://other.invalid/repo', 'http://mirror.invalid/debian', 'http://mirror.invalid/debian-sec',
    ]);
    expect(await defaultMirror({ root })).toBe('http://mirror.invalid/debian');
    expect(await defaultSecurityMirror(undefined, { root })).toBe('http://mirror.invalid/debian-sec');
  });

  it('falls back to <mirror>-security, and fails with a one-line hint when no Debian source exists', async () => {
    const root = fakeRoot(
      { 'sources.list': 'deb http://mirror.invalid/debian trixie main\n' },
      { 'mirror.invalid_debian_dists_trixie_InRelease': 'Origin: Debian\n' },
    );
    expect(await defaultSecurityMirror(undefined, { root })).toBe('http://mirror.invalid/debian-security');
    const none = fakeRoot({ 'sources.list': '# nothing\n' }, {});
    await expect(defaultMirror({ root: none })).rejects.toThrow(
      "no Debian mirror found in the host's apt sources; pass --mirror <url> or set `mirror:` in the spec",
    );
  });
});
