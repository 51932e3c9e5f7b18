import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, openSync, readSync, writeSync, closeSync, copyFileSync } from 'node:fs';
import { Tree, type FileEntry } from '../src/tree/tree.js';
import { writeFat, type FatLayout } from '../src/fs/fat.js';
import { FatReader } from '../src/fs/fat-reader.js';
import { EdgekitError } from '../src/util/errors.js';
import { makeTempDir, runTool } from './helpers/fs-image-tools.js';
import { expectFsckClean, fsckOutput, mtoolsPaths, mtoolsRead, mdir, minfo } from './helpers/fat-tools.js';

const tmp = makeTempDir('fat');
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;
const MTIME = 1700000000; // 2023-11-14 22:13:20 UTC

/** Deterministic incompressible bytes (AES-CTR keystream), so content mix-ups cannot go unseen. */
function pseudoRandom(length: number, seed: string): Buffer {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()]);
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** A boot-partition-like tree: nested dirs, long and case-differing names, many files, empties. */
function sampleTree(): Tree {
  const t = new Tree();
  t.file('EFI/BOOT/BOOTX64.EFI', pseudoRandom(300_000, 'bootx64'));
  t.file('loader/loader.conf', 'timeout 3\ndefault slot-a*\n');
  t.file('loader/entries/slot-a+3.conf', 'title edgekit (slot A)\nlinux /slot-a/vmlinuz\n');
  t.file('loader/entries/slot-b+0-3.conf', 'title edgekit (slot B)\nlinux /slot-b/vmlinuz\n');
  t.file('loader/entries/SLOT-A~1.CON', 'an 8.3 name that looks like a generated alias\n');
  t.file('config.txt', 'arm_64bit=1\n');
  t.file('CONFIG~1.TXT', 'an alias-shaped 8.3 name\n');
  t.file('Config Long.txt', 'would get CONFIG~1.TXT if that were free\n');
  t.file('README', 'an 8.3 name that needs no long name\n');
  t.file('A name with spaces, commas; and ünïcödé — € ☃.txt', 'unicode\n');
  t.file('.hidden-dotfile', 'dot\n');
  t.file('empty-file', '');
  t.dir('empty-dir');
  t.file('a/b/c/d/e/f/deeply-nested-file.bin', pseudoRandom(5000, 'deep'));
  t.file('x'.repeat(200) + '.long', 'a 204-character name\n');
  // 300 names sharing a prefix: short-name tails beyond ~9, and a directory of many clusters.
  for (let i = 0; i < 300; i++) t.file(`overlays/device-tree-overlay-${i}.dtbo`, `overlay ${i}\n`);
  return t;
}

function treeFiles(t: Tree): FileEntry[] {
  return t.list().filter((e): e is FileEntry => e.type === 'file');
}

function expectedMtoolsPaths(t: Tree): string[] {
  return t
    .list()
    .filter((e) => e.path !== '')
    .map((e) => (e.type === 'dir' ? `${e.path}/` : e.path))
    .sort();
}

function contentOf(e: FileEntry): Buffer {
  return e.content.kind === 'buffer' ? e.content.data : readFileSync(e.content.path);
}

function readAt(img: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = openSync(img, 'r');
  readSync(fd, buf, 0, length, offset);
  closeSync(fd);
  return buf;
}

