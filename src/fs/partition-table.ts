/**
 * Reads the partition table of a disk image or device: GPT (with CRC checks of both headers
 * and entry arrays) or MBR (following the EBR chain of an extended partition).
 */
import { openSync, closeSync, readSync } from 'node:fs';
import { EdgekitError } from '../util/errors.js';
import { crc32 } from '../util/crc32.js';
import { readGuid } from './guid.js';
import { SECTOR, MBR_ENTRY_OFFSET, MBR_TYPE, isExtendedType } from './mbr.js';
import { GPT_SIGNATURE, GPT_HEADER_SIZE } from './gpt.js';

export interface PartitionInfo {
  /** 1-based: the GPT entry number, or the MBR partition number (logical ones from 5). */
  index: number;
  /** GPT partition name. */
  name?: string;
  /** GPT: the type GUID (upper case); MBR: the type byte as two hex digits ('0c'). */
  type: string;
  /** GPT: the unique partition GUID; MBR: the PARTUUID Linux derives ('<signature>-<nn>'). */
  uuid?: string;
  bootable?: boolean;
  /** GPT attribute bits as a hex string ('0x...'). */
  attributes?: string;
  /** Bytes from the start of the disk. */
  start: number;
  size: number;
}

export interface PartitionTable {
  scheme: 'gpt' | 'mbr';
  diskGuid?: string;
  /** MBR disk signature as 8 hex digits. */
  diskSignature?: string;
  partitions: PartitionInfo[];
}

class Disk {
  constructor(readonly fd: number, readonly name: string) {}
  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) throw new EdgekitError(`${this.name}: ends before byte ${offset + length} (reading the partition table)`);
      done += n;
    }
    return buf;
  }
}

/** `fd` is read, never closed; a path is opened and closed here. */
export function readPartitionTable(target: number | string): PartitionTable {
  if (typeof target === 'number') return readFrom(new Disk(target, `fd ${target}`));
  const fd = openSync(target, 'r');
  try {
    return readFrom(new Disk(fd, target));
  } finally {
    closeSync(fd);
  }
}

function readFrom(disk: Disk): PartitionTable {
  const mbr = disk.read(0, SECTOR);
  if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) throw new EdgekitError(`${disk.name}: no partition table (no boot signature in sector 0)`);
  const entries = [0, 1, 2, 3].map((i) => mbrEntry(mbr, i));
  if (entries.some((e) => e.type === MBR_TYPE.gptProtective)) return readGpt(disk);
  return readMbr(disk, mbr);
}

interface RawMbrEntry {
  bootable: boolean;
  type: number;
  firstLba: number;
  sectors: number;
}

