/**
 * Bad input gets one clear line naming what and where, a non-zero exit, and no output left behind.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { edgekit, REPO, testDir, testKey } from './helpers/built-images.js';
import { closedPort, generateSigningKey, serveDir, signRelease, writeArchive } from './helpers/archive-server.js';
import { cacheDir } from '../src/util/cache.js';

let key: string;
let n = 0;

function scratch(): { dir: string; out: string } {
  const dir = join(testDir(), 'bad', String(n++));
  mkdirSync(dir, { recursive: true });
  return { dir, out: join(dir, 'out') };
}

function spec(dir: string, text: string): string {
  const f = join(dir, 'spec.yml');
  writeFileSync(f, text);
  return f;
}

async function expectFailure(args: string[], out: string, pattern: RegExp) {
  const r = await edgekit(args);
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^edgekit: /);
  expect(lines[0]).toMatch(pattern);
  // Nothing half-written: the output folder is absent or empty.
  if (existsSync(out)) expect(readdirSync(out)).toEqual([]);
  return lines[0];
}

const minimal = readFileSync(join(REPO, 'examples', 'minimal.yml'), 'utf8');

describe('edgekit build refuses bad input', () => {
  beforeAll(async () => {
    key = (await testKey()).key;
  });

  it('malformed YAML, naming file and line', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, 'name: broken\nversion: "1"\npackages: [busybox-static\nroot: ram\n');
    await expectFailure(['build', f, '--board', 'qemu-x86_64', '--key', key, '-o', out], out, new RegExp(`${f}:\\d+: invalid YAML`));
  });

  it('a wrong field, naming file, line and field', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, minimal.replace('root: ram', 'root: tape'));
    const line = minimal.split('\n').findIndex((l) => l.startsWith('root:')) + 1;
    await expectFailure(['build', f, '--board', 'qemu-x86_64', '--key', key, '-o', out], out, new RegExp(`${f}:${line}: root: `));
  });

  it('an unknown board', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, minimal);
    await expectFailure(['build', f, '--board', 'no-such-board', '--key', key, '-o', out], out, /unknown board "no-such-board"/);
  });

  it('a missing key', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, minimal);
    await expectFailure(['build', f, '--board', 'qemu-x86_64', '--key', join(dir, 'nope.key'), '-o', out], out, /nope\.key: cannot read private key/);
  });

  it('an unknown package', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, minimal.replace('packages: [busybox-static]', 'packages: [busybox-static, edgekit-no-such-package]'));
    await expectFailure(['build', f, '--board', 'qemu-x86_64', '--key', key, '-o', out], out, /unknown package edgekit-no-such-package/);
  }, 300_000);

  it('an unreachable mirror, naming the URL', async () => {
    const { dir, out } = scratch();
    const f = spec(dir, minimal);
    const port = await closedPort();
    await expectFailure(
      ['build', f, '--board', 'qemu-x86_64', '--key', key, '-o', out, '--mirror', `http://127.0.0.1:${port}/debian`],
      out,
      new RegExp(`127\\.0\\.0\\.1:${port}`),
    );
  });

  it('an archive whose signature is not by a Debian archive key', async () => {
    const { dir, out } = scratch();
    const root = join(dir, 'archive');
    // A real archive layout served on loopback, signed by a key the builder does not trust.
    const debs = readdirSync(cacheDir('debs')).filter((d) => d.endsWith('.deb')).slice(0, 1).map((d) => join(cacheDir('debs'), d));
    const { privateKey } = await generateSigningKey('not debian');
    const layout = { root, suite: 'trixie', arch: 'amd64', debs, key: privateKey };
    await writeArchive(layout);
    await signRelease(layout);
    const served = await serveDir(root);
    try {
      const f = spec(dir, minimal);
      await expectFailure(['build', f, '--board', 'qemu-x86_64', '--key', key, '-o', out, '--mirror', served.url], out, /signature/i);
    } finally {
      await served.close();
    }
  });

  it('a layout that does not fit', async () => {
    const { dir, out } = scratch();
    const board = readFileSync(join(REPO, 'boards', 'qemu-x86_64.yml'), 'utf8')
      .replace('id: qemu-x86_64', 'id: tiny-esp')
      .replace(/boot: \{ size: \d+MiB \}/, 'boot: { size: 4MiB }');
    const boardFile = join(dir, 'tiny-esp.yml');
    writeFileSync(boardFile, board);
    const f = spec(dir, minimal);
    await expectFailure(['build', f, '--board', boardFile, '--key', key, '-o', out], out, /does not fit in 4194304/);
  }, 300_000);
});
