/**
 * Against the real Debian archive (trixie) through the host's default mirror. Downloads go to the
 * shared cache (~/.cache/edgekit, or $EDGEKIT_CACHE) so repeated runs fetch nothing twice.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { openArchive, type DebianArch } from '../src/packages/archive.js';
import { addDebToTree, unpackDeb } from '../src/packages/deb.js';
import { fetchBuffer } from '../src/packages/http.js';
import { debianArchiveKeys, debianKeysDir, verifyClearsigned } from '../src/packages/keys.js';
import { moduleClosure, moduleIndex } from '../src/packages/modules.js';
import { defaultMirror, defaultSecurityMirror } from '../src/packages/sources.js';
import type { Archive } from '../src/packages/types.js';
import { Tree } from '../src/tree/tree.js';

const sha256 = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

let mirror: string;
let securityMirror: string;
let archive: Archive;

beforeAll(async () => {
  mirror = await defaultMirror();
  securityMirror = await defaultSecurityMirror(mirror);
  archive = openArchive({ mirror, securityMirror, suite: 'trixie', components: ['main', 'non-free-firmware'], arch: 'amd64' as DebianArch });
});

describe('real trixie archive', () => {
  it('verifies trixie and trixie-security InRelease with the vendored keys, as gpgv does', async () => {
    const keys = await debianArchiveKeys();
    const work = mkdtempSync(join(tmpdir(), 'edgekit-gpgv-'));
    const keyring = join(work, 'debian.gpg');
    const armored = execFileSync('sh', ['-c', `cat "${debianKeysDir}"/*.asc`]);
    writeFileSync(keyring, execFileSync('gpg', ['--dearmor'], { input: armored }));
    for (const [base, suite] of [[mirror, 'trixie'], [securityMirror, 'trixie-security']]) {
      const url = `${base}/dists/${suite}/InRelease`;
      const text = (await fetchBuffer(url)).toString('utf8');
      const signed = await verifyClearsigned(text, keys, url);
      expect(signed).toMatch(new RegExp(`^Codename: ${suite}$`, 'm'));
      const file = join(work, `${suite}.InRelease`);
      writeFileSync(file, text);
      execFileSync('gpgv', ['--keyring', keyring, file], { stdio: 'pipe' }); // throws if gpgv disagrees
      const tampered = text.replace(/^Origin: Debian$/m, 'Origin: DebiaN');
      await expect(verifyClearsigned(tampered, keys, url)).rejects.toThrow(`${url}: bad signature`);
    }
  });

  it('resolves, fetches and unpacks busybox-static; files match dpkg-deb -x', async () => {
    const [pkg, ...rest] = await archive.resolve(['busybox-static']);
    expect(pkg.name).toBe('busybox-static');
    expect(rest.map((p) => p.name)).toEqual(pkg.depends);
    const deb = await archive.fetch(pkg);
    expect(sha256(deb)).toBe(pkg.sha256);
    expect(execFileSync('dpkg-deb', ['--field', deb, 'Version']).toString().trim()).toBe(pkg.version);

    const unpacked = await unpackDeb(deb, pkg.sha256);
    expect(unpacked.control.Package).toBe('busybox-static');
    const ref = mkdtempSync(join(tmpdir(), 'edgekit-dpkg-x-'));
    execFileSync('dpkg-deb', ['-x', deb, ref]);
    const paths = execFileSync('sh', ['-c', `cd "${ref}" && find . -mindepth 1 | sed 's|^\\./||' | LC_ALL=C sort`]).toString().trim().split('\n');
    expect(unpacked.entries.filter((e) => e.path !== '').map((e) => e.path).sort()).toEqual(paths);
    for (const e of unpacked.entries) {
      if (e.path === '') continue;
      const st = lstatSync(join(ref, e.path));
      if (e.type === 'file') {
        expect(sha256(e.content!)).toBe(sha256(join(ref, e.path)));
        expect(e.mode).toBe(st.mode & 0o7777);
      } else if (e.type === 'symlink') {
        expect(e.target).toBe(readlinkSync(join(ref, e.path)));
      } else {
        expect(e.type === 'dir').toBe(st.isDirectory());
      }
    }
    const tree = new Tree();
    addDebToTree(tree, unpacked, (p) => p.startsWith('usr/bin/'));
    const busybox = tree.get('usr/bin/busybox');
    expect(busybox?.type).toBe('file');
    expect(tree.list().every((e) => e.path === '' || e.path === 'usr' || e.path.startsWith('usr/bin'))).toBe(true);
  });

  it('orders the module closure of the real kernel so that every dependency loads first (checked with modinfo)', async () => {
    const resolved = await archive.resolve(['linux-image-amd64']);
    const image = resolved.find((p) => /^linux-image-\d/.test(p.name));
    expect(image).toBeDefined();
    const unpacked = await unpackDeb(await archive.fetch(image!), image!.sha256);
    const index = await moduleIndex(unpacked);
    const wanted = ['dm-verity', 'squashfs', 'virtio_blk', 'virtio_net'];
    const order = moduleClosure(index, wanted);
    const pos = new Map(order.map((n, i) => [n, i]));
    const work = mkdtempSync(join(tmpdir(), 'edgekit-modinfo-'));
    for (const name of order) {
      const info = index.get(name)!;
      // modinfo goes by the file name's suffix to decompress, which the cache's file names lack.
      const copy = join(work, info.path!.slice(info.path!.lastIndexOf('/') + 1));
      copyFileSync(info.content!, copy);
      const depends = execFileSync('modinfo', ['-F', 'depends', copy]).toString().trim();
      for (const dep of depends.split(',').filter((d) => d !== '').map((d) => d.replace(/-/g, '_'))) {
        const depInfo = index.get(dep);
        expect(depInfo, `${name} needs ${dep}`).toBeDefined();
        if (!depInfo!.builtin) expect(pos.get(dep)!, `${dep} before ${name}`).toBeLessThan(pos.get(name)!);
      }
    }
    // Each wanted module is either loaded or built in.
    for (const w of wanted) expect(pos.has(w.replace(/-/g, '_')) || index.get(w.replace(/-/g, '_'))?.builtin).toBe(true);
    expect(order.length).toBeGreaterThan(wanted.length); // dm-verity pulls dm-mod, virtio_net net_failover, …
    expect(() => moduleClosure(index, ['no_such_module'])).toThrow('unknown kernel module no_such_module');
  }, 600_000);
});
