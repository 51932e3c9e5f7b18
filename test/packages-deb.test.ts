/**
 * .deb extraction against dpkg-deb: packages built by dpkg-deb with every member compression it
 * offers, holding the entry kinds that matter (setuid file, hard link, symlinks, odd modes, fifo).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDebToTree, readDebControl, unpackDeb } from '../src/packages/deb.js';
import { Tree } from '../src/tree/tree.js';

const savedCache = process.env.EDGEKIT_CACHE;
const tmp = (prefix: string) => mkdtempSync(join(tmpdir(), `edgekit-${prefix}-`));
const sha256 = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

function buildDeb(compression: string): string {
  const dir = tmp('debsrc');
  mkdirSync(join(dir, 'DEBIAN'));
  writeFileSync(
    join(dir, 'DEBIAN/control'),
    `Package: edgekit-kinds\nVersion: 1:2.0~rc1-3\nArchitecture: all\nMaintainer: Tests <t@localhost>\nSource: kinds-src (2.0)\nDescription: entry kinds\n multi-line\n`,
  );
  writeFileSync(join(dir, 'DEBIAN/postinst'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  mkdirSync(join(dir, 'usr/bin'), { recursive: true });
  mkdirSync(join(dir, 'var/private'), { recursive: true });
  chmodSync(join(dir, 'var/private'), 0o700);
  writeFileSync(join(dir, 'usr/bin/tool'), Buffer.alloc(300_000, 7));
  chmodSync(join(dir, 'usr/bin/tool'), 0o4755);
  linkSync(join(dir, 'usr/bin/tool'), join(dir, 'usr/bin/tool-again'));
  symlinkSync('tool', join(dir, 'usr/bin/relative-link'));
  symlinkSync('/nonexistent/target', join(dir, 'usr/bin/dangling-link'));
  execFileSync('mkfifo', [join(dir, 'var/private/pipe')]);
  const deb = join(tmp('deb'), `kinds-${compression}.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', `-Z${compression}`, '--build', dir, deb], {
    env: { ...process.env, SOURCE_DATE_EPOCH: '1700000000' },
    stdio: 'ignore',
  });
  return deb;
}

beforeAll(() => {
  process.env.EDGEKIT_CACHE = tmp('cache');
});
afterAll(() => {
  if (savedCache === undefined) delete process.env.EDGEKIT_CACHE;
  else process.env.EDGEKIT_CACHE = savedCache;
});

describe('unpackDeb', () => {
  for (const compression of ['xz', 'zstd', 'gzip', 'none']) {
    it(`unpacks a ${compression} .deb exactly as dpkg-deb -x does`, async () => {
      const deb = buildDeb(compression);
      const members = execFileSync('ar', ['t', deb]).toString();
      expect(members).toContain(`data.tar${{ xz: '.xz', zstd: '.zst', gzip: '.gz', none: '\n' }[compression]}`);
      const unpacked = await unpackDeb(deb);
      expect(unpacked.sha256).toBe(sha256(deb));
      expect(unpacked.control.Version).toBe(execFileSync('dpkg-deb', ['--field', deb, 'Version']).toString().trim());
      expect(unpacked.control.Description).toBe('entry kinds\nmulti-line');

      const ref = tmp('ref');
      execFileSync('dpkg-deb', ['-x', deb, ref]);
      const paths = execFileSync('sh', ['-c', `cd "${ref}" && find . -mindepth 1 | sed 's|^\\./||' | LC_ALL=C sort`]).toString().trim().split('\n');
      expect(unpacked.entries.filter((e) => e.path !== '').map((e) => e.path).sort()).toEqual(paths);
      for (const e of unpacked.entries.filter((x) => x.path !== '')) {
        const st = lstatSync(join(ref, e.path));
        expect(`${e.path} ${e.mode.toString(8)}`).toBe(`${e.path} ${(st.mode & 0o7777).toString(8)}`);
        if (e.type === 'file') expect(sha256(e.content!)).toBe(sha256(join(ref, e.path)));
        if (e.type === 'symlink') expect(e.target).toBe(readlinkSync(join(ref, e.path)));
        if (e.type === 'fifo') expect(st.isFIFO()).toBe(true);
        expect(e.uid).toBe(0);
      }
      const tool = unpacked.entries.find((e) => e.path === 'usr/bin/tool')!;
      const again = unpacked.entries.find((e) => e.path === 'usr/bin/tool-again')!;
      expect(again.content).toBe(tool.content); // a hard link shares the bytes

      // Staged into a tree: symlinks stay symlinks (even dangling ones), nothing is followed.
      const tree = new Tree();
      addDebToTree(tree, unpacked);
      expect(tree.get('usr/bin/dangling-link')).toMatchObject({ type: 'symlink', target: '/nonexistent/target' });
      expect(tree.get('usr/bin/tool')).toMatchObject({ type: 'file', mode: 0o4755, content: { kind: 'file', size: 300_000 } });
      expect(tree.get('var/private')).toMatchObject({ type: 'dir', mode: 0o700 });
      expect(tree.has('DEBIAN') || tree.has('postinst')).toBe(false);

      // Warm: the cache alone answers, the .deb is not read again.
      rmSync(deb);
      const warm = await unpackDeb(deb, unpacked.sha256);
      expect(warm.entries).toEqual(unpacked.entries);
    });
  }

  it('reads control fields and rejects a file that is not a .deb with a one-line error', async () => {
    const deb = buildDeb('xz');
    expect((await readDebControl(deb)).Source).toBe('kinds-src (2.0)');
    const bogus = join(tmp('bogus'), 'x.deb');
    writeFileSync(bogus, 'hello');
    await expect(unpackDeb(bogus)).rejects.toThrow(`${bogus}: not a .deb (no ar header)`);
  });
});
