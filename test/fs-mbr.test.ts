import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { openSync, readSync, closeSync, ftruncateSync } from 'node:fs';
import { buildMbr, MBR_TYPE, type MbrPartitionSpec } from '../src/fs/mbr.js';
import { readPartitionTable } from '../src/fs/partition-table.js';
import { EdgekitError } from '../src/util/errors.js';
import { makeTempDir, writeSparseImage, runTool } from './helpers/fs-image-tools.js';

const tmp = makeTempDir('mbr');
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;
const SIGNATURE = 0x5eed1e55;

function writeOurs(name: string, diskSize: number, partitions: MbrPartitionSpec[], alignment?: number): { path: string; offsets: number[] } {
  const writes = buildMbr({ diskSize, diskSignature: SIGNATURE, partitions, alignment });
  const path = join(tmp.dir, name);
  writeSparseImage(path, diskSize, writes);
  return { path, offsets: writes.map((w) => w.offset) };
}

/** The same layout written by sfdisk from a script, as the reference. */
function writeWithSfdisk(name: string, diskSize: number, script: string): string {
  const path = join(tmp.dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, diskSize);
  closeSync(fd);
  const r = runTool('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', path], script);
  expect(r.status, r.stderr).toBe(0);
  return path;
}

function sector(path: string, offset: number): Buffer {
  const buf = Buffer.alloc(512);
  const fd = openSync(path, 'r');
  readSync(fd, buf, 0, 512, offset);
  closeSync(fd);
  return buf;
}

function sfdiskJson(path: string) {
  const r = runTool('sfdisk', ['--json', path]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout).partitiontable;
}

function sfdiskVerify(path: string): void {
  const r = runTool('sfdisk', ['--verify', path]);
  expect(r.status, r.stdout + r.stderr).toBe(0);
  expect(r.stdout).toMatch(/No errors detected/);
  expect(r.stdout + r.stderr).not.toMatch(/overlap|exceeds|wrong|not fit|invalid/i);
}

describe('buildMbr, Raspberry Pi style (primary partitions only)', () => {
  const diskSize = 64 * MiB;
  const parts: MbrPartitionSpec[] = [
    { type: MBR_TYPE.fat32Lba, firstLba: 8192, sectors: 32768, bootable: true },
    { type: MBR_TYPE.linux, firstLba: 40960, sectors: diskSize / 512 - 40960 },
  ];
  const ours = writeOurs('pi.img', diskSize, parts);

  it('returns just the MBR sector', () => expect(ours.offsets).toEqual([0]));

  it('is byte-identical to what sfdisk writes for the same layout', () => {
    const ref = writeWithSfdisk('pi-ref.img', diskSize, [
      'label: dos',
      `label-id: 0x${SIGNATURE.toString(16)}`,
      '',
      `start=8192, size=32768, type=c, bootable`,
      `start=40960, size=${diskSize / 512 - 40960}, type=83`,
      '',
    ].join('\n'));
    expect(sector(ours.path, 0).toString('hex')).toBe(sector(ref, 0).toString('hex'));
  });

  it('passes sfdisk --verify and reads back with sfdisk --json and fdisk -l', () => {
    sfdiskVerify(ours.path);
    const t = sfdiskJson(ours.path);
    expect(t.label).toBe('dos');
    expect(t.id).toBe(`0x${SIGNATURE.toString(16)}`);
    expect(t.partitions.map((p: any) => [p.start, p.size, p.type, p.bootable ?? false])).toEqual([
      [8192, 32768, 'c', true],
      [40960, diskSize / 512 - 40960, '83', false],
    ]);
    const fdisk = runTool('fdisk', ['-l', ours.path]);
    expect(fdisk.stdout).toMatch(/Disklabel type: dos/);
    expect(fdisk.stdout).toMatch(/pi\.img1 +\* +8192 +40959 +32768 +16M +c W95 FAT32 \(LBA\)/);
  });

  it('is read back by readPartitionTable', () => {
    const t = readPartitionTable(ours.path);
    expect(t.scheme).toBe('mbr');
    expect(t.diskSignature).toBe('5eed1e55');
    expect(t.partitions).toEqual([
      { index: 1, type: '0c', uuid: '5eed1e55-01', bootable: true, start: 8192 * 512, size: 32768 * 512 },
      { index: 2, type: '83', uuid: '5eed1e55-02', bootable: false, start: 40960 * 512, size: diskSize - 40960 * 512 },
    ]);
  });
});