/** The checks every image gets: fsck, mtools listing and content, layout offsets, our reader. */
async function checkImage(img: string, tree: Tree, layout: FatLayout, sampleEvery = 1): Promise<void> {
  expectFsckClean(img);
  expect(mtoolsPaths(img)).toEqual(expectedMtoolsPaths(tree));
  const files = treeFiles(tree);
  files.forEach((f, i) => {
    if (i % sampleEvery !== 0 && contentOf(f).length < 1000) return;
    expect(mtoolsRead(img, f.path).equals(contentOf(f)), `mcopy ${f.path}`).toBe(true);
  });
  expect(layout.files.map((f) => f.path)).toEqual(files.map((f) => f.path));
  for (const ext of layout.files) {
    const want = contentOf(files.find((f) => f.path === ext.path)!);
    expect(ext.length).toBe(want.length);
    if (want.length > 0) expect(readAt(img, ext.offset, ext.length).equals(want), `layout offset of ${ext.path}`).toBe(true);
  }
  const reader = await FatReader.open(img);
  try {
    expect(reader.fatType).toBe(layout.fatType);
    const listed = (await reader.list()).map((e) => (e.isDir ? `${e.path}/` : e.path)).sort();
    expect(listed).toEqual(expectedMtoolsPaths(tree));
    for (const f of files.filter((_, i) => i % sampleEvery === 0)) {
      expect((await reader.readFile(f.path)).equals(contentOf(f)), `reader ${f.path}`).toBe(true);
    }
  } finally {
    await reader.close();
  }
}

describe('writeFat: FAT16', () => {
  const tree = sampleTree();
  const img = join(tmp.dir, 'fat16.img');
  let layout: FatLayout;

  it('writes an image of exactly the requested size, FAT16 picked by size', async () => {
    layout = await writeFat(tree, img, { size: 32 * MiB, label: 'bootfs', volumeId: 0x1234abcd, mtime: MTIME });
    expect(statSync(img).size).toBe(32 * MiB);
    expect(layout.fatType).toBe('fat16');
  });

  it('passes fsck.vfat, and mtools and our reader see every name and byte', async () => {
    await checkImage(img, tree, layout);
  });

  it('keeps names exactly, with unique short aliases', () => {
    const root = mdir(img, '');
    expect(root).toMatch(/^CONFIG~1 TXT .*\d\d:\d\d\s*$/m); // an upper-case 8.3 name needs no long name
    expect(root).toMatch(/^README .* \d\d:\d\d\s*$/m);
    expect(root).toMatch(/^CONFIG {3}TXT .* config\.txt$/m); // lower case kept by a long name
    expect(root).toMatch(/^CONFIG~2 TXT .* Config Long\.txt$/m); // the alias avoids the 8.3 name above
    const entries = mdir(img, 'loader/entries');
    expect(entries).toMatch(/^SLOT-A~1 CON .*\d\d:\d\d\s*$/m);
    expect(entries).toMatch(/^SLOT-A~2 CON .* slot-a\+3\.conf$/m);
    const shorts = mdir(img, 'overlays')
      .split('\n')
      .filter((l) => / overlay|device-tree/.test(l))
      .map((l) => l.slice(0, 12));
    expect(shorts).toHaveLength(300);
    expect(new Set(shorts).size).toBe(300);
  });

  it('stores label, serial and the mtime as UTC', () => {
    const info = minfo(img);
    expect(info).toMatch(/serial number: 1234ABCD/);
    expect(info).toMatch(/disk label="bootfs     "/);
    expect(info).toMatch(/disk type="FAT16   "/);
    expect(mdir(img, '')).toMatch(/Volume in drive : is bootfs/);
    expect(mdir(img, 'loader')).toMatch(/2023-11-14 +22:13/);
  });

  it('leaves free space as holes', () => {
    // 32 MiB image holding well under 1 MiB of data: what is allocated is the metadata and files.
    expect(statSync(img).blocks * 512).toBeLessThan(2 * MiB);
  });
});

