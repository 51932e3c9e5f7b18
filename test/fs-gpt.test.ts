import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { openSync, writeSync, readSync, closeSync } from 'node:fs';
import { buildGpt, GPT_TYPE, GPT_ATTR, type GptPartitionSpec } from '../src/fs/gpt.js';
import { readPartitionTable } from '../src/fs/partition-table.js';
import { EdgekitError } from '../src/util/errors.js';
import { makeTempDir, writeSparseImage, runTool } from './helpers/fs-image-tools.js';

const tmp = makeTempDir('gpt');
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;
const DISK_GUID = '1B4E28BA-2FA1-11D2-883F-B9A761BDE3FB';
const partitions: GptPartitionSpec[] = [
  { name: 'ESP', typeGuid: GPT_TYPE.efiSystem, uniqueGuid: '0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9', firstLba: 2048, lastLba: 2048 + 32768 - 1 },
  { name: 'root-a', typeGuid: GPT_TYPE.linuxRootX86_64, uniqueGuid: '11111111-2222-4333-8444-555555555555', firstLba: 36864, lastLba: 36864 + 65536 - 1, attributes: GPT_ATTR.readOnly },
  { name: 'root-a-verity', typeGuid: GPT_TYPE.linuxRootVerityX86_64, uniqueGuid: 'AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE', firstLba: 104448, lastLba: 104448 + 4095 },
  { name: 'données ü', typeGuid: GPT_TYPE.linuxVariableData, uniqueGuid: 'deadbeef-0001-4002-8003-000000000004', firstLba: 110592, lastLba: 110592 + 79872 - 1, attributes: GPT_ATTR.noAuto | GPT_ATTR.requiredPartition },
];
const diskSize = 100 * MiB;

function writeGpt(name: string, size: number, parts: GptPartitionSpec[]): string {
  const g = buildGpt({ diskSize: size, diskGuid: DISK_GUID, partitions: parts });
  const path = join(tmp.dir, name);
  writeSparseImage(path, size, [
    { offset: 0, data: g.primary },
    { offset: g.backupOffset, data: g.backup },
  ]);
  return path;
}

function sgdiskVerify(path: string): string {
  const r = runTool('sgdisk', ['-v', path]);
  return r.stdout + r.stderr;
}

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, offset);
  b[0] ^= 0xff;
  writeSync(fd, b, 0, 1, offset);
  closeSync(fd);
}