describe('buildMbr with logical partitions', () => {
  // Sized past 8 GiB (sparse) so later partitions lie beyond what CHS can address.
  const diskSize = 10 * 1024 * MiB;
  const parts: MbrPartitionSpec[] = [
    { type: MBR_TYPE.fat32Lba, firstLba: 2048, sectors: 65536, bootable: true },
    { type: MBR_TYPE.linux, firstLba: 67584, sectors: 204800 },
    { type: MBR_TYPE.linux, firstLba: 272384, sectors: 204800 },
    { type: MBR_TYPE.linux, firstLba: 479232, sectors: 102400, logical: true },
    { type: MBR_TYPE.linuxSwap, firstLba: 583680, sectors: 40960, logical: true },
    { type: MBR_TYPE.linux, firstLba: 18874368, sectors: 1048576, logical: true },
  ];
  const ours = writeOurs('logical.img', diskSize, parts);
  const extStart = 479232 - 2048;
  const extEnd = 18874368 + 1048576 - 1;

  it('writes the MBR and one EBR per logical partition where sfdisk puts them', () => {
    expect(ours.offsets).toEqual([0, extStart * 512, (479232 + 102400) * 512, (18874368 - 2048) * 512]);
  });

  it('is byte-identical to what sfdisk writes for the same layout', () => {
    const script = [
      'label: dos',
      `label-id: 0x${SIGNATURE.toString(16)}`,
      '',
      'start=2048, size=65536, type=c, bootable',
      'start=67584, size=204800, type=83',
      'start=272384, size=204800, type=83',
      `start=${extStart}, size=${extEnd - extStart + 1}, type=f`,
      'start=479232, size=102400, type=83',
      'start=583680, size=40960, type=82',
      'start=18874368, size=1048576, type=83',
      '',
    ].join('\n');
    const ref = writeWithSfdisk('logical-ref.img', diskSize, script);
    for (const offset of ours.offsets) expect(sector(ours.path, offset).toString('hex'), `sector at ${offset}`).toBe(sector(ref, offset).toString('hex'));
    // And our reader follows sfdisk's own EBR chain.
    expect(readPartitionTable(ref).partitions.map((p) => p.index)).toEqual([1, 2, 3, 5, 6, 7]);
  });

  it('passes sfdisk --verify, and sfdisk/fdisk list the logical partitions', () => {
    sfdiskVerify(ours.path);
    const t = sfdiskJson(ours.path);
    expect(t.partitions.map((p: any) => [p.node.replace(/.*img/, ''), p.start, p.size, p.type])).toEqual([
      ['1', 2048, 65536, 'c'],
      ['2', 67584, 204800, '83'],
      ['3', 272384, 204800, '83'],
      ['4', extStart, extEnd - extStart + 1, 'f'],
      ['5', 479232, 102400, '83'],
      ['6', 583680, 40960, '82'],
      ['7', 18874368, 1048576, '83'],
    ]);
    const dump = runTool('sfdisk', ['--dump', ours.path]).stdout;
    expect(dump).toMatch(/logical\.img7 : start= +18874368, size= +1048576, type=83/);
    const fdisk = runTool('fdisk', ['-l', ours.path]);
    expect(fdisk.stdout).toMatch(/logical\.img4 +\d+ +\d+ +\d+ +[\d.]+G +f W95 Ext'd \(LBA\)/);
    expect(fdisk.stdout).toMatch(/logical\.img6 +583680 +624639 +40960 +20M 82 Linux swap/);
  });

  it('is read back by readPartitionTable, without the extended container', () => {
    const t = readPartitionTable(ours.path);
    expect(t.partitions.map((p) => [p.index, p.type, p.start / 512, p.size / 512])).toEqual([
      [1, '0c', 2048, 65536],
      [2, '83', 67584, 204800],
      [3, '83', 272384, 204800],
      [5, '83', 479232, 102400],
      [6, '82', 583680, 40960],
      [7, '83', 18874368, 1048576],
    ]);
  });
});

describe('buildMbr with tightly packed logical partitions', () => {
  it('puts an EBR in a one-sector gap, and sfdisk accepts it', () => {
    const ours = writeOurs('tight.img', 64 * MiB, [
      { type: MBR_TYPE.fat32Lba, firstLba: 8, sectors: 4088 },
      { type: MBR_TYPE.linux, firstLba: 4104, sectors: 4095, logical: true },
      { type: MBR_TYPE.linux, firstLba: 8200, sectors: 100, logical: true },
    ], 8).path;
    sfdiskVerify(ours);
    const t = sfdiskJson(ours);
    expect(t.partitions.map((p: any) => [p.start, p.size])).toEqual([[8, 4088], [4096, 4204], [4104, 4095], [8200, 100]]);
  });
});

describe('buildMbr rejects bad input', () => {
  const diskSize = 64 * MiB;
  const p = (firstLba: number, sectors: number, extra: Partial<MbrPartitionSpec> = {}): MbrPartitionSpec => ({ type: 0x83, firstLba, sectors, ...extra });
  const reject = (partitions: MbrPartitionSpec[], message: RegExp, size = diskSize) => {
    expect(() => buildMbr({ diskSize: size, diskSignature: 1, partitions })).toThrow(message);
    expect(() => buildMbr({ diskSize: size, diskSignature: 1, partitions })).toThrow(EdgekitError);
  };
  it('too many primaries', () => {
    reject([p(2048, 10), p(4096, 10), p(6144, 10), p(8192, 10), p(10240, 10)], /5 primary partitions; at most 4/);
    reject([p(2048, 10), p(4096, 10), p(6144, 10), p(8192, 10), p(12288, 10, { logical: true })], /at most 3 beside an extended/);
  });
  it('overlaps', () => {
    reject([p(2048, 4096), p(4096, 10)], /partition 2 \(sectors 4096-4105\) overlaps partition 1/);
    reject([p(2048, 1000), p(8192, 2048, { logical: true }), p(10240, 10, { logical: true })], /no room for its EBR/);
    reject([p(6144, 100000), p(4096, 10, { logical: true }), p(120000 - (120000 % 2048), 10, { logical: true })], /extended partition.*overlaps|overlaps the extended/);
  });
  it('out of range and misaligned', () => {
    reject([p(2048, diskSize / 512)], /past the end of the 131072-sector disk/);
    reject([p(2050, 10)], /not aligned to 2048 sectors/);
    reject([p(2048, 10)], /not a positive multiple of 512/, diskSize - 1);
    reject([p(0, 10)], /must be an integer >= 1/);
  });
  it('extended types and bad bytes', () => {
    reject([p(2048, 10, { type: 0x05 })], /extended partition; mark partitions logical/);
    reject([p(2048, 10, { type: 256 })], /not a byte/);
    expect(() => buildMbr({ diskSize, diskSignature: 2 ** 32, partitions: [] })).toThrow(/disk signature/);
  });
});