describe('writeFat: FAT32 with a 40 MB file streamed from disk', () => {
  const bigPath = join(tmp.dir, 'vmlinuz');
  const big = pseudoRandom(40 * 1000 * 1000, 'kernel');
  big.fill(0, 10 * MiB, 12 * MiB); // a zero run inside the file must still read back as zeros
  writeFileSync(bigPath, big);
  const tree = sampleTree();
  tree.add({ path: 'slot-a/vmlinuz', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: bigPath, size: big.length } });
  const img = join(tmp.dir, 'fat32.img');
  let layout: FatLayout;

  it('writes FAT32 when asked, with FSINFO and a backup boot sector', async () => {
    layout = await writeFat(tree, img, { size: 96 * MiB, label: 'EFI', volumeId: 0xcafe0001, mtime: MTIME, fatType: 'fat32' });
    expect(layout.fatType).toBe('fat32');
    expect(minfo(img)).toMatch(/disk type="FAT32   "/);
    expect(readAt(img, 0, 512).equals(readAt(img, 6 * 512, 512))).toBe(true);
    const info = readAt(img, 512, 512);
    expect(info.readUInt32LE(0)).toBe(0x41615252);
    expect(info.readUInt32LE(488)).toBe(layout.clusterCount - layout.usedClusters);
  });

  it('passes fsck.vfat, and mtools and our reader see every name and byte', async () => {
    await checkImage(img, tree, layout, 7);
    const boot = readAt(img, 0, 512);
    const dataStart = (boot.readUInt16LE(14) + 2 * boot.readUInt32LE(36)) * 512;
    for (const f of layout.files.filter((x) => x.length > 0)) expect((f.offset - dataStart) % layout.clusterSize).toBe(0);
  });

  it('leaves the zero run inside the big file and the free space unwritten', () => {
    const nonZero = big.length - 2 * MiB;
    expect(statSync(img).blocks * 512).toBeGreaterThan(nonZero);
    // Written in full, the big file alone would take big.length; the rest (FATs, directories,
    // small files) is about 1 MB, so this only holds if the 2 MiB zero run stayed a hole.
    expect(statSync(img).blocks * 512).toBeLessThan(big.length);
  });

  it('picks FAT32 by itself for a large volume, and fsck.vfat accepts it', async () => {
    const large = join(tmp.dir, 'fat32-auto.img');
    const small = sampleTree();
    const l = await writeFat(small, large, { size: 600 * MiB, label: '', volumeId: 7, mtime: MTIME });
    expect(l.fatType).toBe('fat32');
    expect(l.clusterCount).toBeGreaterThanOrEqual(65525);
    expect(minfo(large)).toMatch(/disk label="NO NAME    "/);
    await checkImage(large, small, l, 10);
  });

  it('fsck.vfat catches a damaged image (so the checks above can fail)', () => {
    const broken = join(tmp.dir, 'fat32-broken.img');
    copyFileSync(img, broken);
    const fd = openSync(broken, 'r+');
    writeSync(fd, Buffer.from([0x01, 0x00, 0x00, 0x00]), 0, 4, 512 + 488); // FSINFO free count
    closeSync(fd);
    const r = fsckOutput(broken);
    expect(r.out).toMatch(/Free cluster summary wrong/);
  });
});

describe('writeFat: a FAT16 root directory with more than 512 entries', () => {
  it('grows the fixed root directory', async () => {
    const t = new Tree();
    for (let i = 0; i < 400; i++) t.file(`root-level file ${i}.txt`, `${i}\n`);
    const out = join(tmp.dir, 'bigroot.img');
    const l = await writeFat(t, out, { size: 16 * MiB, label: 'ROOT', volumeId: 9, mtime: MTIME, fatType: 'fat16' });
    expect(minfo(out)).toMatch(/max available root directory slots: (\d+)/);
    expect(Number(/max available root directory slots: (\d+)/.exec(minfo(out))![1])).toBeGreaterThanOrEqual(1201);
    await checkImage(out, t, l, 13);
  });
});

describe('writeFat output is reproducible', () => {
  it('gives the same bytes for the same input, whatever the insertion order', async () => {
    const a = sampleTree();
    const b = new Tree();
    for (const e of [...a.list()].reverse()) if (e.path !== '') b.add(e);
    const opts = { size: 16 * MiB, label: 'BOOT', volumeId: 42, mtime: MTIME };
    const pa = join(tmp.dir, 'repro-a.img');
    const pb = join(tmp.dir, 'repro-b.img');
    const la = await writeFat(a, pa, opts);
    const lb = await writeFat(b, pb, opts);
    expect(sha256(pa)).toBe(sha256(pb));
    expect(la).toEqual(lb);
    await writeFat(a, pb, { ...opts, mtime: MTIME + 3600 });
    expect(sha256(pa)).not.toBe(sha256(pb));
  });
});