describe('buildGpt', () => {
  const img = writeGpt('disk.img', diskSize, partitions);

  it('lays out primary and backup where the spec puts them', () => {
    const g = buildGpt({ diskSize, diskGuid: DISK_GUID, partitions });
    expect(g.primary.length).toBe(34 * 512);
    expect(g.backup.length).toBe(33 * 512);
    expect(g.backupOffset + g.backup.length).toBe(diskSize);
  });

  it('passes sgdisk -v', () => {
    const out = sgdiskVerify(img);
    expect(out).toMatch(/No problems found/);
    expect(out).not.toMatch(/Problem:|Warning|Caution|corrupt/i);
  });

  it('reads back identically with sfdisk --json', () => {
    const r = runTool('sfdisk', ['--json', img]);
    expect(r.status).toBe(0);
    const t = JSON.parse(r.stdout).partitiontable;
    expect(t.label).toBe('gpt');
    expect(t.id).toBe(DISK_GUID);
    expect(t.sectorsize).toBe(512);
    expect(t.firstlba).toBe(34);
    expect(t.lastlba).toBe(diskSize / 512 - 34);
    expect(t.partitions).toHaveLength(partitions.length);
    partitions.forEach((p, i) => {
      const s = t.partitions[i];
      expect(s.start).toBe(p.firstLba);
      expect(s.size).toBe(p.lastLba - p.firstLba + 1);
      expect(s.type).toBe(p.typeGuid.toUpperCase());
      expect(s.uuid).toBe(p.uniqueGuid.toUpperCase());
      expect(s.name).toBe(p.name);
    });
    expect(t.partitions[1].attrs).toBe('GUID:60');
    expect(t.partitions[3].attrs).toBe('RequiredPartition GUID:63');
  });

  it('shows attributes and names with sgdisk -i and fdisk -l', () => {
    const info = runTool('sgdisk', ['-i', '4', img]).stdout;
    expect(info).toMatch(/Attribute flags: 8000000000000001/);
    expect(info).toMatch(/Partition unique GUID: DEADBEEF-0001-4002-8003-000000000004/);
    const fdisk = runTool('fdisk', ['-l', img]);
    expect(fdisk.status).toBe(0);
    expect(fdisk.stdout).toMatch(/Disklabel type: gpt/);
    expect(fdisk.stdout).toContain(`Disk identifier: ${DISK_GUID}`);
    expect(fdisk.stdout).toMatch(/EFI System/);
    expect(fdisk.stdout).toMatch(/Linux root verity \(x86-64\)/);
    expect(fdisk.stderr).not.toMatch(/corrupt|invalid/i);
  });

  it('is read back by readPartitionTable', () => {
    const t = readPartitionTable(img);
    expect(t.scheme).toBe('gpt');
    expect(t.diskGuid).toBe(DISK_GUID);
    expect(t.partitions.map((p) => ({ index: p.index, name: p.name, type: p.type, uuid: p.uuid, start: p.start, size: p.size }))).toEqual(
      partitions.map((p, i) => ({
        index: i + 1,
        name: p.name,
        type: p.typeGuid.toUpperCase(),
        uuid: p.uniqueGuid.toUpperCase(),
        start: p.firstLba * 512,
        size: (p.lastLba - p.firstLba + 1) * 512,
      })),
    );
    const fd = openSync(img, 'r');
    try {
      expect(readPartitionTable(fd).partitions).toHaveLength(4);
    } finally {
      closeSync(fd);
    }
  });

  it('is byte-for-byte reproducible', () => {
    const a = buildGpt({ diskSize, diskGuid: DISK_GUID, partitions });
    const b = buildGpt({ diskSize, diskGuid: DISK_GUID, partitions: partitions.map((p) => ({ ...p })) });
    expect(a.primary.equals(b.primary)).toBe(true);
    expect(a.backup.equals(b.backup)).toBe(true);
  });

  it('detects corruption of each structure, as sgdisk does', () => {
    const cases: Array<[string, number, RegExp]> = [
      ['primary-header', 512 + 40, /primary GPT header.*CRC32/],
      ['primary-entries', 1024 + 128 + 60, /primary GPT entry array.*CRC32/],
      ['backup-entries', diskSize - 33 * 512 + 5, /backup GPT entry array.*CRC32/],
      ['backup-header', diskSize - 512 + 60, /backup GPT header.*CRC32/],
    ];
    for (const [name, offset, message] of cases) {
      const path = writeGpt(`corrupt-${name}.img`, diskSize, partitions);
      flipByte(path, offset);
      expect(() => readPartitionTable(path), name).toThrow(message);
      expect(() => readPartitionTable(path)).toThrow(EdgekitError);
      expect(sgdiskVerify(path), name).toMatch(/: ERROR|CRCs don't match|Problem:/);
    }
  });

  it('handles a disk larger than MBR can describe (3 TiB, sparse)', () => {
    const big = 3 * 1024 * 1024 * MiB;
    const last = big / 512 - 34;
    const path = writeGpt('big.img', big, [{ ...partitions[0], firstLba: 2048, lastLba: last }]);
    expect(sgdiskVerify(path)).toMatch(/No problems found/);
    const t = JSON.parse(runTool('sfdisk', ['--json', path]).stdout).partitiontable;
    expect(t.partitions[0].size).toBe(last - 2048 + 1);
    expect(readPartitionTable(path).partitions[0].size).toBe((last - 2048 + 1) * 512);
  });
});

describe('readPartitionTable on a GPT written by sfdisk', () => {
  it('agrees with sfdisk --json', () => {
    const path = join(tmp.dir, 'by-sfdisk.img');
    writeSparseImage(path, 64 * MiB, []);
    const script = ['label: gpt', '', 'size=8MiB, type=uefi, name="EFI system"', 'size=20MiB, type=linux, name=data', 'type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709', ''].join('\n');
    const r = runTool('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', path], script);
    expect(r.status, r.stderr).toBe(0);
    const ref = JSON.parse(runTool('sfdisk', ['--json', path]).stdout).partitiontable;
    const t = readPartitionTable(path);
    expect(t.diskGuid).toBe(ref.id);
    expect(t.partitions.map((p) => [p.start / 512, p.size / 512, p.type, p.uuid, p.name])).toEqual(
      ref.partitions.map((p: any) => [p.start, p.size, p.type, p.uuid, p.name ?? '']),
    );
  });
});

