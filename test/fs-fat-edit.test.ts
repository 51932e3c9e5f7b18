import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tree } from '../src/tree/tree.js';
import { writeFat } from '../src/fs/fat.js';
import { FatVolume } from '../src/fs/fat-edit.js';
import { FatReader } from '../src/fs/fat-reader.js';
import { openBlockDevice } from '../src/ota/slots/block-device.js';
import { PowerCut, SimDisk } from '../src/ota/sim/sim-disk.js';
import { expectFsckClean, fsckOutput, mtoolsPaths, mtoolsRead } from './helpers/fat-tools.js';
import { makeTempDir, runTool } from './helpers/fs-image-tools.js';

const tmp = makeTempDir('fat-edit');
afterAll(() => tmp.cleanup());

const ENTRY_1A = 'title gateway 1.0 (slot A)\nlinux /slot-a/vmlinuz\ninitrd /slot-a/initrd.img\noptions edgekit.slot=a\n';

/** A small ESP as the builder writes it. */
async function makeEsp(name: string, fatType: 'fat16' | 'fat32' = 'fat16'): Promise<string> {
  const tree = new Tree();
  tree.file('EFI/BOOT/BOOTX64.EFI', Buffer.alloc(70_000, 7));
  tree.file('loader/loader.conf', 'timeout 0\n');
  tree.file('loader/entries/edgekit-1-a.conf', ENTRY_1A);
  tree.file('slot-a/vmlinuz', pattern(300_000, 1));
  tree.file('slot-a/initrd.img', pattern(120_000, 2));
  const path = join(tmp.dir, name);
  await writeFat(tree, path, { size: fatType === 'fat16' ? 8 << 20 : 40 << 20, label: 'ESP', volumeId: 0x1234, mtime: 1_700_000_000, fatType });
  return path;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 17 + (i >> 9)) & 0xff;
  return b;
}

async function withVolume<T>(path: string, fn: (v: FatVolume) => Promise<T>): Promise<T> {
  const dev = await openBlockDevice(path);
  try {
    return await fn(await FatVolume.open(dev, 0, { mtime: 1_700_000_000 }));
  } finally {
    await dev.close();
  }
}

