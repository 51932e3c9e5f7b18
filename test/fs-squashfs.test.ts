import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSquashfs } from '../src/fs/squashfs.js';
import { appendVerityHashTree } from '../src/fs/verity.js';
import { Tree } from '../src/tree/tree.js';
import { buildSampleTree, compareExtracted, expectedListing, ListedEntry } from './helpers/root-tree.js';

const MTIME = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const env = { ...process.env, LC_ALL: 'C', TZ: 'UTC' };
const isRoot = process.getuid?.() === 0;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { env, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** Parses `unsquashfs -lln`: mode uid/gid size-or-"major, minor" date time name [-> target]. */
function parseListing(text: string): ListedEntry[] {
  const re = /^(\S{10}) (\d+)\/(\d+)\s+(\d+,\s*\d+|\d+) (\d{4}-\d\d-\d\d \d\d:\d\d) (squashfs-root.*)$/;
  return text
    .split('\n')
    .filter((l) => l.startsWith('squashfs-root') === false && re.test(l))
    .map((line) => {
      const [, mode, uid, gid, size, , rest] = re.exec(line)!;
      const isLink = mode.startsWith('l');
      const arrow = rest.indexOf(' -> ');
      const name = (isLink ? rest.slice(0, arrow) : rest).replace(/^squashfs-root\/?/, '');
      const e: ListedEntry = { path: name, mode, uid: Number(uid), gid: Number(gid), size: size.replace(/\s/g, '') };
      if (isLink) e.target = rest.slice(arrow + 4);
      if (mode.startsWith('d') || mode.startsWith('p')) e.size = '';
      return e;
    });
}

/**
 * unsquashfs -ll prints a device as (rdev >> 8, rdev & 0xff) of the kernel's 32-bit encoding, so a
 * minor above 255 shows up scrambled (mksquashfs's own images list the same way); extraction and
 * the kernel mount below check the real numbers.
 */
function asUnsquashfsLists(entries: ListedEntry[]): ListedEntry[] {
  return entries.map((e) => {
    const m = /^(\d+),(\d+)$/.exec(e.size);
    if (!m || Number(m[2]) <= 0xff) return e;
    const [major, minor] = [Number(m[1]), Number(m[2])];
    const rdev = ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
    return { ...e, size: `${rdev >>> 8},${rdev & 0xff}` };
  });
}

function superblockInfo(img: string): Record<string, string> {
  const out = run('unsquashfs', ['-s', img]);
  const get = (re: RegExp) => re.exec(out)?.[1] ?? '';
  return {
    compression: get(/Compression (\w+)/),
    blockSize: get(/Block size (\d+)/),
    size: get(/Filesystem size (\d+) bytes/),
    inodes: get(/Number of inodes (\d+)/),
    ids: get(/Number of ids (\d+)/),
    time: get(/Creation or last append time (.*)/),
  };
}

describe('writeSquashfs', () => {
  let work: string;
  let tree: Tree;
  let img: string;
  let result: { size: number; bytesUsed: number };
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'edgekit-squashfs-'));
    tree = buildSampleTree({ scratch: work });
    img = join(work, 'root.sqfs');
    result = await writeSquashfs(tree, img, { mtime: MTIME });
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('unsquashfs -lln lists exactly the tree, with the given mtime', () => {
    const listing = run('unsquashfs', ['-lln', img]);
    expect(parseListing(listing)).toEqual(asUnsquashfsLists(expectedListing(tree)));
    const lines = listing.split('\n').filter((l) => l.includes('squashfs-root'));
    expect(lines.length).toBe(tree.size);
    for (const l of lines) expect(l).toContain(' 2023-11-14 22:13 ');
  });

  it('unsquashfs -d extracts every file byte for byte, with modes, owners, links and devices', () => {
    const dest = join(work, 'extract');
    run('unsquashfs', ['-no-progress', '-d', dest, img]);
    expect(compareExtracted(tree, dest, { devices: isRoot })).toEqual([]);
  });

  it('unsquashfs -s shows the superblock we meant, and the file is padded to 4 KiB', () => {
    const sb = superblockInfo(img);
    const uids = new Set(tree.list().flatMap((e) => [e.uid, e.gid]));
    expect(sb).toEqual({
      compression: 'gzip',
      blockSize: '131072',
      size: String(result.bytesUsed),
      inodes: String(tree.size),
      ids: String(uids.size),
      time: 'Tue Nov 14 22:13:20 2023',
    });
    expect(statSync(img).size).toBe(result.size);
    expect(result.size % 4096).toBe(0);
    expect(result.size - result.bytesUsed).toBeLessThan(4096);
  });

  it('the same tree gives the same bytes', async () => {
    const again = join(work, 'again.sqfs');
    await writeSquashfs(tree, again, { mtime: MTIME });
    expect(readFileSync(again).equals(readFileSync(img))).toBe(true);
  });

  it('works uncompressed, with small blocks, and without fragments', async () => {
    for (const [name, opts] of [
      ['none', { compression: 'none' as const }],
      ['small-blocks', { blockSize: 4096 }],
      ['no-fragments', { fragments: false, blockSize: 65536 }],
    ] as const) {
      const out = join(work, `${name}.sqfs`);
      const r = await writeSquashfs(tree, out, { mtime: MTIME, ...opts });
      expect(superblockInfo(out).size).toBe(String(r.bytesUsed));
      const dest = join(work, `extract-${name}`);
      run('unsquashfs', ['-no-progress', '-d', dest, out]);
      expect(compareExtracted(tree, dest, { devices: isRoot }), name).toEqual([]);
      rmSync(dest, { recursive: true });
    }
  });

  it('lz4: unsquashfs and the Linux kernel read it (mount skipped where not allowed); the same tree gives the same bytes', async (ctx) => {
    const out = join(work, 'lz4.sqfs');
    const r = await writeSquashfs(tree, out, { mtime: MTIME, compression: 'lz4' });
    expect(superblockInfo(out)).toMatchObject({ compression: 'lz4', size: String(r.bytesUsed) });
    const again = join(work, 'lz4-again.sqfs');
    await writeSquashfs(tree, again, { mtime: MTIME, compression: 'lz4' });
    expect(readFileSync(again).equals(readFileSync(out))).toBe(true);
    const dest = join(work, 'extract-lz4');
    run('unsquashfs', ['-no-progress', '-d', dest, out]);
    expect(compareExtracted(tree, dest, { devices: isRoot })).toEqual([]);
    const mnt = join(work, 'mnt-lz4');
    mkdirSync(mnt);
    if (spawnSync('mount', ['-t', 'squashfs', '-o', 'loop,ro', out, mnt]).status !== 0) ctx.skip();
    try {
      expect(compareExtracted(tree, mnt, { devices: true })).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
  });

  it('stores incompressible blocks raw and compressible ones compressed', async () => {
    const t = new Tree();
    const noise = randomBytes(300_000);
    const text = Buffer.alloc(300_000, 'squashfs ');
    t.file('noise', noise);
    t.file('text', text);
    const out = join(work, 'mixed.sqfs');
    await writeSquashfs(t, out, { mtime: MTIME });
    const bytes = readFileSync(out);
    expect(bytes.indexOf(noise.subarray(0, 131072))).toBeGreaterThan(0);
    expect(bytes.indexOf(text.subarray(0, 4096))).toBe(-1);
    expect(bytes.length).toBeLessThan(300_000 + 20_000);
  });

  it('the Linux kernel mounts it and finds every entry by name (skipped where mounting is not allowed)', async (ctx) => {
    const mnt = join(work, 'mnt');
    mkdirSync(mnt);
    const m = spawnSync('mount', ['-t', 'squashfs', '-o', 'loop,ro', img, mnt]);
    if (m.status !== 0) ctx.skip();
    try {
      expect(compareExtracted(tree, mnt, { devices: true })).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
  });

  it('a dm-verity tree appended after the padding leaves the filesystem readable', async () => {
    const out = join(work, 'verity.sqfs');
    const r = await writeSquashfs(tree, out, { mtime: MTIME });
    const v = await appendVerityHashTree(out, { dataSize: r.size, salt: Buffer.alloc(32, 7) });
    expect(v.hashOffset).toBe(r.size);
    expect(parseListing(run('unsquashfs', ['-lln', out]))).toEqual(asUnsquashfsLists(expectedListing(tree)));
  });

  it('uses extended inodes for a file larger than 4 GiB', async () => {
    const bigPath = join(work, 'huge.sparse');
    const size = 4 * 1024 ** 3 + 123_457;
    const fd = openSync(bigPath, 'w');
    ftruncateSync(fd, size);
    writeSync(fd, Buffer.from('the end'), 0, 7, size - 7);
    closeSync(fd);
    const t = new Tree();
    t.add({ path: 'huge', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: bigPath, size } });
    const out = join(work, 'huge.sqfs');
    await writeSquashfs(t, out, { mtime: MTIME, blockSize: 1 << 20 });
    expect(statSync(out).size).toBeLessThan(1 << 20);
    expect(parseListing(run('unsquashfs', ['-lln', out]))[1]).toMatchObject({ path: 'huge', size: String(size) });
    const dest = join(work, 'huge-extract');
    run('unsquashfs', ['-no-progress', '-d', dest, out]);
    expect(statSync(join(dest, 'huge')).size).toBe(size);
    const tail = Buffer.alloc(4096);
    const rfd = openSync(join(dest, 'huge'), 'r');
    readSync(rfd, tail, 0, 4096, size - 4096);
    readSync(rfd, Buffer.alloc(0), 0, 0, 0);
    closeSync(rfd);
    expect(tail.subarray(4096 - 7).toString()).toBe('the end');
    expect(tail.subarray(0, 4096 - 7).every((b) => b === 0)).toBe(true);
  }, 300_000);

  it('refuses names longer than 256 bytes', async () => {
    const t = new Tree();
    t.file('x'.repeat(257), 'too long');
    await expect(writeSquashfs(t, join(work, 'bad.sqfs'), { mtime: MTIME })).rejects.toThrow(/longer than 256/);
  });
});
