/**
 * Reads FAT12/16/32 filesystems inside an image file (at a byte offset, e.g. a partition's start):
 * lists entries with their VFAT long names and reads files. For `edgekit inspect` and the update
 * agent; it reads what mkfs.fat and mtools write as well as our own writer's output.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';
import { ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_VOLUME_ID, DIRENT_SIZE } from './fat-dirent.js';
import { lfnChars, shortNameChecksum } from './fat-names.js';
import { FAT16_MIN_CLUSTERS, FAT32_MIN_CLUSTERS } from './fat-geometry.js';

export type FatReaderType = 'fat12' | 'fat16' | 'fat32';

export interface FatDirEntryInfo {
  /** '/'-separated path from the root, no leading slash. */
  path: string;
  /** The long name if there is a valid one, else the short name (lower-cased as NT flags say). */
  name: string;
  /** The 8.3 name as stored ('CONFIG.TXT'). */
  shortName: string;
  isDir: boolean;
  size: number;
  firstCluster: number;
}

/** The BIOS parameter block of a FAT boot sector, checked for sanity. */
export interface Bpb {
  bytesPerSector: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  numFats: number;
  rootEntries: number;
  totalSectors: number;
  fatSectors: number;
  rootCluster: number;
  volumeId: number;
  bpbLabel: string;
}

export class FatReader {
  readonly fatType: FatReaderType;
  readonly clusterSize: number;
  readonly clusterCount: number;
  readonly volumeId: number;
  /** From the root directory's label entry, else from the boot sector; '' for none. */
  label = '';
  private fat: Buffer = Buffer.alloc(0);
  private readonly dataStart: number;
  private readonly rootDirStart: number;

  private constructor(
    private readonly fh: FileHandle,
    private readonly name: string,
    private readonly base: number,
    private readonly bpb: Bpb,
  ) {
    const rootDirSectors = Math.ceil((bpb.rootEntries * DIRENT_SIZE) / bpb.bytesPerSector);
    const dataSector = bpb.reservedSectors + bpb.numFats * bpb.fatSectors + rootDirSectors;
    this.clusterCount = Math.floor((bpb.totalSectors - dataSector) / bpb.sectorsPerCluster);
    // The cluster count alone decides the type (FAT spec, "FAT type determination").
    this.fatType = this.clusterCount < FAT16_MIN_CLUSTERS ? 'fat12' : this.clusterCount < FAT32_MIN_CLUSTERS ? 'fat16' : 'fat32';
    this.clusterSize = bpb.sectorsPerCluster * bpb.bytesPerSector;
    this.dataStart = dataSector * bpb.bytesPerSector;
    this.rootDirStart = (bpb.reservedSectors + bpb.numFats * bpb.fatSectors) * bpb.bytesPerSector;
    this.volumeId = bpb.volumeId;
  }

