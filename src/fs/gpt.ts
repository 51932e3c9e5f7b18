/**
 * GUID partition tables (UEFI spec, chapter 5) with 512-byte sectors: a protective MBR, the
 * primary header and a 128-entry array at the start of the disk, and the same array plus a
 * backup header in the last 33 sectors.
 */
import { EdgekitError } from '../util/errors.js';
import { crc32 } from '../util/crc32.js';
import { writeGuid, isGuid } from './guid.js';
import { SECTOR, MBR_ENTRY_OFFSET, MBR_TYPE, writeMbrEntry } from './mbr.js';

export const GPT_ENTRY_COUNT = 128;
export const GPT_ENTRY_SIZE = 128;
export const GPT_HEADER_SIZE = 92;
export const GPT_SIGNATURE = 'EFI PART';
export const GPT_REVISION = 0x00010000;
/** Sectors the entry array takes (128 x 128 bytes = 32 sectors). */
export const GPT_ENTRY_SECTORS = (GPT_ENTRY_COUNT * GPT_ENTRY_SIZE) / SECTOR;
/** First sector a partition may use: after the protective MBR, header and entries. */
export const GPT_FIRST_USABLE_LBA = 2 + GPT_ENTRY_SECTORS;
/** Longest partition name, in UTF-16 code units. */
export const GPT_NAME_UNITS = 36;

/**
 * Partition type GUIDs. The Linux ones follow the Discoverable Partitions Specification, which
 * systemd-gpt-auto-generator and systemd-repart use to find root, /usr and their verity data.
 */
export const GPT_TYPE = {
  efiSystem: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  biosBoot: '21686148-6449-6E6F-744E-656564454649',
  microsoftBasicData: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  linuxFilesystem: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  linuxSwap: '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
  linuxHome: '933AC7E1-2EB4-4F13-B844-0E14E2AEF915',
  linuxServerData: '3B8F8425-20E0-4F3B-907F-1A25A76F98E8',
  linuxVariableData: '4D21B016-B534-45C2-A9FB-5C16E091FD2D',
  /** XBOOTLDR: systemd-boot's extended boot loader partition. */
  linuxExtendedBoot: 'BC13C2FF-59E6-4262-A352-B275FD6F7172',
  linuxRootX86_64: '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
  linuxRootArm64: 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE',
  linuxRootArm: '69DAD710-2CE4-4E3C-B16C-21A1D49ABED3',
  linuxRootVerityX86_64: '2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5',
  linuxRootVerityArm64: 'DF3300CE-D69F-4C92-978C-9BFB0F38D820',
  linuxRootVerityArm: '7386CDF2-203C-47A9-A498-F2ECCE45A2D6',
  linuxRootVeritySigX86_64: '41092B05-9FC8-4523-994F-2DEF0408B176',
  linuxRootVeritySigArm64: '6DB69DE6-29F4-4758-A7A5-962190F00CE3',
  linuxUsrX86_64: '8484680C-9521-48C6-9C11-B0720656F69E',
  linuxUsrArm64: 'B0E01050-EE5F-4390-949A-9101B17104E9',
} as const;

/** Partition attribute bits (UEFI spec, plus the Discoverable Partitions Specification's). */
export const GPT_ATTR = {
  requiredPartition: 1n << 0n,
  noBlockIoProtocol: 1n << 1n,
  legacyBiosBootable: 1n << 2n,
  /** Discoverable partitions: grow the filesystem to the partition on first boot. */
  growFs: 1n << 59n,
  readOnly: 1n << 60n,
  noAuto: 1n << 63n,
} as const;

export interface GptPartitionSpec {
  name: string;
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  lastLba: number;
  attributes?: bigint;
}

export interface GptOptions {
  /** Bytes; a multiple of 512. */
  diskSize: number;
  diskGuid: string;
  partitions: GptPartitionSpec[];
  /** Every partition must start on a multiple of this many sectors; default 2048 (1 MiB). */
  alignment?: number;
}