describe.each(['fat16', 'fat32'] as const)('fat-edit on %s', (fatType) => {
  it('creates, replaces, renames and deletes; fsck.vfat and mtools agree after every change', async () => {
    const img = await makeEsp(`ops-${fatType}.img`, fatType);
    const kernelB = pattern(250_000, 3);
    const initrdB = pattern(90_000, 4);
    const entry = 'title slot B\nlinux /slot-b/vmlinuz\n';
    const steps: Array<[string, (v: FatVolume) => Promise<void>, () => void]> = [
      ['mkdir', (v) => v.mkdir('slot-b'), () => expect(mtoolsPaths(img)).toContain('slot-b/')],
      ['create', (v) => v.writeFile('slot-b/vmlinuz', kernelB), () => expect(mtoolsRead(img, 'slot-b/vmlinuz').equals(kernelB)).toBe(true)],
      ['create 2', (v) => v.writeFile('slot-b/initrd.img', initrdB), () => expect(mtoolsRead(img, 'slot-b/initrd.img').equals(initrdB)).toBe(true)],
      ['entry', (v) => v.writeFile('loader/entries/edgekit-2-b+3.conf', Buffer.from(entry)), () => expect(mtoolsRead(img, 'loader/entries/edgekit-2-b+3.conf').toString()).toBe(entry)],
      ['count', (v) => v.rename('loader/entries/edgekit-2-b+3.conf', 'loader/entries/edgekit-2-b+2-1.conf'), () => expect(mtoolsPaths(img)).toContain('loader/entries/edgekit-2-b+2-1.conf')],
      ['bless', (v) => v.rename('loader/entries/edgekit-2-b+2-1.conf', 'loader/entries/edgekit-2-b.conf'), () => expect(mtoolsRead(img, 'loader/entries/edgekit-2-b.conf').toString()).toBe(entry)],
      ['replace', (v) => v.writeFile('slot-b/vmlinuz', kernelB.subarray(0, 100_000)), () => expect(mtoolsRead(img, 'slot-b/vmlinuz').equals(kernelB.subarray(0, 100_000))).toBe(true)],
      ['rename that grows', (v) => v.rename('loader/loader.conf', 'loader/a-much-longer-name-than-before-for-loader.conf'), () => expect(mtoolsPaths(img)).toContain('loader/a-much-longer-name-than-before-for-loader.conf')],
      ['rename to 8.3', (v) => v.rename('loader/entries/edgekit-1-a.conf', 'loader/entries/OLD.CON'), () => expect(mtoolsRead(img, 'loader/entries/OLD.CON').toString()).toBe(ENTRY_1A)],
      ['delete', (v) => v.remove('slot-a/initrd.img'), () => expect(mtoolsPaths(img)).not.toContain('slot-a/initrd.img')],
      ['in place', (v) => v.rewriteInPlace('slot-b/initrd.img', pattern(90_000, 9)), () => expect(mtoolsRead(img, 'slot-b/initrd.img').equals(pattern(90_000, 9))).toBe(true)],
    ];
    for (const [name, op, check] of steps) {
      await withVolume(img, op);
      expect(fsckOutput(img).status, `after ${name}: ${fsckOutput(img).out}`).toBe(0);
      expectFsckClean(img);
      check();
    }
    // Our own reader and the editor see the same tree as mtools.
    const reader = await FatReader.open(img);
    const ours = (await reader.list()).map((e) => e.path + (e.isDir ? '/' : '')).sort();
    await reader.close();
    expect(ours).toEqual(mtoolsPaths(img));
  });

  it('refuses a file the free space cannot hold, and leaves the volume clean', async () => {
    const img = await makeEsp(`full-${fatType}.img`, fatType);
    const free = await withVolume(img, async (v) => v.freeBytes());
    await expect(withVolume(img, (v) => v.writeFile('big.bin', Buffer.alloc(free + 1)))).rejects.toThrow(/no room for "big.bin"/);
    expectFsckClean(img);
    expect(mtoolsPaths(img)).not.toContain('big.bin');
  });
});