function mbrEntry(sector: Buffer, i: number): RawMbrEntry {
  const o = MBR_ENTRY_OFFSET + i * 16;
  return {
    bootable: (sector[o] & 0x80) !== 0,
    type: sector[o + 4],
    firstLba: sector.readUInt32LE(o + 8),
    sectors: sector.readUInt32LE(o + 12),
  };
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function readMbr(disk: Disk, mbr: Buffer): PartitionTable {
  const signature = mbr.readUInt32LE(440).toString(16).padStart(8, '0');
  const partitions: PartitionInfo[] = [];
  const add = (index: number, e: RawMbrEntry, firstLba: number) =>
    partitions.push({
      index,
      type: hex2(e.type),
      uuid: `${signature}-${hex2(index)}`,
      bootable: e.bootable,
      start: firstLba * SECTOR,
      size: e.sectors * SECTOR,
    });

  let extended: RawMbrEntry | undefined;
  for (let i = 0; i < 4; i++) {
    const e = mbrEntry(mbr, i);
    if (e.type === 0 || e.sectors === 0) continue;
    if (isExtendedType(e.type)) {
      if (extended) throw new EdgekitError(`${disk.name}: MBR has more than one extended partition`);
      extended = e;
      continue;
    }
    add(i + 1, e, e.firstLba);
  }
  if (extended) {
    // Logical partitions: each EBR's first entry is relative to the EBR, its second entry
    // (the next EBR) is relative to the start of the extended partition.
    const extStart = extended.firstLba;
    const seen = new Set<number>();
    let ebrLba = extStart;
    for (let index = 5; ; index++) {
      if (seen.has(ebrLba)) throw new EdgekitError(`${disk.name}: EBR chain loops at sector ${ebrLba}`);
      if (seen.size >= 1024) throw new EdgekitError(`${disk.name}: EBR chain longer than 1024 entries`);
      seen.add(ebrLba);
      const ebr = disk.read(ebrLba * SECTOR, SECTOR);
      if (ebr[510] !== 0x55 || ebr[511] !== 0xaa) throw new EdgekitError(`${disk.name}: EBR at sector ${ebrLba} has no boot signature`);
      const logical = mbrEntry(ebr, 0);
      if (logical.type !== 0 && logical.sectors !== 0) add(index, logical, ebrLba + logical.firstLba);
      const link = mbrEntry(ebr, 1);
      if (link.type === 0 || link.sectors === 0) break;
      if (!isExtendedType(link.type)) throw new EdgekitError(`${disk.name}: EBR at sector ${ebrLba} links with type 0x${hex2(link.type)}`);
      ebrLba = extStart + link.firstLba;
    }
  }
  return { scheme: 'mbr', diskSignature: signature, partitions };
}

interface GptHeader {
  currentLba: bigint;
  backupLba: bigint;
  diskGuid: string;
  entriesLba: bigint;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

function parseGptHeader(disk: Disk, lba: bigint, which: string): GptHeader {
  const sector = disk.read(Number(lba) * SECTOR, SECTOR);
  const where = `${disk.name}: ${which} GPT header (sector ${lba})`;
  if (sector.toString('latin1', 0, 8) !== GPT_SIGNATURE) throw new EdgekitError(`${where}: no "EFI PART" signature`);
  const size = sector.readUInt32LE(12);
  if (size < GPT_HEADER_SIZE || size > SECTOR) throw new EdgekitError(`${where}: header size ${size} is invalid`);
  const stored = sector.readUInt32LE(16);
  const copy = Buffer.from(sector.subarray(0, size));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) throw new EdgekitError(`${where}: header CRC32 mismatch`);
  const h: GptHeader = {
    currentLba: sector.readBigUInt64LE(24),
    backupLba: sector.readBigUInt64LE(32),
    diskGuid: readGuid(sector, 56),
    entriesLba: sector.readBigUInt64LE(72),
    entryCount: sector.readUInt32LE(80),
    entrySize: sector.readUInt32LE(84),
    entriesCrc: sector.readUInt32LE(88),
  };
  if (h.currentLba !== lba) throw new EdgekitError(`${where}: says it is at sector ${h.currentLba}`);
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.entryCount === 0 || h.entryCount * h.entrySize > 1 << 20) {
    throw new EdgekitError(`${where}: entry array of ${h.entryCount} x ${h.entrySize} bytes is invalid`);
  }
  return h;
}

function readGptEntries(disk: Disk, h: GptHeader, which: string): Buffer {
  const entries = disk.read(Number(h.entriesLba) * SECTOR, h.entryCount * h.entrySize);
  if (crc32(entries) !== h.entriesCrc) {
    throw new EdgekitError(`${disk.name}: ${which} GPT entry array (sector ${h.entriesLba}) CRC32 mismatch`);
  }
  return entries;
}

function readGpt(disk: Disk): PartitionTable {
  const primary = parseGptHeader(disk, 1n, 'primary');
  const entries = readGptEntries(disk, primary, 'primary');
  // The backup copy is what recovers a damaged disk; a broken one is corruption too.
  const backup = parseGptHeader(disk, primary.backupLba, 'backup');
  const backupEntries = readGptEntries(disk, backup, 'backup');
  if (backup.diskGuid !== primary.diskGuid || !backupEntries.equals(entries)) {
    throw new EdgekitError(`${disk.name}: backup GPT (sector ${primary.backupLba}) differs from the primary`);
  }

  const partitions: PartitionInfo[] = [];
  for (let i = 0; i < primary.entryCount; i++) {
    const o = i * primary.entrySize;
    const type = readGuid(entries, o);
    if (/^[0-]+$/.test(type)) continue;
    const firstLba = entries.readBigUInt64LE(o + 32);
    const lastLba = entries.readBigUInt64LE(o + 40);
    if (lastLba < firstLba) throw new EdgekitError(`${disk.name}: GPT entry ${i + 1} ends before it starts`);
    const nameRaw = entries.toString('utf16le', o + 56, o + 128);
    const nul = nameRaw.indexOf('\0');
    partitions.push({
      index: i + 1,
      name: nul < 0 ? nameRaw : nameRaw.slice(0, nul),
      type,
      uuid: readGuid(entries, o + 16),
      attributes: '0x' + entries.readBigUInt64LE(o + 48).toString(16).padStart(16, '0'),
      start: Number(firstLba) * SECTOR,
      size: Number(lastLba - firstLba + 1n) * SECTOR,
    });
  }
  return { scheme: 'gpt', diskGuid: primary.diskGuid, partitions };
}