export interface GptImage {
  /** Sectors 0..33: protective MBR, primary header, entry array. Written at offset 0. */
  primary: Buffer;
  /** The entry array and the backup header: the last 33 sectors of the disk. */
  backup: Buffer;
  /** Byte offset where `backup` goes. */
  backupOffset: number;
}

function validate(opts: GptOptions): { diskSectors: number; lastUsable: number } {
  const { diskSize, diskGuid, partitions } = opts;
  const alignment = opts.alignment ?? 2048;
  if (!Number.isInteger(diskSize) || diskSize <= 0 || diskSize % SECTOR !== 0) {
    throw new EdgekitError(`GPT: disk size ${diskSize} is not a positive multiple of ${SECTOR} bytes`);
  }
  if (!Number.isInteger(alignment) || alignment < 1) throw new EdgekitError(`GPT: alignment ${alignment} is not a positive number of sectors`);
  const diskSectors = diskSize / SECTOR;
  const lastUsable = diskSectors - 1 - GPT_ENTRY_SECTORS - 1;
  if (lastUsable < GPT_FIRST_USABLE_LBA) throw new EdgekitError(`GPT: disk size ${diskSize} is too small for a GPT`);
  if (!isGuid(diskGuid)) throw new EdgekitError(`GPT: disk GUID is not a GUID: "${diskGuid}"`);
  if (partitions.length > GPT_ENTRY_COUNT) throw new EdgekitError(`GPT: ${partitions.length} partitions; at most ${GPT_ENTRY_COUNT}`);

  const seenUuids = new Map<string, number>();
  partitions.forEach((p, i) => {
    const label = `GPT partition ${i + 1} "${p.name}"`;
    if (!isGuid(p.typeGuid)) throw new EdgekitError(`${label}: type is not a GUID: "${p.typeGuid}"`);
    if (!isGuid(p.uniqueGuid)) throw new EdgekitError(`${label}: unique GUID is not a GUID: "${p.uniqueGuid}"`);
    if (/^[0-]+$/.test(p.typeGuid)) throw new EdgekitError(`${label}: the all-zero type GUID marks an unused entry`);
    const other = seenUuids.get(p.uniqueGuid.toUpperCase());
    if (other !== undefined) throw new EdgekitError(`${label}: unique GUID ${p.uniqueGuid} is also used by partition ${other}`);
    seenUuids.set(p.uniqueGuid.toUpperCase(), i + 1);
    if (nameUnits(p.name) > GPT_NAME_UNITS) throw new EdgekitError(`${label}: name is longer than ${GPT_NAME_UNITS} UTF-16 code units`);
    if (!Number.isInteger(p.firstLba) || !Number.isInteger(p.lastLba)) throw new EdgekitError(`${label}: sectors must be integers`);
    if (p.lastLba < p.firstLba) throw new EdgekitError(`${label}: last sector ${p.lastLba} is before first sector ${p.firstLba}`);
    if (p.firstLba < GPT_FIRST_USABLE_LBA || p.lastLba > lastUsable) {
      throw new EdgekitError(`${label}: sectors ${p.firstLba}-${p.lastLba} are outside the usable range ${GPT_FIRST_USABLE_LBA}-${lastUsable}`);
    }
    if (p.firstLba % alignment !== 0) throw new EdgekitError(`${label}: first sector ${p.firstLba} is not aligned to ${alignment} sectors`);
    const attrs = p.attributes ?? 0n;
    if (attrs < 0n || attrs >= 1n << 64n) throw new EdgekitError(`${label}: attributes do not fit in 64 bits`);
  });
  const sorted = partitions.map((p, i) => ({ p, n: i + 1 })).sort((a, b) => a.p.firstLba - b.p.firstLba);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.p.firstLba <= prev.p.lastLba) {
      throw new EdgekitError(
        `GPT partition ${cur.n} "${cur.p.name}" (sectors ${cur.p.firstLba}-${cur.p.lastLba}) overlaps partition ${prev.n} "${prev.p.name}" (sectors ${prev.p.firstLba}-${prev.p.lastLba})`,
      );
    }
  }
  return { diskSectors, lastUsable };
}

