/**
 * Reproducible builds: the same spec, lock file and SOURCE_DATE_EPOCH give a byte-identical image.
 * Two builds in separate processes that differ in everything else: TMPDIR, TZ, umask, locale and
 * user — the second runs unprivileged (uid 65534) from a cold package cache, which also shows a
 * build needs no root.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, REPO, builtImage, testDir } from './helpers/built-images.js';
import { sh } from './helpers/image-bytes.js';

describe('reproducible builds', () => {
  it('two builds of gateway.yml (one unprivileged, cold cache, other TZ/umask/locale/TMPDIR) are byte-identical', async () => {
    if (process.getuid?.() !== 0) throw new Error('this test switches to uid 65534 with setpriv and needs root');
    const first = await builtImage('gateway', 'qemu-x86_64');

    // The second build: a world-writable scratch area owned by nobody, an empty cache.
    const area = join(testDir(), 'repro');
    for (const d of ['', 'cache', 'tmp', 'out']) mkdirSync(join(area, d), { recursive: true });
    execFileSync('chown', ['-R', '65534:65534', area]);
    chmodSync(testDir(), 0o755);
    // nobody must read the key, lock and spec: copy them into its area.
    for (const [src, name] of [[first.key, 'k.key'], [first.lock, 'pinned.lock.json']] as const) {
      execFileSync('cp', [src, join(area, name)]);
    }
    execFileSync('chown', ['-R', '65534:65534', area]);
    const spec = specCopy(area);
    const epoch = JSON.parse(readFileSync(first.manifest, 'utf8')).signed.sourceDateEpoch;
    const r = spawnSync(
      'setpriv',
      [
        '--reuid=65534', '--regid=65534', '--clear-groups', '--',
        'sh', '-c', `umask 077 && exec node "$0" "$@"`,
        CLI, 'build', spec, '--board', 'qemu-x86_64',
        '--key', join(area, 'k.key'), '--lock', join(area, 'pinned.lock.json'), '-o', join(area, 'out'), '--json',
      ],
      {
        encoding: 'utf8',
        env: {
          PATH: process.env.PATH,
          HOME: area,
          EDGEKIT_CACHE: join(area, 'cache'),
          TMPDIR: join(area, 'tmp'),
          TZ: 'Pacific/Kiritimati',
          LANG: 'de_DE.UTF-8',
          LC_ALL: 'tr_TR.UTF-8',
          SOURCE_DATE_EPOCH: String(epoch),
        },
        maxBuffer: 16 << 20,
        timeout: 900_000,
      },
    );
    expect(r.status, r.stderr).toBe(0);
    const second = JSON.parse(r.stdout);
    // Cold: everything was downloaded into the empty cache by the unprivileged build.
    expect(sh('find', [join(area, 'cache', 'debs'), '-name', '*.deb']).trim().split('\n').length).toBeGreaterThan(5);
    sh('cmp', [first.image, second.image]);
    sh('cmp', [first.bmap, second.bmap]);
    expect(readFileSync(second.manifest, 'utf8')).toBe(readFileSync(first.manifest, 'utf8'));
    expect(readFileSync(second.sbom, 'utf8')).toBe(readFileSync(first.sbom, 'utf8'));
  }, 900_000);
});

/** gateway.yml copied where uid 65534 can read it (its overlays come from the repo, world-readable). */
function specCopy(area: string): string {
  const dst = join(area, 'gateway.yml');
  execFileSync('cp', [join(REPO, 'examples', 'gateway.yml'), dst]);
  execFileSync('chown', ['65534:65534', dst]);
  return dst;
}
