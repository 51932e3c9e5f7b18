/**
 * MBR (DOS) partition tables: up to four primary partitions, or three primaries plus an extended
 * partition whose EBR chain holds logical partitions, laid out the way fdisk and sfdisk read them.
 *
 * EBRs are placed where sfdisk puts them: the first one (where the extended partition starts)
 * `alignment` sectors before the first logical partition, each later one `alignment` sectors
 * before its partition, or right after the previous logical partition when the gap is smaller.
 * So the first logical partition needs `alignment` free sectors in front of it and each later one
 * at least one. The extended partition runs from the first EBR to
 * the end of the last logical partition.
 */
import { EdgekitError } from '../util/errors.js';

export const SECTOR = 512;

export const MBR_TYPE = {
  fat12: 0x01,
  fat16: 0x06,
  fat32Chs: 0x0b,
  /** FAT32 addressed by LBA: what Raspberry Pi boot partitions use. */
  fat32Lba: 0x0c,
  fat16Lba: 0x0e,
  extendedChs: 0x05,
  extendedLba: 0x0f,
  linuxSwap: 0x82,
  linux: 0x83,
  linuxExtended: 0x85,
  linuxLvm: 0x8e,
  gptProtective: 0xee,
  efiSystem: 0xef,
} as const;

const EXTENDED_TYPES = new Set<number>([MBR_TYPE.extendedChs, MBR_TYPE.extendedLba, MBR_TYPE.linuxExtended]);

export function isExtendedType(type: number): boolean {
  return EXTENDED_TYPES.has(type);
}

export interface MbrPartitionSpec {
  /** Partition type byte (MBR_TYPE). */
  type: number;
  firstLba: number;
  sectors: number;
  bootable?: boolean;
  /** Put this partition in the extended partition (numbered 5, 6, ... in order). */
  logical?: boolean;
}

export interface MbrOptions {
  diskSize: number;
  diskSignature: number;
  partitions: MbrPartitionSpec[];
  /** Every partition must start on a multiple of this many sectors; default 2048 (1 MiB). */
  alignment?: number;
}

export interface SectorWrite {
  offset: number;
  data: Buffer;
}

/**
 * CHS address of `lba` in the 255-head, 63-sector geometry fdisk uses for disks and images.
 * Past cylinder 1023 CHS cannot address the sector: the result is 1023/254/63 (fe ff ff), the
 * convention that tells readers to use the LBA fields.
 */
export function lbaToChs(lba: number): [number, number, number] {
  const heads = 255;
  const sectorsPerTrack = 63;
  const cylinder = Math.floor(lba / (heads * sectorsPerTrack));
  if (cylinder > 1023) return [0xfe, 0xff, 0xff];
  const head = Math.floor(lba / sectorsPerTrack) % heads;
  const sector = (lba % sectorsPerTrack) + 1;
  return [head, sector | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

/** One 16-byte partition entry at `offset` (446, 462, 478 or 494 in a boot record). */
export function writeMbrEntry(
  buf: Buffer,
  offset: number,
  e: { bootable?: boolean; type: number; firstLba: number; sectors: number },
): void {
  buf[offset] = e.bootable ? 0x80 : 0x00;
  Buffer.from(lbaToChs(e.firstLba)).copy(buf, offset + 1);
  buf[offset + 4] = e.type;
  Buffer.from(lbaToChs(e.firstLba + e.sectors - 1)).copy(buf, offset + 5);
  buf.writeUInt32LE(e.firstLba, offset + 8);
  buf.writeUInt32LE(e.sectors, offset + 12);
}

export const MBR_ENTRY_OFFSET = 446;

function emptyBootRecord(): Buffer {
  const buf = Buffer.alloc(SECTOR);
  buf[510] = 0x55;
  buf[511] = 0xaa;
  return buf;
}

interface Span {
  label: string;
  first: number;
  last: number;
}

function checkNoOverlap(spans: Span[]): void {
  const sorted = [...spans].sort((a, b) => a.first - b.first || a.last - b.last);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.first <= prev.last) {
      throw new EdgekitError(`MBR: ${cur.label} (sectors ${cur.first}-${cur.last}) overlaps ${prev.label} (sectors ${prev.first}-${prev.last})`);
    }
  }
}

function isUint(n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max;
}