function nameUnits(name: string): number {
  return name.length; // JS strings are UTF-16: length counts code units
}

function entryArray(partitions: GptPartitionSpec[]): Buffer {
  const buf = Buffer.alloc(GPT_ENTRY_COUNT * GPT_ENTRY_SIZE);
  partitions.forEach((p, i) => {
    const o = i * GPT_ENTRY_SIZE;
    writeGuid(buf, o, p.typeGuid, `GPT partition ${i + 1} type`);
    writeGuid(buf, o + 16, p.uniqueGuid, `GPT partition ${i + 1} unique GUID`);
    buf.writeBigUInt64LE(BigInt(p.firstLba), o + 32);
    buf.writeBigUInt64LE(BigInt(p.lastLba), o + 40);
    buf.writeBigUInt64LE(p.attributes ?? 0n, o + 48);
    buf.write(p.name, o + 56, GPT_NAME_UNITS * 2, 'utf16le');
  });
  return buf;
}

function header(f: {
  currentLba: number;
  backupLba: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  entriesCrc: number;
}): Buffer {
  const buf = Buffer.alloc(SECTOR);
  buf.write(GPT_SIGNATURE, 0, 'latin1');
  buf.writeUInt32LE(GPT_REVISION, 8);
  buf.writeUInt32LE(GPT_HEADER_SIZE, 12);
  buf.writeBigUInt64LE(BigInt(f.currentLba), 24);
  buf.writeBigUInt64LE(BigInt(f.backupLba), 32);
  buf.writeBigUInt64LE(BigInt(GPT_FIRST_USABLE_LBA), 40);
  buf.writeBigUInt64LE(BigInt(f.lastUsable), 48);
  writeGuid(buf, 56, f.diskGuid, 'GPT disk GUID');
  buf.writeBigUInt64LE(BigInt(f.entriesLba), 72);
  buf.writeUInt32LE(GPT_ENTRY_COUNT, 80);
  buf.writeUInt32LE(GPT_ENTRY_SIZE, 84);
  buf.writeUInt32LE(f.entriesCrc, 88);
  // The header CRC is computed with its own field zero, which Buffer.alloc left it.
  buf.writeUInt32LE(crc32(buf.subarray(0, GPT_HEADER_SIZE)), 16);
  return buf;
}

/** A protective MBR: one 0xEE partition covering the disk (capped at 2^32-1 sectors). */
function protectiveMbr(diskSectors: number): Buffer {
  const buf = Buffer.alloc(SECTOR);
  writeMbrEntry(buf, MBR_ENTRY_OFFSET, {
    type: MBR_TYPE.gptProtective,
    firstLba: 1,
    sectors: Math.min(diskSectors - 1, 0xffffffff),
  });
  buf[510] = 0x55;
  buf[511] = 0xaa;
  return buf;
}

export function buildGpt(opts: GptOptions): GptImage {
  const { diskSectors, lastUsable } = validate(opts);
  const entries = entryArray(opts.partitions);
  const entriesCrc = crc32(entries);
  const backupLba = diskSectors - 1;
  const backupEntriesLba = backupLba - GPT_ENTRY_SECTORS;
  const common = { lastUsable, diskGuid: opts.diskGuid, entriesCrc };

  const primary = Buffer.concat([
    protectiveMbr(diskSectors),
    header({ ...common, currentLba: 1, backupLba, entriesLba: 2 }),
    entries,
  ]);
  const backup = Buffer.concat([entries, header({ ...common, currentLba: backupLba, backupLba: 1, entriesLba: backupEntriesLba })]);
  return { primary, backup, backupOffset: backupEntriesLba * SECTOR };
}