describe('writeFat rejects what FAT cannot hold', () => {
  it('a tree that does not fit', async () => {
    const t = new Tree();
    t.file('big.bin', Buffer.alloc(10 * MiB, 1));
    const p = writeFat(t, join(tmp.dir, 'small.img'), { size: 8 * MiB, label: 'BOOT', volumeId: 1, mtime: MTIME });
    await expect(p).rejects.toThrow(EdgekitError);
    await expect(writeFat(t, join(tmp.dir, 'small.img'), { size: 8 * MiB, label: 'BOOT', volumeId: 1, mtime: MTIME })).rejects.toThrow(
      /FAT filesystem "BOOT" does not fit in 8388608 bytes: needs (\d+) bytes/,
    );
    try {
      await writeFat(t, join(tmp.dir, 'small.img'), { size: 8 * MiB, label: 'BOOT', volumeId: 1, mtime: MTIME });
    } catch (err) {
      const needs = Number(/needs (\d+) bytes/.exec((err as Error).message)![1]);
      expect(needs).toBeGreaterThan(10 * MiB);
      expect(needs).toBeLessThan(11 * MiB);
    }
  });
  it('symlinks, devices and bad names, naming the path', async () => {
    const out = join(tmp.dir, 'bad.img');
    const opts = { size: 8 * MiB, label: 'X', volumeId: 1, mtime: MTIME };
    const withLink = new Tree();
    withLink.symlink('boot/current', 'slot-a');
    await expect(writeFat(withLink, out, opts)).rejects.toThrow(/"boot\/current" is a symlink/);
    const withBadName = new Tree();
    withBadName.file('dir/what?.txt', 'x');
    await expect(writeFat(withBadName, out, opts)).rejects.toThrow(/"dir\/what\?\.txt"/);
    const withTwins = new Tree();
    withTwins.file('boot/Config.txt', 'a');
    withTwins.file('boot/config.TXT', 'b');
    await expect(writeFat(withTwins, out, opts)).rejects.toThrow(/"boot\/Config\.txt" and "boot\/config\.TXT" differ only in case/);
    await expect(writeFat(new Tree(), out, { ...opts, label: 'much too long a label' })).rejects.toThrow(/label/);
    await expect(writeFat(new Tree(), out, { ...opts, fatType: 'fat32' })).rejects.toThrow(/cannot hold a valid FAT32/);
  });
  it('stores names outside the BMP as UTF-16 surrogate pairs', async () => {
    // mtools 4.0.32 prints each surrogate as '_', so this is checked with fsck and our reader.
    const t = new Tree();
    t.file('emoji 😀 name.txt', 'smile');
    const out = join(tmp.dir, 'emoji.img');
    await writeFat(t, out, { size: 8 * MiB, label: 'X', volumeId: 1, mtime: MTIME });
    expectFsckClean(out);
    expect(mtoolsPaths(out)).toEqual(['emoji __ name.txt']);
    const reader = await FatReader.open(out);
    try {
      expect((await reader.list()).map((e) => e.path)).toEqual(['emoji 😀 name.txt']);
    } finally {
      await reader.close();
    }
  });
  it('a file on disk whose size changed since it was added', async () => {
    const src = join(tmp.dir, 'shrunk.bin');
    writeFileSync(src, Buffer.alloc(1000, 1));
    const t = new Tree();
    t.add({ path: 'k/vmlinuz', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: src, size: 5000 } });
    await expect(writeFat(t, join(tmp.dir, 'shrunk.img'), { size: 8 * MiB, label: 'X', volumeId: 1, mtime: MTIME })).rejects.toThrow(
      /"k\/vmlinuz": .*shrunk\.bin is shorter than the 5000 bytes/,
    );
  });
  it('clamps timestamps before 1980 (SOURCE_DATE_EPOCH=0) to 1980-01-01', async () => {
    const t = new Tree();
    t.file('f.txt', 'x');
    const out = join(tmp.dir, 'epoch.img');
    await writeFat(t, out, { size: 8 * MiB, label: 'X', volumeId: 1, mtime: 0 });
    expectFsckClean(out);
    expect(mdir(out, '')).toMatch(/1980-01-01 +0:00/);
  });
});