/** The MBR sector plus one EBR sector per logical partition, each with its byte offset on disk. */
export function buildMbr(opts: MbrOptions): SectorWrite[] {
  const { diskSize, diskSignature, partitions } = opts;
  const alignment = opts.alignment ?? 2048;
  if (!Number.isInteger(diskSize) || diskSize <= 0 || diskSize % SECTOR !== 0) {
    throw new EdgekitError(`MBR: disk size ${diskSize} is not a positive multiple of ${SECTOR} bytes`);
  }
  if (!isUint(diskSignature, 0xffffffff)) throw new EdgekitError(`MBR: disk signature ${diskSignature} is not a 32-bit unsigned number`);
  if (!Number.isInteger(alignment) || alignment < 1) throw new EdgekitError(`MBR: alignment ${alignment} is not a positive number of sectors`);
  const diskSectors = diskSize / SECTOR;

  const primaries: Array<{ spec: MbrPartitionSpec; label: string }> = [];
  const logicals: Array<{ spec: MbrPartitionSpec; label: string }> = [];
  partitions.forEach((spec, i) => {
    const label = `partition ${i + 1}${spec.logical ? ' (logical)' : ''}`;
    if (!isUint(spec.type, 0xff) || spec.type === 0) throw new EdgekitError(`MBR ${label}: type ${spec.type} is not a byte 0x01-0xff`);
    if (isExtendedType(spec.type)) {
      throw new EdgekitError(`MBR ${label}: type 0x${spec.type.toString(16)} is an extended partition; mark partitions logical instead`);
    }
    if (!Number.isInteger(spec.firstLba) || spec.firstLba < 1) throw new EdgekitError(`MBR ${label}: first sector ${spec.firstLba} must be an integer >= 1`);
    if (!Number.isInteger(spec.sectors) || spec.sectors < 1) throw new EdgekitError(`MBR ${label}: size ${spec.sectors} sectors must be an integer >= 1`);
    if (spec.firstLba % alignment !== 0) throw new EdgekitError(`MBR ${label}: first sector ${spec.firstLba} is not aligned to ${alignment} sectors`);
    const last = spec.firstLba + spec.sectors - 1;
    if (last >= diskSectors) throw new EdgekitError(`MBR ${label}: ends at sector ${last}, past the end of the ${diskSectors}-sector disk`);
    if (last > 0xffffffff) throw new EdgekitError(`MBR ${label}: ends at sector ${last}, beyond what MBR can address (2 TiB)`);
    (spec.logical ? logicals : primaries).push({ spec, label });
  });
  const maxPrimaries = logicals.length > 0 ? 3 : 4;
  if (primaries.length > maxPrimaries) {
    throw new EdgekitError(`MBR: ${primaries.length} primary partitions; at most ${maxPrimaries}${logicals.length ? ' beside an extended partition' : ''}`);
  }
  for (let i = 1; i < logicals.length; i++) {
    if (logicals[i].spec.firstLba <= logicals[i - 1].spec.firstLba) {
      throw new EdgekitError(`MBR ${logicals[i].label}: logical partitions must be listed in disk order`);
    }
  }

  const spans: Span[] = primaries.map(({ spec, label }) => ({ label, first: spec.firstLba, last: spec.firstLba + spec.sectors - 1 }));
  for (const { spec, label } of logicals) {
    spans.push({ label, first: spec.firstLba, last: spec.firstLba + spec.sectors - 1 });
  }
  const ebrLbas = logicals.map(({ spec }, i) => {
    if (i === 0) return spec.firstLba - alignment;
    const prev = logicals[i - 1].spec;
    return Math.max(prev.firstLba + prev.sectors, spec.firstLba - alignment);
  });
  logicals.forEach(({ spec, label }, i) => {
    if (ebrLbas[i] < 1 || ebrLbas[i] >= spec.firstLba) {
      throw new EdgekitError(`MBR ${label}: no room for its EBR at sector ${ebrLbas[i]}, before its first sector ${spec.firstLba}`);
    }
    spans.push({ label: `the EBR of ${label}`, first: ebrLbas[i], last: ebrLbas[i] });
  });
  spans.push({ label: 'the MBR', first: 0, last: 0 });
  checkNoOverlap(spans);

  const mbr = emptyBootRecord();
  mbr.writeUInt32LE(diskSignature, 440);
  primaries.forEach(({ spec }, slot) => writeMbrEntry(mbr, MBR_ENTRY_OFFSET + slot * 16, spec));
  const writes: SectorWrite[] = [{ offset: 0, data: mbr }];
  if (logicals.length === 0) return writes;

  const extStart = ebrLbas[0];
  const lastLogical = logicals[logicals.length - 1].spec;
  const extEnd = lastLogical.firstLba + lastLogical.sectors - 1;
  // The extended partition spans all logical partitions; a primary inside that span would be
  // claimed by both, which the overlap check above does not see.
  checkNoOverlap([
    ...primaries.map(({ spec, label }) => ({ label, first: spec.firstLba, last: spec.firstLba + spec.sectors - 1 })),
    { label: 'the extended partition', first: extStart, last: extEnd },
  ]);
  writeMbrEntry(mbr, MBR_ENTRY_OFFSET + primaries.length * 16, {
    type: MBR_TYPE.extendedLba,
    firstLba: extStart,
    sectors: extEnd - extStart + 1,
  });

  logicals.forEach(({ spec }, i) => {
    const ebrLba = ebrLbas[i];
    const ebr = emptyBootRecord();
    // Entry 1: the logical partition, relative to its own EBR; CHS fields stay absolute.
    writeMbrEntry(ebr, MBR_ENTRY_OFFSET, { ...spec, firstLba: spec.firstLba });
    ebr.writeUInt32LE(spec.firstLba - ebrLba, MBR_ENTRY_OFFSET + 8);
    const next = logicals[i + 1]?.spec;
    if (next) {
      // Entry 2: the next EBR, relative to the start of the extended partition.
      const nextEbr = ebrLbas[i + 1];
      const nextSectors = next.firstLba + next.sectors - nextEbr;
      writeMbrEntry(ebr, MBR_ENTRY_OFFSET + 16, { type: MBR_TYPE.extendedChs, firstLba: nextEbr, sectors: nextSectors });
      ebr.writeUInt32LE(nextEbr - extStart, MBR_ENTRY_OFFSET + 16 + 8);
    }
    writes.push({ offset: ebrLba * SECTOR, data: ebr });
  });
  return writes;
}
