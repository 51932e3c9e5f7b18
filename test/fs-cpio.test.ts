import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCpio } from '../src/fs/cpio.js';
import { Tree } from '../src/tree/tree.js';
import { buildSampleTree, compareExtracted, expectedListing, ListedEntry } from './helpers/root-tree.js';

const MTIME = 1_700_000_000;
const env = { ...process.env, LC_ALL: 'C', TZ: 'UTC' };
const isRoot = process.getuid?.() === 0;

/** Parses `cpio -itvn` lines: mode, links, uid, gid, size or "major, minor", date, name [-> target]. */
function parseCpioListing(text: string): ListedEntry[] {
  const re = /^(\S{10})\s+\d+\s+(\d+)\s+(\d+)\s+(\d+,\s*\d+|\d+) (\w{3} [ \d]\d (?:\d\d:\d\d| \d{4})) (.*)$/;
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const m = re.exec(line);
      if (!m) throw new Error(`unparsed cpio line: ${line}`);
      const [, mode, uid, gid, size, , rest] = m;
      const isLink = mode.startsWith('l');
      const arrow = rest.indexOf(' -> ');
      const name = isLink ? rest.slice(0, arrow) : rest;
      const e: ListedEntry = {
        path: name === '.' ? '' : name,
        mode,
        uid: Number(uid),
        gid: Number(gid),
        size: size.replace(/\s/g, ''),
      };
      if (isLink) e.target = rest.slice(arrow + 4);
      if (mode.startsWith('d') || mode.startsWith('p')) e.size = '';
      return e;
    });
}

describe('writeCpio', () => {
  let work: string;
  let tree: Tree;
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'edgekit-cpio-'));
    tree = buildSampleTree({ scratch: work, bigSize: 3_000_000, manyEntries: 300 });
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('cpio -itv lists exactly the tree, with the mtime given', async () => {
    const out = join(work, 'plain.cpio');
    const { size } = await writeCpio(tree, out, { mtime: MTIME });
    expect(size).toBe(readFileSync(out).length);
    const listing = execFileSync('cpio', ['-itvn', '--quiet', '-F', out], { env, maxBuffer: 1 << 26 }).toString();
    expect(parseCpioListing(listing)).toEqual(expectedListing(tree));
    expect(listing).toContain('Nov 14  2023');
  });

  it('cpio -id reproduces every file, link, mode and owner', async () => {
    const out = join(work, 'extract.cpio');
    await writeCpio(tree, out, { mtime: MTIME });
    const dest = join(work, 'extract');
    mkdirSync(dest);
    const r = spawnSync('cpio', ['-id', '--quiet', '-F', out], { cwd: dest, env });
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(compareExtracted(tree, dest, { devices: isRoot })).toEqual([]);
  });

  it('gzip output is a valid, deterministic gzip stream of the same archive', async () => {
    const plain = join(work, 'a.cpio');
    const gz1 = join(work, 'a.cpio.gz');
    const gz2 = join(work, 'b.cpio.gz');
    await writeCpio(tree, plain, { mtime: MTIME });
    await writeCpio(tree, gz1, { mtime: MTIME, compress: 'gzip' });
    await writeCpio(tree, gz2, { mtime: MTIME, compress: 'gzip' });
    execFileSync('gzip', ['-t', gz1]);
    const unzipped = execFileSync('zcat', [gz1], { maxBuffer: 1 << 27 });
    expect(unzipped.equals(readFileSync(plain))).toBe(true);
    const gz = readFileSync(gz1);
    expect(gz.equals(readFileSync(gz2))).toBe(true);
    expect(gz.readUInt32LE(4)).toBe(0); // gzip header mtime
    expect(gz[9]).toBe(3); // OS byte pinned to Unix
  });

  it('the archive ends with the trailer and every record is 4-byte aligned', async () => {
    const out = join(work, 'trailer.cpio');
    const tiny = new Tree();
    tiny.file('a', 'abc');
    await writeCpio(tiny, out, { mtime: MTIME });
    const data = readFileSync(out);
    expect(data.length % 4).toBe(0);
    expect(data.toString('latin1')).toContain('TRAILER!!!\0');
    // Root ".", "a", trailer: three newc magics.
    expect(data.toString('latin1').split('070701').length - 1).toBe(3);
  });

  it('same tree gives the same bytes; a different mtime does not', async () => {
    const a = join(work, 'same1.cpio');
    const b = join(work, 'same2.cpio');
    const c = join(work, 'other.cpio');
    await writeCpio(tree, a, { mtime: MTIME });
    await writeCpio(tree, b, { mtime: MTIME });
    await writeCpio(tree, c, { mtime: MTIME + 1 });
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
    expect(readFileSync(a).equals(readFileSync(c))).toBe(false);
  });

  it('refuses an on-disk file whose size changed', async () => {
    const t = new Tree();
    t.add({ path: 'x', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: join(work, 'small-on-disk.txt'), size: 99 } });
    await expect(writeCpio(t, join(work, 'bad.cpio'), { mtime: MTIME })).rejects.toThrow(/changed size/);
  });
});