  /** Opens the FAT filesystem that starts `offset` bytes into `imagePath`. */
  static async open(imagePath: string, offset = 0): Promise<FatReader> {
    const fh = await open(imagePath, 'r');
    try {
      const name = offset ? `${imagePath} at byte ${offset}` : imagePath;
      const boot = await readExact(fh, offset, 512, name);
      const reader = new FatReader(fh, name, offset, parseBpb(boot, name));
      if (reader.fatType === 'fat32' && reader.bpb.rootEntries !== 0) throw new EdgekitError(`${name}: FAT32 boot sector with a fixed root directory`);
      if (reader.fatType !== 'fat32' && reader.bpb.rootEntries === 0) throw new EdgekitError(`${name}: FAT12/16 boot sector without a root directory`);
      const fatBytes = Math.min(reader.bpb.fatSectors * reader.bpb.bytesPerSector, Math.ceil(((reader.clusterCount + 2) * reader.entryBits()) / 8));
      reader.fat = await readExact(fh, offset + reader.bpb.reservedSectors * reader.bpb.bytesPerSector, fatBytes, name);
      reader.label = (await reader.rootLabel()) ?? reader.bpb.bpbLabel;
      return reader;
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** Every file and directory, parents before children, each directory's entries in disk order. */
  async list(): Promise<FatDirEntryInfo[]> {
    const out: FatDirEntryInfo[] = [];
    const walk = async (dirCluster: number | null, prefix: string, depth: number) => {
      if (depth > 64) throw new EdgekitError(`${this.name}: directories nested deeper than 64 levels at "${prefix}"`);
      for (const e of await this.readDir(dirCluster, prefix || '/')) {
        const path = prefix ? `${prefix}/${e.name}` : e.name;
        out.push({ ...e, path });
        if (e.isDir) await walk(e.firstCluster, path, depth + 1);
      }
    };
    await walk(null, '', 0);
    return out;
  }

  /** The entry at `path` (exact name first, then case-insensitively as FAT itself matches). */
  async stat(path: string): Promise<FatDirEntryInfo> {
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    let dir: number | null = null;
    let found: FatDirEntryInfo | undefined;
    let sofar = '';
    for (const part of parts) {
      if (found && !found.isDir) throw new EdgekitError(`${this.name}: "${sofar}" is not a directory`);
      const entries = await this.readDir(dir, sofar || '/');
      const e = entries.find((x) => x.name === part) ?? entries.find((x) => x.name.toLowerCase() === part.toLowerCase() || x.shortName === part.toUpperCase());
      sofar = sofar ? `${sofar}/${part}` : part;
      if (!e) throw new EdgekitError(`${this.name}: no "${sofar}" in the FAT filesystem`);
      found = { ...e, path: sofar };
      dir = e.firstCluster;
    }
    if (!found) throw new EdgekitError(`${this.name}: "${path}" names the root directory, not a file`);
    return found;
  }

  async readFile(path: string): Promise<Buffer> {
    const e = await this.stat(path);
    if (e.isDir) throw new EdgekitError(`${this.name}: "${path}" is a directory`);
    if (e.size === 0) return Buffer.alloc(0);
    const chain = this.chain(e.firstCluster, e.path);
    if (chain.length * this.clusterSize < e.size) {
      throw new EdgekitError(`${this.name}: "${e.path}" has ${chain.length} clusters, too few for ${e.size} bytes`);
    }
    const out = Buffer.alloc(e.size);
    let done = 0;
    // Read runs of consecutive clusters in one go: files are usually contiguous.
    for (let i = 0; i < chain.length && done < e.size; ) {
      let j = i + 1;
      while (j < chain.length && chain[j] === chain[j - 1] + 1) j++;
      const len = Math.min((j - i) * this.clusterSize, e.size - done);
      const data = await readExact(this.fh, this.base + this.clusterOffset(chain[i]), len, this.name);
      data.copy(out, done);
      done += len;
      i = j;
    }
    return out;
  }

  private entryBits(): number {
    return this.fatType === 'fat12' ? 12 : this.fatType === 'fat16' ? 16 : 32;
  }

  private clusterOffset(cluster: number): number {
    return this.dataStart + (cluster - 2) * this.clusterSize;
  }

  private next(cluster: number): number {
    switch (this.fatType) {
      case 'fat12': {
        const v = this.fat.readUInt16LE(Math.floor(cluster * 1.5));
        return cluster & 1 ? v >> 4 : v & 0xfff;
      }
      case 'fat16':
        return this.fat.readUInt16LE(cluster * 2);
      default:
        return this.fat.readUInt32LE(cluster * 4) & 0x0fffffff;
    }
  }

  /** Cluster numbers of a chain, checked for loops, free and out-of-range links. */
  private chain(first: number, what: string): number[] {
    const eocMin = this.fatType === 'fat12' ? 0xff8 : this.fatType === 'fat16' ? 0xfff8 : 0x0ffffff8;
    const out: number[] = [];
    let c = first;
    for (;;) {
      if (c < 2 || c >= this.clusterCount + 2) throw new EdgekitError(`${this.name}: "${what}" uses cluster ${c}, outside the volume`);
      if (out.length >= this.clusterCount) throw new EdgekitError(`${this.name}: "${what}" has a cluster chain that loops`);
      out.push(c);
      const n = this.next(c);
      if (n >= eocMin) return out;
      c = n;
    }
  }

  private async rawDir(cluster: number | null, what: string): Promise<Buffer> {
    if (cluster === null && this.fatType !== 'fat32') {
      return readExact(this.fh, this.base + this.rootDirStart, this.bpb.rootEntries * DIRENT_SIZE, this.name);
    }
    const chain = this.chain(cluster ?? this.bpb.rootCluster, what);
    const parts: Buffer[] = [];
    for (const c of chain) parts.push(await readExact(this.fh, this.base + this.clusterOffset(c), this.clusterSize, this.name));
    return Buffer.concat(parts);
  }

  private async rootLabel(): Promise<string | undefined> {
    const raw = await this.rawDir(null, '/');
    for (let o = 0; o < raw.length; o += DIRENT_SIZE) {
      if (raw[o] === 0) break;
      if (raw[o] === 0xe5) continue;
      const attr = raw[o + 11];
      if (attr !== ATTR_LONG_NAME && (attr & ATTR_VOLUME_ID) !== 0) return raw.toString('latin1', o, o + 11).trimEnd();
    }
    return undefined;
  }

  private async readDir(cluster: number | null, what: string): Promise<Omit<FatDirEntryInfo, 'path'>[]> {
    const raw = await this.rawDir(cluster, what);
    const out: Omit<FatDirEntryInfo, 'path'>[] = [];
    let lfn: { parts: string[]; checksum: number; expect: number } | undefined;
    for (let o = 0; o < raw.length; o += DIRENT_SIZE) {
      const first = raw[o];
      if (first === 0x00) break;
      if (first === 0xe5) {
        lfn = undefined;
        continue;
      }
      const attr = raw[o + 11];
      if (attr === ATTR_LONG_NAME) {
        const seq = first & 0x1f;
        const part = lfnChars(raw, o);
        if (first & 0x40) lfn = { parts: [], checksum: raw[o + 13], expect: seq };
        if (!lfn || seq !== lfn.expect || raw[o + 13] !== lfn.checksum) {
          lfn = undefined; // an orphaned or out-of-order fragment: fall back to the short name
          continue;
        }
        lfn.parts.unshift(part);
        lfn.expect = seq - 1;
        continue;
      }
      const short = raw.subarray(o, o + 11);
      const longName = lfn && lfn.expect === 0 && lfn.checksum === shortNameChecksum(short) ? lfn.parts.join('') : undefined;
      lfn = undefined;
      if (attr & ATTR_VOLUME_ID) continue;
      const shortName = displayShortName(short, raw[o + 12]);
      if (shortName.upper === '.' || shortName.upper === '..') continue;
      const isDir = (attr & ATTR_DIRECTORY) !== 0;
      const hi = this.fatType === 'fat32' ? raw.readUInt16LE(o + 20) : 0;
      out.push({
        name: longName ?? shortName.display,
        shortName: shortName.upper,
        isDir,
        size: isDir ? 0 : raw.readUInt32LE(o + 28),
        firstCluster: (hi << 16) | raw.readUInt16LE(o + 26),
      });
    }
    return out;
  }
}


/** A short name as text; NT's case bits (0x08 base, 0x10 extension) ask for lower case. */
function displayShortName(short: Buffer, ntCase: number): { upper: string; display: string } {
  const bytes = Buffer.from(short);
  if (bytes[0] === 0x05) bytes[0] = 0xe5; // 0xE5 as a first character is stored as 0x05
  const base = bytes.toString('latin1', 0, 8).trimEnd();
  const ext = bytes.toString('latin1', 8, 11).trimEnd();
  const upper = ext ? `${base}.${ext}` : base;
  const b = ntCase & 0x08 ? base.toLowerCase() : base;
  const e = ntCase & 0x10 ? ext.toLowerCase() : ext;
  return { upper, display: e ? `${b}.${e}` : b };
}

export function parseBpb(boot: Buffer, name: string): Bpb {
  const bad = (why: string) => new EdgekitError(`${name}: not a FAT filesystem (${why})`);
  if (boot[510] !== 0x55 || boot[511] !== 0xaa) throw bad('no boot sector signature');
  const bytesPerSector = boot.readUInt16LE(11);
  const sectorsPerCluster = boot[13];
  const reservedSectors = boot.readUInt16LE(14);
  const numFats = boot[16];
  const rootEntries = boot.readUInt16LE(17);
  const totalSectors = boot.readUInt16LE(19) || boot.readUInt32LE(32);
  const fatSz16 = boot.readUInt16LE(22);
  const fatSectors = fatSz16 || boot.readUInt32LE(36);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) throw bad(`${bytesPerSector} bytes per sector`);
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) throw bad(`${sectorsPerCluster} sectors per cluster`);
  if (reservedSectors === 0 || numFats === 0 || fatSectors === 0 || totalSectors === 0) throw bad('zero-sized region in the BPB');
  const fat32Layout = fatSz16 === 0;
  const ext = fat32Layout ? 64 : 36;
  return {
    bytesPerSector,
    sectorsPerCluster,
    reservedSectors,
    numFats,
    rootEntries,
    totalSectors,
    fatSectors,
    rootCluster: fat32Layout ? boot.readUInt32LE(44) : 0,
    volumeId: boot[ext + 2] === 0x29 ? boot.readUInt32LE(ext + 3) : 0,
    bpbLabel: boot[ext + 2] === 0x29 ? boot.toString('latin1', ext + 7, ext + 18).trimEnd().replace(/^NO NAME$/, '') : '',
  };
}

async function readExact(fh: FileHandle, position: number, length: number, name: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) throw new EdgekitError(`${name}: ends before byte ${position + length}`);
    done += bytesRead;
  }
  return buf;
}