describe('GPT type constants', () => {
  it('match the GUIDs util-linux knows, under the expected names', () => {
    const list = runTool('sfdisk', ['--list-types', '--label', 'gpt']).stdout;
    const known = new Map<string, string>();
    for (const line of list.split('\n')) {
      const m = /^([0-9A-F-]{36})\s+(.*)$/.exec(line.trim());
      if (m) known.set(m[1], m[2]);
    }
    const expectedNames: Record<keyof typeof GPT_TYPE, RegExp> = {
      efiSystem: /^EFI System$/,
      biosBoot: /^BIOS boot$/,
      microsoftBasicData: /^Microsoft basic data$/,
      linuxFilesystem: /^Linux filesystem$/,
      linuxSwap: /^Linux swap$/,
      linuxHome: /^Linux home$/,
      linuxServerData: /^Linux server data$/,
      linuxVariableData: /^Linux variable data$/,
      linuxExtendedBoot: /^Linux extended boot$/,
      linuxRootX86_64: /^Linux root \(x86-64\)$/,
      linuxRootArm64: /^Linux root \(ARM-64\)$/,
      linuxRootArm: /^Linux root \(ARM\)$/,
      linuxRootVerityX86_64: /^Linux root verity \(x86-64\)$/,
      linuxRootVerityArm64: /^Linux root verity \(ARM-64\)$/,
      linuxRootVerityArm: /^Linux root verity \(ARM\)$/,
      linuxRootVeritySigX86_64: /^Linux root verity sign\. \(x86-64\)$/,
      linuxRootVeritySigArm64: /^Linux root verity sign\. \(ARM-64\)$/,
      linuxUsrX86_64: /^Linux \/usr \(x86-64\)$/,
      linuxUsrArm64: /^Linux \/usr \(ARM-64\)$/,
    };
    for (const [key, guid] of Object.entries(GPT_TYPE)) {
      expect(known.get(guid), key).toMatch(expectedNames[key as keyof typeof GPT_TYPE]);
    }
  });
});

describe('buildGpt rejects bad input', () => {
  const ok = partitions[0];
  const reject = (opts: Partial<Parameters<typeof buildGpt>[0]>, message: RegExp) => {
    expect(() => buildGpt({ diskSize, diskGuid: DISK_GUID, partitions: [ok], ...opts })).toThrow(message);
    expect(() => buildGpt({ diskSize, diskGuid: DISK_GUID, partitions: [ok], ...opts })).toThrow(EdgekitError);
  };
  it('overlaps', () => reject({ partitions: [{ ...ok, lastLba: 40000 }, partitions[1]] }, /partition 2 "root-a".*overlaps partition 1 "ESP"/));
  it('out of range', () => {
    reject({ partitions: [{ ...ok, lastLba: diskSize / 512 - 33 }] }, /outside the usable range/);
    reject({ partitions: [{ ...ok, firstLba: 0 }], alignment: 1 }, /outside the usable range/);
    reject({ partitions: [{ ...ok, lastLba: 100 }] }, /before first sector/);
  });
  it('misaligned', () => {
    reject({ partitions: [{ ...ok, firstLba: 2049 }] }, /not aligned to 2048 sectors/);
    reject({ diskSize: diskSize + 100 }, /not a positive multiple of 512/);
    expect(buildGpt({ diskSize, diskGuid: DISK_GUID, partitions: [{ ...ok, firstLba: 40 }], alignment: 8 }).primary.length).toBe(34 * 512);
  });
  it('bad GUIDs, names and duplicates', () => {
    reject({ diskGuid: 'not-a-guid' }, /disk GUID is not a GUID/);
    reject({ partitions: [{ ...ok, typeGuid: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93' }] }, /type is not a GUID/);
    reject({ partitions: [{ ...ok, name: 'x'.repeat(37) }] }, /longer than 36/);
    reject({ partitions: [ok, { ...partitions[1], uniqueGuid: ok.uniqueGuid.toUpperCase() }] }, /also used by partition 1/);
  });
});