describe('FatReader on images made by mkfs.vfat and mcopy', () => {
  for (const [fatBits, sizeMiB] of [
    [12, 4],
    [16, 64],
    [32, 100],
  ] as const) {
    it(`reads FAT${fatBits}`, async () => {
      const img = join(tmp.dir, `mkfs-${fatBits}.img`);
      const mk = runTool('mkfs.vfat', ['-C', '-F', String(fatBits), '-n', 'MKFSVOL', '-i', 'a1b2c3d4', img, String(sizeMiB * 1024)]);
      expect(mk.status, mk.stderr).toBe(0);
      const src = join(tmp.dir, `src-${fatBits}`);
      const files: Record<string, Buffer> = {
        'Mixed Case Long Name.txt': Buffer.from('hello\n'),
        'lower.txt': Buffer.from('lower-case 8.3 name\n'),
        'sub/dir/slot-a+3.conf': Buffer.from('title A\n'),
        'sub/data.bin': pseudoRandom(fatBits === 12 ? 200_000 : 3 * MiB, `mkfs${fatBits}`),
        'sub/empty': Buffer.alloc(0),
      };
      for (let i = 0; i < 80; i++) files[`many/file with a long name ${i}.txt`] = Buffer.from(`file ${i}\n`);
      runTool('mkdir', ['-p', join(src, 'sub/dir'), join(src, 'many')]);
      for (const [p, data] of Object.entries(files)) writeFileSync(join(src, p), data);
      for (const top of ['Mixed Case Long Name.txt', 'lower.txt', 'sub', 'many']) {
        const r = runTool('mcopy', ['-s', '-i', img, join(src, top), '::/']);
        expect(r.status, r.stderr).toBe(0);
      }
      const reader = await FatReader.open(img);
      try {
        expect(reader.fatType).toBe(`fat${fatBits}`);
        expect(reader.label).toBe('MKFSVOL');
        expect(reader.volumeId).toBe(0xa1b2c3d4);
        const listed = (await reader.list()).filter((e) => !e.isDir).map((e) => e.path).sort();
        expect(listed).toEqual(Object.keys(files).sort());
        for (const [p, data] of Object.entries(files)) expect((await reader.readFile(p)).equals(data), p).toBe(true);
        expect((await reader.readFile('SUB/DATA.BIN')).length).toBe(files['sub/data.bin'].length);
        await expect(reader.readFile('sub/missing')).rejects.toThrow(/no "sub\/missing"/);
      } finally {
        await reader.close();
      }
    });
  }

  it('rejects something that is not FAT', async () => {
    const img = join(tmp.dir, 'zeros.img');
    writeFileSync(img, Buffer.alloc(4096));
    await expect(FatReader.open(img)).rejects.toThrow(/not a FAT filesystem/);
  });

  it('reads a FAT filesystem at an offset inside a disk image', async () => {
    const part = join(tmp.dir, 'part.img');
    const t = sampleTree();
    await writeFat(t, part, { size: 16 * MiB, label: 'P', volumeId: 3, mtime: MTIME, partitionOffset: MiB });
    const disk = join(tmp.dir, 'disk-with-part.img');
    writeFileSync(disk, Buffer.concat([Buffer.alloc(MiB, 0xaa), readFileSync(part)]));
    const reader = await FatReader.open(disk, MiB);
    try {
      expect((await reader.readFile('loader/entries/slot-a+3.conf')).toString()).toContain('slot A');
    } finally {
      await reader.close();
    }
  });
});