describe('fat-edit on a partition inside a disk image', () => {
  it('edits the FAT at its partition offset with positioned I/O', async () => {
    const esp = await makeEsp('part-esp.img');
    const disk = join(tmp.dir, 'disk.img');
    const offset = 1 << 20;
    const buf = Buffer.alloc(offset + readFileSync(esp).length + 4096, 0);
    readFileSync(esp).copy(buf, offset);
    writeFileSync(disk, buf);
    const dev = await openBlockDevice(disk);
    const vol = await FatVolume.open(dev, offset);
    await vol.rename('loader/entries/edgekit-1-a.conf', 'loader/entries/edgekit-1-a+3.conf');
    await vol.writeFile('hello.txt', Buffer.from('hi\n'));
    await dev.close();
    const r = runTool('mdir', ['-i', `${disk}@@${offset}`, '-/', '-b', '::']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('::/loader/entries/edgekit-1-a+3.conf');
    expect(runTool('mtype', ['-i', `${disk}@@${offset}`, '::/hello.txt']).stdout).toBe('hi\n');
    expect(buf.subarray(0, offset).equals(readFileSync(disk).subarray(0, offset))).toBe(true);
  });
});

/**
 * A power cut at every disk operation of each kind of change, with several seeds for which
 * unsynced sectors survive: a FAT reader always sees the old or the new state, and fsck.vfat
 * finds the volume clean either at once or after repair().
 */
describe('fat-edit across power cuts', () => {
  const kinds: Array<{ name: string; cleanWithoutRepair: boolean; op: (v: FatVolume) => Promise<void>; state: (paths: string[], read: (p: string) => Buffer) => 'old' | 'new' }> = [
    {
      name: 'rename of a loader entry (counter)',
      cleanWithoutRepair: true,
      op: (v) => v.rename('loader/entries/edgekit-1-a.conf', 'loader/entries/edgekit-1-a+2-1.conf'),
      state: (p) => (p.includes('loader/entries/edgekit-1-a+2-1.conf') ? 'new' : 'old'),
    },
    {
      name: 'create a file',
      cleanWithoutRepair: false,
      op: (v) => v.writeFile('loader/entries/edgekit-2-b+3.conf', Buffer.from('title B\n')),
      state: (p, read) => (p.includes('loader/entries/edgekit-2-b+3.conf') ? (expect(read('loader/entries/edgekit-2-b+3.conf').toString()).toBe('title B\n'), 'new') : 'old'),
    },
    {
      name: 'replace a file',
      cleanWithoutRepair: false,
      op: (v) => v.writeFile('slot-a/initrd.img', pattern(50_000, 5)),
      state: (_p, read) => (read('slot-a/initrd.img').equals(pattern(50_000, 5)) ? 'new' : (expect(read('slot-a/initrd.img').equals(pattern(120_000, 2))).toBe(true), 'old')),
    },
    {
      name: 'delete a file',
      cleanWithoutRepair: false,
      op: (v) => v.remove('slot-a/vmlinuz'),
      state: (p, read) => (p.includes('slot-a/vmlinuz') ? (expect(read('slot-a/vmlinuz').equals(pattern(300_000, 1))).toBe(true), 'old') : 'new'),
    },
    {
      name: 'mkdir',
      cleanWithoutRepair: false,
      op: (v) => v.mkdir('slot-b/deeper'),
      state: (p) => (p.includes('slot-b/deeper/') ? 'new' : 'old'),
    },
    {
      name: 'rename that moves its entries',
      cleanWithoutRepair: false,
      op: (v) => v.rename('loader/loader.conf', 'loader/a-much-longer-name-than-before-for-loader.conf'),
      state: (p) => (p.includes('loader/loader.conf') ? 'old' : 'new'),
    },
  ];

  for (const kind of kinds) {
    it(`${kind.name}: old or new at every cut; ${kind.cleanWithoutRepair ? 'fsck-clean without repair' : 'fsck-clean after repair()'}`, async () => {
      const pristine = await makeEsp(`cut-${kind.name.replace(/\W+/g, '_')}.img`);
      const img = `${pristine}.work`;
      // Count the operations of an uninterrupted run first.
      copyFileSync(pristine, img);
      const clean = await SimDisk.open(img, { seed: 1 });
      await kind.op(await FatVolume.open(clean, 0));
      const total = clean.ops;
      await clean.close();
      expect(total).toBeGreaterThan(0);
      const seen = new Set<string>();
      for (let cut = 1; cut <= total + 1; cut++) {
        for (const seed of [1, 2, 3]) {
          copyFileSync(pristine, img);
          const disk = await SimDisk.open(img, { seed: seed * 1000 + cut });
          disk.cutAfter(cut);
          try {
            await kind.op(await FatVolume.open(disk, 0));
          } catch (err) {
            if (!(err instanceof PowerCut)) throw err;
          }
          await disk.powerCut();
          await disk.close();
          const read = (p: string) => mtoolsRead(img, p);
          seen.add(kind.state(mtoolsPaths(img), read));
          const before = fsckOutput(img);
          if (kind.cleanWithoutRepair) expectFsckClean(img);
          await withVolume(img, (v) => v.repair().then(() => undefined));
          expectFsckClean(img);
          // Repair never changes which state the files are in.
          seen.add(kind.state(mtoolsPaths(img), read));
          if (before.status !== 0) seen.add('repaired');
        }
      }
      expect(seen.has('old') && seen.has('new')).toBe(true);
    });
  }
});
